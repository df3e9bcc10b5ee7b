"""Posting one part of a window's document to the endpoint: `WindowPoster`.

Plain Python, used by the sink's DoFns and by `python -m pipeline.replay`. One
`requests.Session` (made in `open()`, closed in `close()`); retries by
urllib3's own `Retry` (exponential backoff with jitter on connection errors,
timeouts, 429 and 5xx, honouring Retry-After; never on other 4xx), bounded by
a deadline the caller gives, and stopped early when the host's circuit
breaker opens (transforms.delivery.breaker) or its outage has used up the
retry budget.

What an endpoint can do to a naive client, and what this one does instead:
- a redirect: never followed as a GET. A 307 or 308 to the same origin is
  followed as a POST with the body (a few hops at most); any other redirect
  fails the window with a reason naming it, so the Authorization header never
  goes to another host;
- an answer trickled a byte at a time: each attempt has a total deadline
  (`attempt_timeout`), not only per-read timeouts; at the deadline its socket
  is shut down;
- a huge answer body: at most MAX_ANSWER_BYTES are read, then it is dropped;
- a Retry-After that does not parse: the backoff is used instead;
- the environment: `trust_env` is off, so no ~/.netrc replaces the token and
  REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE cannot override `--ca_bundle` or
  `--no_verify_tls`; proxies from the environment are applied explicitly.
"""

import functools
import logging
import os
import socket
import threading
import time
import urllib.parse
from typing import NamedTuple, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from transforms.delivery.breaker import CLOSED, Breakers, BreakerPolicy, CircuitBreaker
from transforms.delivery.parts import DocumentPart
from transforms.delivery.redaction import (
  DEFAULT_TOKEN_ENV,
  LIBRARY_LOGGERS,
  ScrubLogRecords,
  Secrets,
  redact_url,
  read_token,
  url_user_info,
  without_user_info,
)
from transforms.endpoint_template import endpoint_url

_LOG = logging.getLogger(__name__)

RETRY_STATUSES = frozenset([429] + list(range(500, 600)))
REDIRECT_STATUSES = frozenset([301, 302, 303, 305, 307, 308])
# 307 and 308 keep the method and the body (RFC 9110 15.4).
BODY_KEEPING_REDIRECTS = frozenset([307, 308])
MAX_SAME_ORIGIN_REDIRECTS = 3
# Of an answer's body, only this much is read (for the log); the rest is dropped.
MAX_ANSWER_BYTES = 4096
PAYLOAD_TOO_LARGE = 413


class RedeliveryPolicy(NamedTuple):
  """How a streaming run holds windows the endpoint cannot take: retried
  `first_delay` seconds later, then twice as long after each failure up to
  `max_delay`, until delivered or `max_age` seconds after it was first held.
  A pane's first attempts, as it arrives, take at most `inline_seconds` (and
  end when the breaker opens): the stream waits for them."""

  max_age: float = 24 * 3600.0
  first_delay: float = 5.0
  max_delay: float = 30.0
  inline_seconds: float = 30.0


class DeliveryConfig(NamedTuple):
  """How to deliver windows; everything but the token itself, which is read
  from the environment variable `token_env` where the poster runs."""

  endpoint_template: str
  token_env: str = DEFAULT_TOKEN_ENV
  connect_timeout: float = 5.0
  read_timeout: float = 30.0
  # The total time one attempt may take, sending and answer included.
  attempt_timeout: float = 60.0
  max_retry_seconds: float = 300.0
  backoff_factor: float = 0.5
  backoff_max: float = 30.0
  verify_tls: bool = True
  ca_bundle: Optional[str] = None
  compress: bool = False
  max_body_bytes: Optional[int] = None
  breaker: BreakerPolicy = BreakerPolicy()
  redelivery: RedeliveryPolicy = RedeliveryPolicy()


class PostOutcome(NamedTuple):
  """What became of one part."""

  delivered: bool
  url: str  # redacted
  status: Optional[int]
  error: Optional[str]  # scrubbed of every secret
  attempts: int
  # Whether trying again later may succeed (the host failed: connection
  # error, timeout, 429, 5xx), as opposed to an answer that will not change.
  retryable: bool = False

  @property
  def reason(self) -> str:
    return self.error or (f'HTTP {self.status}' if self.status is not None else 'unknown error')


def origin_of(url: str) -> str:
  """scheme://host:port of a URL (the breaker's and the redirect check's unit)."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or {'http': 80, 'https': 443}.get(parts.scheme, 0)
  return f'{parts.scheme}://{(parts.hostname or "").lower()}:{port}'


def tls_verify(config: DeliveryConfig, environ=os.environ):
  """The session's `verify`: --ca_bundle, else False with --no_verify_tls, else
  the bundle REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE names (as requests itself
  would read them), else requests' own CA bundle. The flags always win."""
  if config.ca_bundle:
    return config.ca_bundle
  if not config.verify_tls:
    return False
  return environ.get('REQUESTS_CA_BUNDLE') or environ.get('CURL_CA_BUNDLE') or True


