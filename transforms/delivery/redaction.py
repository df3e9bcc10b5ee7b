"""Secrets of the endpoint (a bearer token, the password of a URL's user info,
query values) and keeping them out of every message.

A secret can reach a log line, an exception or a dead letter in more forms
than the one the user typed: `repr()` of a header (requests quotes a header
it refuses), percent-encoded in a URL, base64 in a Basic Authorization header.
`Secrets` knows every form of each secret of one endpoint and `scrub()`s them
all; `redact_url()` removes secrets from a URL by position (user info, query
values), so that secrets it was never told about are gone too.

What is refused at start-up, with a message that never prints the secret: a
token holding control characters or spaces (surrounding white space, such as
the newline a Kubernetes secret made `--from-file` ends in, is stripped); a
URL whose authority does not parse cleanly (a password with an unencoded `/`,
`?`, `#` or `@` would send every POST elsewhere and print the password); user
info together with a token (which of the two authenticates is ambiguous).
"""

import base64
import json
import logging
import re
import urllib.parse
from typing import Iterable, List, Optional, Tuple

REDACTED = '***'
DEFAULT_TOKEN_ENV = 'VPC_FLOW_PEERS_TOKEN'

# Query parameters whose values are shown in logs and dead letters; every
# other value is redacted (a name cannot tell a secret: `code`, `pwd`, `sv`).
HARMLESS_QUERY_NAMES = frozenset(
  [
    'region',
    'format',
    'version',
    'v',
    'api-version',
    'api_version',
    'lang',
    'locale',
    'stage',
    'env',
    'source',
    'type',
    'kind',
    'dataset',
    'window',
    'bucket_time',
  ]
)

# A query value (or password) this short is redacted where it sits in a URL,
# but not searched for in free text, where it would garble numbers and words.
_MIN_LITERAL_SCRUB = 4

# Characters RFC 3986 allows in user info (unreserved, sub-delims, ':', '%').
_USERINFO = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:%]*$")
_HOST = re.compile(r'^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&\'()*+,;=]+)$')
# [?&;] name = value, in any text (urllib3 and requests write URLs into messages).
_QUERY_PAIR = re.compile(r'([?&;](?:amp;)?)([^=&\s?#;\'"]+)=([^&\s#;\'")]*)')


class SecretError(ValueError):
  """A secret given to the pipeline cannot be used; the message never holds it."""


def read_token(environ, name: str) -> Optional[str]:
  """The bearer token in environment variable `name`, surrounding white space
  stripped, or None when it is unset or empty. Raises SecretError (saying
  where, never what) for a token holding anything but printable ASCII."""
  value = environ.get(name)
  if value is None:
    return None
  token = value.strip()
  if not token:
    return None
  for position, char in enumerate(token):
    if not '\x21' <= char <= '\x7e':
      what = (
        'a control character'
        if char < ' ' or char == '\x7f'
        else ('a space' if char.isspace() else 'a character outside printable ASCII')
      )
      raise SecretError(
        f'the token in ${name} holds {what} at position {position + 1} (of {len(token)}); '
        'a bearer token is printable ASCII without spaces (the token is not shown)'
      )
  return token


def split_authority(url: str, strict: bool = True) -> Tuple[str, Optional[str], str]:
  """(scheme://, user info or None, the rest) of an http(s) URL, split by
  position: the user info is everything between `//` and the last `@` of the
  authority. `strict`: raises SecretError when the authority does not parse
  cleanly (else the split is by position alone)."""
  scheme, sep, rest = url.partition('://')
  if not sep:
    raise SecretError('--endpoint must be an http:// or https:// URL')
  end = len(rest)
  for stop in '/?#':
    found = rest.find(stop)
    if found != -1:
      end = min(end, found)
  authority, tail = rest[:end], rest[end:]
  userinfo, at, hostport = authority.rpartition('@')
  if not at:
    userinfo = None
  if not strict:
    return scheme + '://', userinfo, hostport + tail
  if '@' in tail:
    raise SecretError(
      "--endpoint has an '@' after its host: a password holding '/', '?', '#' or '@' must be "
      'percent-encoded (%2F, %3F, %23, %40), and an @ in the path written %40'
    )
  if userinfo is not None and not _USERINFO.match(userinfo):
    raise SecretError('--endpoint has user info with characters that must be percent-encoded')
  host, port = hostport, ''
  if hostport.startswith('['):
    close = hostport.find(']')
    host, port = hostport[: close + 1], hostport[close + 1 :]
    if port and not port.startswith(':'):
      raise SecretError('--endpoint has an authority that does not parse (after the IPv6 host)')
    port = port[1:]
  elif ':' in hostport:
    host, _, port = hostport.rpartition(':')
  if not host or not _HOST.match(host) or (port and not (port.isdigit() and int(port) < 65536)):
    raise SecretError(
      '--endpoint has an authority that does not parse as [user:password@]host[:port]; '
      "characters such as '/', '?', '#' or '@' in a password must be percent-encoded"
    )
  return scheme + '://', userinfo, hostport + tail


def url_user_info(url: str) -> Optional[Tuple[str, str]]:
  """(user, password) of the URL's user info, percent-decoded, or None."""
  _, userinfo, _ = split_authority(url)
  if userinfo is None:
    return None
  user, _, password = userinfo.partition(':')
  return urllib.parse.unquote(user), urllib.parse.unquote(password)


