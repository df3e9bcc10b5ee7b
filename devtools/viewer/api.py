"""The receiver's GET side: the viewer page, its assets, and the JSON API it and
an alerting system read. Pure request -> answer functions over a `Store`; the
HTTP plumbing is in `devtools.receiver`.

    GET /                     the page
    GET /static/NAME          its script, style sheet and icon
    GET /api/rule             the default jump rule: ratio, min_count, history
    GET /api/groups           the groups with windows ('' without grouping)
    GET /api/windows?group=G  the group's windows, each with its jump count
    GET /api/top?group=G&window=START[&limit=20]   a window's top talkers
    GET /api/series?group=G&address=A              an address's count per window
    GET /api/jumps?since=T[&group=G][&limit=1000][&order=asc]  jumps in windows from T on

Each of windows, top, series and jumps takes `ratio` and `min_count` to override
the rule's defaults.
"""

import collections
import datetime
import math
import os
import threading
import urllib.parse
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import orjson

from devtools.viewer.jumps import JumpRule
from devtools.viewer.store import Store

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
STATIC_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
}
MAX_TOP = 1000
MAX_JUMPS = 10_000
CACHE_BYTES = 32 * 2**20


class Answer(NamedTuple):
  status: int
  content_type: str
  body: bytes


class BadRequest(Exception):
  pass


def json_answer(value, status: int = 200) -> Answer:
  return Answer(status, 'application/json', orjson.dumps(value))


def error(status: int, message: str) -> Answer:
  return json_answer({'error': message}, status)