class _AttemptWatchdog:
  """Ends an attempt that outlives its deadline: shuts down its socket, which
  wakes a read blocked on a server that trickles its answer."""

  def __init__(self, seconds: float):
    self._seconds = seconds
    self._timer: Optional[threading.Timer] = None
    self.fired = False

  def arm(self, conn) -> None:
    self.disarm()
    self.fired = False
    self._timer = threading.Timer(self._seconds, self._fire, args=(conn,))
    self._timer.daemon = True
    self._timer.start()

  def _fire(self, conn) -> None:
    self.fired = True
    sock = getattr(conn, 'sock', None)
    if sock is not None:
      try:
        # The plain socket's shutdown, also for a TLS socket: its SSL object
        # stays as it is for the reading thread, which then sees the end.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
      except OSError:
        pass

  def disarm(self) -> None:
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None


def _drain_capped(response) -> None:
  """urllib3 drains a retried answer before the next attempt; this reads at
  most MAX_ANSWER_BYTES of it and drops the connection if there is more."""
  try:
    if response.read(MAX_ANSWER_BYTES, decode_content=False) and response.read(1, decode_content=False):
      response.close()
  except Exception:  # noqa: BLE001
    response.close()


def _watched_pool(base, watchdog: _AttemptWatchdog):
  class WatchedPool(base):
    """A connection pool whose every attempt runs under the watchdog."""

    def _make_request(self, conn, *args, **kwargs):
      watchdog.arm(conn)
      response = super()._make_request(conn, *args, **kwargs)
      response.drain_conn = functools.partial(_drain_capped, response)
      return response

  return WatchedPool


class _WatchedAdapter(HTTPAdapter):
  """requests' adapter with WatchedPool connection pools."""

  def __init__(self, watchdog: _AttemptWatchdog, **kwargs):
    self._watchdog = watchdog
    super().__init__(**kwargs)

  def _watch(self, manager):
    manager.pool_classes_by_scheme = {
      'http': _watched_pool(HTTPConnectionPool, self._watchdog),
      'https': _watched_pool(HTTPSConnectionPool, self._watchdog),
    }
    return manager

  def init_poolmanager(self, *args, **kwargs):
    super().init_poolmanager(*args, **kwargs)
    self._watch(self.poolmanager)

  def proxy_manager_for(self, proxy, **proxy_kwargs):
    known = proxy in self.proxy_manager
    manager = super().proxy_manager_for(proxy, **proxy_kwargs)
    return manager if known else self._watch(manager)


class DeadlineRetry(Retry):
  """urllib3 Retry that also stops once `deadline` (time.monotonic()) has passed
  (or the host's outage has lasted `outage_budget` seconds), never sleeps past
  it, gives up at once when a Retry-After asks to wait beyond it, falls back
  to the backoff when a Retry-After does not parse, stops when the breaker
  opens (with `stop_when_open`), and records each failed attempt in the
  breaker and in `log` (shared by the chain of Retry objects urllib3 derives)."""

  def __init__(
    self,
    *args,
    deadline: Optional[float] = None,
    breaker: Optional[CircuitBreaker] = None,
    outage_budget: Optional[float] = None,
    stop_when_open: bool = False,
    log: Optional[dict] = None,
    **kwargs,
  ):
    super().__init__(*args, **kwargs)
    self.deadline = deadline
    self.breaker = breaker
    self.outage_budget = outage_budget
    self.stop_when_open = stop_when_open
    self.log = log if log is not None else {'failures': 0, 'gave_up': False}

  def new(self, **kwargs):
    for name in ('deadline', 'breaker', 'outage_budget', 'stop_when_open', 'log'):
      kwargs.setdefault(name, getattr(self, name))
    return super().new(**kwargs)

  def _remaining(self) -> float:
    deadline = self.deadline if self.deadline is not None else float('inf')
    if self.breaker is not None and self.outage_budget is not None and self.breaker.down_since is not None:
      deadline = min(deadline, self.breaker.down_since + self.outage_budget)
    return deadline - time.monotonic()

  def parse_retry_after(self, retry_after: str) -> Optional[float]:
    try:
      return super().parse_retry_after(retry_after)
    except InvalidHeader:
      return None  # (sleep_for_retry then uses the backoff)

  def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
    self.log['failures'] += 1
    if self.breaker is not None:
      self.breaker.record_failure()
    try:
      new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
      wait = new_retry.get_retry_after(response) if response is not None else None
      remaining = self._remaining()
      if (
        remaining <= 0
        or (wait is not None and wait > remaining)
        or (self.stop_when_open and self.breaker is not None and self.breaker.state != CLOSED)
      ):
        raise MaxRetryError(
          _pool,
          url,
          error or ResponseError(f'retry time exhausted (last status {getattr(response, "status", None)})'),
        )
    except MaxRetryError:
      self.log['gave_up'] = True
      raise
    return new_retry

  def get_backoff_time(self) -> float:
    return max(0.0, min(super().get_backoff_time(), self._remaining()))


