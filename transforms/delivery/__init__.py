"""Delivering each window's document to the HTTP endpoint, so that no window is
lost and no secret leaks:

    parts.py       a pane as the POSTs it is sent as: parts, headers, Idempotency-Key
    redaction.py   the endpoint's secrets, checked at start-up and scrubbed from every message
    breaker.py     a circuit breaker per endpoint host
    poster.py      WindowPoster: one part to the endpoint, urllib3 retries, redirects, deadlines
    deliver.py     whole panes under the bounded policy (also replay's) or the streaming one; dead letters
    redelivery.py  streaming: panes held in Beam state and posted again on timers
    sink.py        PostWindows, the sink composite
"""

from transforms.delivery.breaker import BreakerPolicy
from transforms.delivery.deliver import Deliverer, LetterReplayer, replay_letter
from transforms.delivery.poster import DeliveryConfig, RedeliveryPolicy, WindowPoster
from transforms.delivery.redaction import DEFAULT_TOKEN_ENV
from transforms.delivery.sink import PostWindows

__all__ = [
  'BreakerPolicy',
  'DEFAULT_TOKEN_ENV',
  'Deliverer',
  'DeliveryConfig',
  'LetterReplayer',
  'PostWindows',
  'RedeliveryPolicy',
  'WindowPoster',
  'replay_letter',
]