def without_user_info(url: str) -> str:
  """The URL with its user info removed (by position)."""
  scheme, _, rest = split_authority(url)
  return scheme + rest


def check_endpoint(template: str, token: Optional[str]) -> None:
  """Raises SecretError for an endpoint whose authority does not parse cleanly,
  or that has user info while a token is given."""
  # Placeholders stand for path segments and query values, never for the authority.
  concrete = re.sub(r'\{[^{}]*\}', '0', template)
  _, userinfo, _ = split_authority(concrete)
  if userinfo is not None and token:
    raise SecretError(
      '--endpoint has user info (user:password@) and a bearer token is set: which of the '
      'two should authenticate is ambiguous; give one of them'
    )


def _redact_pair(match) -> str:
  """A _QUERY_PAIR match, its value redacted unless its name is harmless."""
  prefix, name, value = match.groups()
  if urllib.parse.unquote_plus(name).lower() in HARMLESS_QUERY_NAMES or not value:
    return match.group(0)
  return f'{prefix}{name}={REDACTED}'


def _redact_query(query: str) -> str:
  return _QUERY_PAIR.sub(_redact_pair, '?' + query)[1:]


def redact_url(url: str) -> str:
  """The URL with its user info and every query value not named in
  HARMLESS_QUERY_NAMES replaced by ***, by position."""
  try:
    scheme, userinfo, rest = split_authority(url, strict=False)
  except SecretError:
    return REDACTED
  if userinfo is not None:
    scheme += f'{REDACTED}@'
  base, question, query = rest.partition('?')
  if question:
    query, hash_, fragment = query.partition('#')
    rest = base + '?' + _redact_query(query) + hash_ + (REDACTED if fragment else '')
  return scheme + rest


def redact_text(text: str) -> str:
  """Query values (not named in HARMLESS_QUERY_NAMES) in any text, redacted."""
  return _QUERY_PAIR.sub(_redact_pair, text)


def forms_of(secret: str) -> List[str]:
  """Every form in which `secret` can reach a message: as is, as repr() and
  JSON write it (str and bytes), percent-encoded (path and form style) and
  base64 (as in a Basic header)."""
  forms = {
    secret,
    repr(secret)[1:-1],
    repr(secret.encode('utf-8', 'backslashreplace'))[2:-1],
    json.dumps(secret)[1:-1],
    json.dumps(secret, ensure_ascii=False)[1:-1],
    urllib.parse.quote(secret, safe=''),
    urllib.parse.quote_plus(secret),
    urllib.parse.quote(secret),
    base64.b64encode(secret.encode('utf-8')).decode('ascii'),
  }
  return sorted((f for f in forms if f), key=len, reverse=True)


class Secrets:
  """The secrets of one endpoint, and a scrubber for any text.

  `token`: the bearer token, if any; `templates`: the endpoint URL templates
  (their user info and query values are secrets)."""

  def __init__(self, token: Optional[str] = None, templates: Iterable[str] = ()):
    literals = set()
    if token:
      literals.update(forms_of(token))
    for template in templates:
      literals.update(self._url_secrets(template))
    # Longest first, so that no longer form is left half replaced by a shorter.
    self._literals = sorted(literals, key=len, reverse=True)

  @staticmethod
  def _url_secrets(template: str) -> List[str]:
    forms: List[str] = []
    try:
      _, userinfo, rest = split_authority(template, strict=False)
    except SecretError:
      return forms
    if userinfo is not None:
      user, _, password = userinfo.partition(':')
      decoded_user, decoded_password = urllib.parse.unquote(user), urllib.parse.unquote(password)
      forms += forms_of(userinfo)
      forms += forms_of(f'{decoded_user}:{decoded_password}')
      if password:
        forms += [
          f
          for f in forms_of(password) + forms_of(decoded_password)
          if len(f) >= _MIN_LITERAL_SCRUB or f in (password, decoded_password)
        ]
    query = rest.partition('?')[2].partition('#')[0]
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
      if name.lower() in HARMLESS_QUERY_NAMES or '{' in value or len(value) < _MIN_LITERAL_SCRUB:
        continue
      forms += forms_of(value)
    return forms

  def scrub(self, text: str) -> str:
    """`text` without any form of a known secret, and without query values."""
    for literal in self._literals:
      if literal in text:
        text = text.replace(literal, REDACTED)
    return redact_text(text)


class ScrubLogRecords(logging.Filter):
  """Scrubs log records (urllib3 logs each retry with the URL it requests)."""

  def __init__(self, secrets: Secrets):
    super().__init__()
    self.secrets = secrets

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    scrubbed = self.secrets.scrub(message)
    if scrubbed != message:
      record.msg, record.args = scrubbed, ()
    if record.exc_info and not record.exc_text:
      record.exc_text = self.secrets.scrub(logging.Formatter().formatException(record.exc_info))
      record.exc_info = None
    return True


# The loggers of the libraries the poster uses, which write URLs and errors.
# (A logger's filters see only the records logged to it, not its children's.)
LIBRARY_LOGGERS = (
  'urllib3.connectionpool',
  'urllib3.connection',
  'urllib3.response',
  'urllib3.poolmanager',
  'urllib3.util.retry',
  'requests',
)