class WindowPoster:
  """Posts document parts to the endpoint; see the module docstring.

  `breakers` may be shared by several posters (one per endpoint host)."""

  def __init__(self, config: DeliveryConfig, breakers: Optional[Breakers] = None, environ=None):
    self._config = config
    self._environ = os.environ if environ is None else environ
    self.breakers = breakers or Breakers(config.breaker)
    self._session: Optional[requests.Session] = None
    self._adapter: Optional[_WatchedAdapter] = None
    self._watchdog = _AttemptWatchdog(config.attempt_timeout)
    self._authorization: Optional[str] = None
    self.secrets = Secrets()
    self._log_filter: Optional[ScrubLogRecords] = None

  @property
  def config(self) -> DeliveryConfig:
    return self._config

  def open(self) -> 'WindowPoster':
    token = read_token(self._environ, self._config.token_env)
    self.secrets = Secrets(token, [self._config.endpoint_template])
    self._log_filter = ScrubLogRecords(self.secrets)
    for name in LIBRARY_LOGGERS:
      logging.getLogger(name).addFilter(self._log_filter)
    if token:
      self._authorization = f'Bearer {token}'
    else:
      user_info = url_user_info(self._config.endpoint_template)
      if user_info is not None:
        self._authorization = requests.auth._basic_auth_str(*user_info)
    self._session = requests.Session()
    self._session.trust_env = False
    self._session.verify = tls_verify(self._config, self._environ)
    self._adapter = _WatchedAdapter(self._watchdog, max_retries=self._retry(None, None))
    self._session.mount('http://', self._adapter)
    self._session.mount('https://', self._adapter)
    return self

  def close(self) -> None:
    self._watchdog.disarm()
    if self._log_filter is not None:
      for name in LIBRARY_LOGGERS:
        logging.getLogger(name).removeFilter(self._log_filter)
      self._log_filter = None
    if self._session is not None:
      self._session.close()
      self._session = None

  def __enter__(self):
    return self.open()

  def __exit__(self, *exc):
    self.close()

  def _retry(
    self, deadline, breaker, single: bool = False, outage_budget=None, stop_when_open: bool = False
  ) -> DeadlineRetry:
    return DeadlineRetry(
      total=0 if single else 1000,
      status_forcelist=RETRY_STATUSES,
      allowed_methods=['POST'],
      backoff_factor=self._config.backoff_factor,
      backoff_max=self._config.backoff_max,
      backoff_jitter=self._config.backoff_factor,
      respect_retry_after_header=True,
      raise_on_status=False,
      raise_on_redirect=False,
      redirect=0,
      deadline=deadline,
      breaker=breaker,
      outage_budget=outage_budget,
      stop_when_open=stop_when_open,
    )

  def url_of(self, part: DocumentPart) -> str:
    """The URL a part goes to (without user info: that is the Authorization header)."""
    return without_user_info(endpoint_url(self._config.endpoint_template, part.bucket_time, part.group))

  def breaker_for(self, part: DocumentPart) -> CircuitBreaker:
    return self.breakers[origin_of(self.url_of(part))]

  def scrub(self, text: str) -> str:
    return self.secrets.scrub(text)

  def post(
    self,
    part: DocumentPart,
    deadline: float,
    single: bool = False,
    outage_budget: Optional[float] = None,
    stop_when_open: bool = False,
  ) -> PostOutcome:
    """Posts one part, retrying until `deadline` (time.monotonic()); `single`:
    one attempt only (a probe); `outage_budget`: give up once the host has
    been failing this long; `stop_when_open`: give up when its breaker opens."""
    url = self.url_of(part)
    breaker = self.breakers[origin_of(url)]
    headers = part.headers(self._config.compress)
    if self._authorization:
      headers['Authorization'] = self._authorization
    payload = part.payload(self._config.compress)
    attempts = 0
    for _ in range(MAX_SAME_ORIGIN_REDIRECTS + 1):
      outcome, location = self._post_once(
        url, payload, headers, deadline, breaker, single, outage_budget, stop_when_open
      )
      attempts += outcome.attempts
      outcome = outcome._replace(attempts=attempts)
      if location is None:
        return outcome
      url = location
    return outcome._replace(
      error=f'more than {MAX_SAME_ORIGIN_REDIRECTS} redirects in a row (the last to {redact_url(url)})',
      retryable=False,
    )

  def _post_once(self, url, payload, headers, deadline, breaker, single, outage_budget, stop_when_open):
    """One urllib3 chain of attempts; returns (outcome, a same-origin Location to post to next or None)."""
    shown = self.scrub(redact_url(url))
    retry = self._retry(deadline, breaker, single, outage_budget, stop_when_open)
    self._adapter.max_retries = retry
    status, error, response, unexpected = None, None, None, False
    try:
      response = self._session.post(
        url,
        data=payload,
        headers=headers,
        allow_redirects=False,
        stream=True,
        timeout=(self._config.connect_timeout, self._config.read_timeout),
        proxies=requests.utils.get_environ_proxies(url),
      )
      status = response.status_code
      self._read_answer(response, shown)
    except requests.RequestException as e:
      error = self._describe(e)
    except Exception as e:  # noqa: BLE001
      # Nothing the endpoint does may crash the sink: an error of ours is a
      # dead letter with its (scrubbed) reason, never a traceback with the URL.
      error, unexpected = self._describe(e), True
    finally:
      self._watchdog.disarm()
      if response is not None:
        response.close()
    if error is not None and (retry.log['failures'] == 0 or unexpected):
      # It never reached the host (a URL or header requests refused): trying
      # again cannot help, and the breaker learnt nothing.
      breaker.release_probe()
      return PostOutcome(False, shown, None, error, 0, retryable=False), None
    attempts = retry.log['failures'] + (0 if retry.log['gave_up'] or error else 1)
    attempts = max(attempts, 1)
    if error is not None:
      return PostOutcome(False, shown, None, error, attempts, retryable=True), None
    if 200 <= status < 300:
      breaker.record_success()
      return PostOutcome(True, shown, status, None, attempts), None
    if status in RETRY_STATUSES:
      return PostOutcome(False, shown, status, None, attempts, retryable=True), None
    breaker.record_success()  # the host is up: it answered on purpose
    if status in REDIRECT_STATUSES:
      return self._redirect(url, shown, status, response.headers.get('Location'), attempts)
    if status == PAYLOAD_TOO_LARGE:
      return PostOutcome(
        False,
        shown,
        status,
        (
          f'HTTP 413: the endpoint refused a body of {len(payload)} bytes; set --max_body_bytes '
          f'below that (for example {max(len(payload) // 2, 256)}) or --http_compress, and '
          'replay with the same flags'
        ),
        attempts,
      ), None
    return PostOutcome(False, shown, status, None, attempts), None

  @staticmethod
  def _read_answer(response, shown: str) -> None:
    """Reads at most MAX_ANSWER_BYTES of the answer's body, for the log, and
    drops the rest. The status has been given: a body that fails to arrive
    (the attempt deadline cut it off) changes nothing."""
    try:
      answer = response.raw.read(MAX_ANSWER_BYTES, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError) as e:
      _LOG.debug('%s: the answer body was cut off: %s', shown, type(e).__name__)
      response.raw.close()
      return
    if len(answer) == MAX_ANSWER_BYTES:
      response.raw.close()  # there may be more than we read: the connection is not reused
    _LOG.debug('%s answered HTTP %s (%d bytes of its body read)', shown, response.status_code, len(answer))

  def _redirect(self, url, shown, status, location, attempts):
    target = urllib.parse.urljoin(url, location or '')
    shown_target = self.scrub(redact_url(target))
    if status in BODY_KEEPING_REDIRECTS and location and origin_of(target) == origin_of(url):
      _LOG.info('%s redirected (HTTP %d) to %s: posting there', shown, status, shown_target)
      return PostOutcome(False, shown, status, None, attempts), target
    if status in BODY_KEEPING_REDIRECTS:
      why = 'to another origin, which would get the Authorization header'
    else:
      why = 'as a POST (it would become a GET without the document)'
    return PostOutcome(
      False,
      shown,
      status,
      (
        f'HTTP {status}: redirect to {shown_target} not followed {why}; set --endpoint to '
        'the URL that takes the POST'
      ),
      attempts,
    ), None

  def _describe(self, error: Exception) -> str:
    text = f'{type(error).__name__}: {error}'
    if self._watchdog.fired:
      text = f'attempt deadline of {self._config.attempt_timeout:g} s passed (--http_attempt_timeout): {text}'
    return self.scrub(text)
