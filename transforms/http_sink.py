"""Delivering each window's JSON document to the HTTP endpoint.

`WindowPoster` is plain Python (the replay command uses it too): one
`requests.Session`, retries by urllib3's own `Retry` (exponential backoff with
jitter on connection errors, timeouts, 429 and 5xx, honouring Retry-After, never
on other 4xx), bounded by a total time per window. `PostWindows` is the thin Beam
sink around it: a window that cannot be delivered becomes a dead letter holding
everything needed to post it again, never a lost window.

An optional bearer token comes from an environment variable. It is never
logged, and every error text is scrubbed of it and of secrets in the URL.
"""

import logging
import os
import re
import time
import urllib.parse
from typing import NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import orjson
import requests
from apache_beam.metrics import Metrics
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from transforms import METRICS_NAMESPACE
from transforms.endpoint_template import endpoint_url
from transforms.elements import DEAD_LETTER_TAG, KIND_UNDELIVERED_WINDOW, DeadLetter, WindowCounts

_LOG = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = 'VPC_FLOW_PEERS_TOKEN'
RETRY_STATUSES = frozenset([429] + list(range(500, 600)))
# Query parameters whose names contain one of these words hold secrets.
_SECRET_WORDS = 'token|key|secret|sig|signature|password|passwd|auth|credential'
_SECRET_QUERY_KEY = re.compile(_SECRET_WORDS, re.I)
REDACTED = '***'


class DeliveryConfig(NamedTuple):
  """How to deliver windows; everything but the token itself, which is read
  from the environment variable `token_env` where the poster runs."""
  endpoint_template: str
  token_env: str = DEFAULT_TOKEN_ENV
  connect_timeout: float = 5.0
  read_timeout: float = 30.0
  max_retry_seconds: float = 300.0
  backoff_factor: float = 0.5
  backoff_max: float = 30.0
  verify_tls: bool = True
  ca_bundle: Optional[str] = None


def redact_url(url: str) -> str:
  """The URL without user info and without values of secret-looking query
  parameters (token=, key=, signature=...)."""
  parts = urllib.parse.urlsplit(url)
  netloc = parts.netloc.rsplit('@', 1)[-1]
  if '@' in parts.netloc:
    netloc = f'{REDACTED}@{netloc}'
  query = urllib.parse.urlencode([
      (k, REDACTED if _SECRET_QUERY_KEY.search(k) else v)
      for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
  ], safe='*')
  return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_SECRET_QUERY_VALUE = re.compile(
    rf'((?:[?&;]|%3F|%26)[^=&\s]*(?:{_SECRET_WORDS})[^=&\s]*=)[^&\s\'"]*', re.I)


def redact_text(text: str) -> str:
  """Secret-looking query values (token=..., key=...) in any text, redacted."""
  return _SECRET_QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


class _RedactUrlSecrets(logging.Filter):
  """Redacts URL secrets in urllib3's own log lines (it logs each retry with
  the request URL)."""
  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    redacted = redact_text(message)
    if redacted != message:
      record.msg, record.args = redacted, ()
    return True


_URL_SECRET_FILTER = _RedactUrlSecrets()


def _install_log_redaction():
  for name in ('urllib3.connectionpool', 'urllib3.util.retry', 'urllib3.connection'):
    logger = logging.getLogger(name)
    if _URL_SECRET_FILTER not in logger.filters:
      logger.addFilter(_URL_SECRET_FILTER)


class DeliveryOutcome(NamedTuple):
  delivered: bool
  url: str  # redacted
  status: Optional[int]
  error: Optional[str]
  attempts: int


