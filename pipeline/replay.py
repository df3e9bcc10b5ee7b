"""`python -m pipeline.replay DIR`: posts again the windows the endpoint did not
take, from the dead letters under DIR.

Each undelivered window is posted by transforms.delivery.LetterReplayer: with
the headers it had (window start and end, pane, group, parts,
Idempotency-Key), the token from the same environment variable, and the
bounded run's retry policy (a dead endpoint costs one wait, not one per
window). Only parts not yet delivered are posted; with a --max_body_bytes
other than the run's (after a 413) the document is split anew. Delivered ones
are removed from their dead-letter file (a file left empty is deleted); the
rest stay for the next replay.

Exit status: 0 when every window was delivered (or there was none), 2 when some
are still undelivered, 1 on failure.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from transforms.dead_letter import read_dead_letters, rewrite_dead_letters
from transforms.delivery import DeliveryConfig, LetterReplayer
from transforms.elements import KIND_UNDELIVERED_WINDOW
from pipeline.options import add_delivery_args, check_delivery_args, delivery_config

_LOG = logging.getLogger('pipeline.replay')


def replay(directory: str, endpoint: Optional[str], config: DeliveryConfig) -> tuple:
  """Replays every undelivered window under `directory`; returns (delivered, left)."""
  by_file = {}
  for path, letter in read_dead_letters(directory, KIND_UNDELIVERED_WINDOW):
    by_file.setdefault(path, []).append(letter)
  delivered = left = 0
  replayer = LetterReplayer(config, endpoint)
  for path, letters in by_file.items():
    remaining = []
    for letter in letters:
      outcome = replayer.post(letter)
      if outcome.delivered:
        delivered += 1
        print(f'delivered window {letter["bucket_time"]} to {outcome.url}')
      else:
        remaining.append(outcome.letter)
        print(f'still undelivered: window {letter["bucket_time"]}: {outcome.reason}')
    left += len(remaining)
    rewrite_dead_letters(path, remaining)
  replayer.close()
  return delivered, left


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('directory', help='the --dead_letter_dir of the run')
  parser.add_argument('--endpoint', help='URL template to post to instead of the recorded URL')
  add_delivery_args(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  if '://' not in args.directory and not os.path.isdir(args.directory):
    print(f'error: no such directory: {args.directory}', file=sys.stderr)
    return 1
  try:
    check_delivery_args(args, args.endpoint or 'http://unused/{bucket_time}')
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  config = delivery_config(args, args.endpoint or 'http://unused/{bucket_time}')
  try:
    delivered, left = replay(args.directory, args.endpoint, config)
  except Exception:  # pylint: disable=broad-except
    _LOG.exception('replay failed')
    return 1
  print(f'replay: {delivered} window(s) delivered, {left} still undelivered')
  return 2 if left else 0


if __name__ == '__main__':
  sys.exit(main())