class Api:
  """Answers GET requests from `store`, with `rule` as the default jump rule."""

  def __init__(self, store: Store, rule: JumpRule = JumpRule()):
    self.store = store
    self.rule = rule
    self._routes: Dict[str, Callable[[Dict[str, str]], Answer]] = {
      '/api/rule': self.rule_info,
      '/api/groups': self.groups,
      '/api/windows': self.windows,
      '/api/top': self.top,
      '/api/series': self.series,
      '/api/jumps': self.jumps,
    }
    # Answers by request, while the store is unchanged: windows arrive every
    # few minutes, the page and an alerting system ask the same again and again.
    self._cache: 'collections.OrderedDict[str, Tuple[int, Answer]]' = collections.OrderedDict()
    self._cache_bytes = 0
    self._cache_lock = threading.Lock()

  def answer(self, target: str) -> Answer:
    """The answer to `GET target` (a path with its query string)."""
    split = urllib.parse.urlsplit(target)
    path = split.path
    if path in ('/', '/index.html'):
      return static_file('index.html')
    if path.startswith('/static/'):
      return static_file(path[len('/static/') :])
    route = self._routes.get(path.rstrip('/'))
    if route is None:
      return error(404, f'no such page: {path[:200]}')
    try:
      query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    except ValueError:
      return error(400, 'the query string is not valid')
    version = self.store.version
    cached = self._cached(target, version)
    if cached is not None:
      return cached
    try:
      answer = route(query)
    except BadRequest as e:
      return error(400, str(e))
    self._remember(target, version, answer)
    return answer

  def _cached(self, target: str, version: int) -> Optional[Answer]:
    with self._cache_lock:
      entry = self._cache.get(target)
      if entry is None or entry[0] != version:
        return None
      self._cache.move_to_end(target)
      return entry[1]

  def _remember(self, target: str, version: int, answer: Answer):
    if answer.status != 200 or len(answer.body) > CACHE_BYTES // 8:
      return
    with self._cache_lock:
      old = self._cache.pop(target, None)
      if old is not None:
        self._cache_bytes -= len(old[1].body)
      self._cache[target] = (version, answer)
      self._cache_bytes += len(answer.body)
      while self._cache_bytes > CACHE_BYTES:
        _, (_, dropped) = self._cache.popitem(last=False)
        self._cache_bytes -= len(dropped.body)

  def rule_of(self, query: Dict[str, str]) -> JumpRule:
    ratio = _number(query, 'ratio', self.rule.ratio, float)
    min_count = _number(query, 'min_count', self.rule.min_count, int)
    if not (math.isfinite(ratio) and ratio >= 1):
      raise BadRequest(f'ratio must be a number of at least 1, got {query.get("ratio")}')
    if min_count < 1:
      raise BadRequest(f'min_count must be a whole number of at least 1, got {min_count}')
    return JumpRule(ratio, min_count)

  def rule_info(self, query: Dict[str, str]) -> Answer:
    rule = self.rule_of(query)
    return json_answer(self._rule_json(rule))

  def _rule_json(self, rule: JumpRule) -> dict:
    return {
      'ratio': rule.ratio,
      'min_count': rule.min_count,
      'history': self.store.history,
      'text': (
        f'at least {rule.min_count} distinct peers and at least {rule.ratio:g} times '
        f'the median of the previous {self.store.history} windows (0 where absent)'
      ),
    }

  def groups(self, query: Dict[str, str]) -> Answer:
    return json_answer({'groups': self.store.groups()})

  def windows(self, query: Dict[str, str]) -> Answer:
    rule = self.rule_of(query)
    return json_answer(
      {
        'group': query.get('group', ''),
        'rule': self._rule_json(rule),
        'windows': self.store.windows(query.get('group', ''), rule),
      }
    )

  def top(self, query: Dict[str, str]) -> Answer:
    rule = self.rule_of(query)
    window = _number(query, 'window', None, int)
    limit = _number(query, 'limit', 20, int)
    if not 1 <= limit <= MAX_TOP:
      raise BadRequest(f'limit must be from 1 to {MAX_TOP}, got {limit}')
    group = query.get('group', '')
    top = self.store.top(group, window, limit, rule)
    if top is None:
      return error(404, f'no window {window} in group {group!r}')
    return json_answer({'group': group, 'window': window, 'top': top})

  def series(self, query: Dict[str, str]) -> Answer:
    rule = self.rule_of(query)
    address = query.get('address', '').strip()
    if not address:
      raise BadRequest('give an address')
    group = query.get('group', '')
    points = self.store.series(group, address, rule)
    return json_answer(
      {
        'group': group,
        'address': address,
        'rule': self._rule_json(rule),
        'seen': any(p['present'] for p in points),
        'series': points,
      }
    )

  def jumps(self, query: Dict[str, str]) -> Answer:
    rule = self.rule_of(query)
    since = parse_since(query.get('since'))
    limit = _number(query, 'limit', 1000, int)
    if not 1 <= limit <= MAX_JUMPS:
      raise BadRequest(f'limit must be from 1 to {MAX_JUMPS}, got {limit}')
    order = query.get('order', 'asc')
    if order not in ('asc', 'desc'):
      raise BadRequest(f'order must be asc (oldest window first) or desc, got {order[:20]!r}')
    found, truncated = self.store.jumps(rule, since, query.get('group'), limit, order == 'desc')
    return json_answer(
      {'rule': self._rule_json(rule), 'since': since, 'jumps': found, 'truncated': truncated}
    )


def parse_since(value: Optional[str]) -> int:
  """`since` as Unix seconds, from Unix seconds or an ISO 8601 time (UTC when
  it names no zone); 0 when not given."""
  if value is None or not value.strip():
    return 0
  value = value.strip()
  if value.isascii() and value.isdigit():
    return int(value)
  try:
    when = datetime.datetime.fromisoformat(value)
  except ValueError:
    raise BadRequest(f'since must be Unix seconds or an ISO 8601 time, got {value[:40]!r}') from None
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return int(when.timestamp())


def _number(query: Dict[str, str], name: str, default, kind):
  value = query.get(name)
  if value is None or value == '':
    if default is None:
      raise BadRequest(f'give {name}')
    return default
  try:
    return kind(value)
  except ValueError:
    raise BadRequest(
      f'{name} must be a {"whole " if kind is int else ""}number, got {value[:40]!r}'
    ) from None


def static_file(name: str) -> Answer:
  """One of the page's assets; nothing outside `static/`."""
  extension = os.path.splitext(name)[1]
  if '/' in name or '\\' in name or name.startswith('.') or extension not in STATIC_TYPES:
    return error(404, f'no such asset: {name[:200]}')
  try:
    with open(os.path.join(STATIC_DIR, name), 'rb') as f:
      return Answer(200, STATIC_TYPES[extension], f.read())
  except FileNotFoundError:
    return error(404, f'no such asset: {name[:200]}')