class DeadlineRetry(Retry):
  """urllib3 Retry that also stops once `deadline` (time.monotonic()) has passed,
  never sleeps past it, and gives up at once when a Retry-After asks to wait
  beyond it. `log` (shared by the chain of Retry objects urllib3 derives) records
  each failed attempt."""
  def __init__(self, *args, deadline: Optional[float] = None, log: Optional[dict] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.deadline = deadline
    self.log = log if log is not None else {'failures': [], 'gave_up': False}

  def new(self, **kwargs):
    kwargs.setdefault('deadline', self.deadline)
    kwargs.setdefault('log', self.log)
    return super().new(**kwargs)

  def _remaining(self) -> float:
    if self.deadline is None:
      return float('inf')
    return self.deadline - time.monotonic()

  def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
    self.log['failures'].append(response.status if response is not None else error)
    try:
      new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
      wait = new_retry.get_retry_after(response) if response is not None else None
      if self._remaining() <= 0 or (wait is not None and wait > self._remaining()):
        raise MaxRetryError(_pool, url, error or ResponseError(
            f'retry time exhausted (last status {getattr(response, "status", None)})'))
    except MaxRetryError:
      self.log['gave_up'] = True
      raise
    return new_retry

  def get_backoff_time(self) -> float:
    return max(0.0, min(super().get_backoff_time(), self._remaining()))


class WindowPoster:
  """Posts window documents to the endpoint; see the module docstring."""
  def __init__(self, config: DeliveryConfig):
    self._config = config
    self._session: Optional[requests.Session] = None
    self._adapter: Optional[HTTPAdapter] = None
    self._token: Optional[str] = None

  def open(self):
    _install_log_redaction()
    self._token = os.environ.get(self._config.token_env) or None
    self._session = requests.Session()
    self._session.verify = self._config.ca_bundle or self._config.verify_tls
    self._adapter = HTTPAdapter(max_retries=self._retry(None))
    self._session.mount('http://', self._adapter)
    self._session.mount('https://', self._adapter)

  def close(self):
    if self._session is not None:
      self._session.close()
      self._session = None

  def _retry(self, deadline: Optional[float]) -> DeadlineRetry:
    return DeadlineRetry(
        total=1000, status_forcelist=RETRY_STATUSES, allowed_methods=['POST'],
        backoff_factor=self._config.backoff_factor, backoff_max=self._config.backoff_max,
        backoff_jitter=self._config.backoff_factor, respect_retry_after_header=True,
        raise_on_status=False, raise_on_redirect=False, deadline=deadline)

  def scrub(self, text: str, url: Optional[str] = None) -> str:
    """Removes the token, `url`'s user info and secret query values from a text."""
    if self._token:
      text = text.replace(self._token, REDACTED)
    if url:
      text = text.replace(url, redact_url(url))
    return redact_text(text)

  def post_body(self, bucket_time: int, window_end: int, body: bytes,
                pane_index: int = 0, pane_timing: str = 'ON_TIME',
                group: Sequence[Tuple[str, str]] = ()) -> DeliveryOutcome:
    url = endpoint_url(self._config.endpoint_template, bucket_time, group)
    headers = {
        'Content-Type': 'application/json',
        'X-Window-Start': str(bucket_time),
        'X-Window-End': str(window_end),
        'X-Pane-Index': str(pane_index),
        'X-Pane-Timing': pane_timing,
        # Reposting the same pane (a retry, a replay, a restored runner) carries
        # the same key, so the endpoint can tell it is the same document.
        'Idempotency-Key': f'{bucket_time}-{pane_index}',
    }
    if self._token:
      headers['Authorization'] = f'Bearer {self._token}'
    retry = self._retry(time.monotonic() + self._config.max_retry_seconds)
    self._adapter.max_retries = retry
    status, error = None, None
    try:
      response = self._session.post(
          url, data=body, headers=headers,
          timeout=(self._config.connect_timeout, self._config.read_timeout))
      status = response.status_code
      response.close()
    except requests.RequestException as e:
      error = self.scrub(f'{type(e).__name__}: {e}', url)
    # Each failed attempt was logged; a final response that ended the retries
    # (a success, or a status not worth retrying) was not.
    failures = retry.log['failures']
    attempts = len(failures) + (0 if retry.log['gave_up'] or error else 1)
    delivered = status is not None and 200 <= status < 300
    return DeliveryOutcome(delivered, redact_url(url), status, error, max(attempts, 1))

  def post(self, window_counts: WindowCounts) -> DeliveryOutcome:
    return self.post_body(
        window_counts.bucket_time, window_counts.window_end,
        document_body(window_counts), window_counts.pane_index, window_counts.pane_timing,
        window_counts.group)


def document_body(window_counts: WindowCounts) -> bytes:
  """The JSON document of a window: {"address": distinct peers, ...}, compact
  (orjson writes the same bytes as json.dumps with separators=(',', ':'),
  several times faster)."""
  return orjson.dumps(window_counts.counts)


def undelivered_window_letter(window_counts: WindowCounts, outcome: DeliveryOutcome,
                              template_has_secrets: bool) -> DeadLetter:
  reason = (f'HTTP {outcome.status}' if outcome.status is not None else outcome.error or 'unknown error')
  return DeadLetter(KIND_UNDELIVERED_WINDOW, f'window not delivered: {reason}',
                    f'window {window_counts.bucket_time}', {
                        'url': outcome.url,
                        'url_redacted': template_has_secrets,
                        'bucket_time': window_counts.bucket_time,
                        'window_end': window_counts.window_end,
                        'pane_index': window_counts.pane_index,
                        'pane_timing': window_counts.pane_timing,
                        'body': document_body(window_counts).decode('utf-8'),
                        'last_status': outcome.status,
                        'last_error': outcome.error,
                        'attempts': outcome.attempts,
                    })


class PostWindowsDoFn(beam.DoFn):
  """POSTs each WindowCounts; undeliverable ones go to the dead-letter output."""
  def __init__(self, config: DeliveryConfig):
    self._config = config
    self._delivered = Metrics.counter(METRICS_NAMESPACE, 'windows_delivered')
    self._dead_lettered = Metrics.counter(METRICS_NAMESPACE, 'windows_dead_lettered')

  def setup(self):
    self._poster = WindowPoster(self._config)
    self._poster.open()
    self._has_secrets = redact_url(self._config.endpoint_template) != self._config.endpoint_template

  def process(self, window_counts: WindowCounts):
    outcome = self._poster.post(window_counts)
    if outcome.delivered:
      self._delivered.inc()
      _LOG.info('delivered window %d (pane %d) to %s in %d attempt(s)',
                window_counts.bucket_time, window_counts.pane_index, outcome.url, outcome.attempts)
      yield window_counts
    else:
      self._dead_lettered.inc()
      _LOG.error('window %d not delivered to %s after %d attempt(s): %s',
                 window_counts.bucket_time, outcome.url, outcome.attempts,
                 outcome.error or f'HTTP {outcome.status}')
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER_TAG, undelivered_window_letter(window_counts, outcome, self._has_secrets))

  def teardown(self):
    poster = getattr(self, '_poster', None)
    if poster is not None:
      poster.close()


class PostWindows(beam.PTransform):
  """The HTTP sink: WindowCounts in; {'delivered', 'dead_letters'} out."""
  def __init__(self, config: DeliveryConfig):
    super().__init__()
    self._config = config

  def expand(self, windows):
    posted = windows | 'Post' >> beam.ParDo(PostWindowsDoFn(self._config)).with_outputs(
        DEAD_LETTER_TAG, main='delivered')
    return {'delivered': posted.delivered, 'dead_letters': posted[DEAD_LETTER_TAG]}
