"""`python -m pipeline.replay DIR`: posts again the windows the endpoint did not
take, from the dead letters under DIR.

Each undelivered window is posted with the headers it had (window start and end,
pane, Idempotency-Key), the token from the same environment variable, and the
same retry policy. Delivered ones are removed from their dead-letter file (a
file left empty is deleted); the rest stay for the next replay.

Exit status: 0 when every window was delivered (or there was none), 2 when some
are still undelivered, 1 on failure.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from transforms.dead_letter import read_dead_letters, rewrite_dead_letters
from transforms.elements import KIND_UNDELIVERED_WINDOW
from pipeline.options import (
    add_delivery_args, add_filesystem_args, configure_filesystems, delivery_config)
from transforms.http_sink import DeliveryConfig, WindowPoster

_LOG = logging.getLogger('pipeline.replay')


def template_from_url(url: str, bucket_time: int) -> str:
  return url.replace(str(bucket_time), '{bucket_time}')


def replay(directory: str, endpoint: Optional[str], config: DeliveryConfig) -> tuple:
  """Replays every undelivered window under `directory`; returns (delivered, left)."""
  by_file = {}
  for path, letter in read_dead_letters(directory, KIND_UNDELIVERED_WINDOW):
    by_file.setdefault(path, []).append(letter)
  delivered = left = 0
  posters = {}
  for path, letters in by_file.items():
    remaining = []
    for letter in letters:
      if letter.get('url_redacted') and not endpoint:
        _LOG.error('window %s: its URL held secrets and was redacted; pass --endpoint', letter['bucket_time'])
        remaining.append(letter)
        continue
      template = endpoint or template_from_url(letter['url'], letter['bucket_time'])
      poster = posters.get(template)
      if poster is None:
        poster = posters[template] = WindowPoster(config._replace(endpoint_template=template))
        poster.open()
      outcome = poster.post_body(letter['bucket_time'], letter['window_end'],
                                 letter['body'].encode('utf-8'), letter.get('pane_index', 0),
                                 letter.get('pane_timing', 'ON_TIME'))
      if outcome.delivered:
        delivered += 1
        print(f'delivered window {letter["bucket_time"]} to {outcome.url}')
      else:
        letter['attempts'] = letter.get('attempts', 0) + outcome.attempts
        letter['last_status'], letter['last_error'] = outcome.status, outcome.error
        remaining.append(letter)
        print(f'still undelivered: window {letter["bucket_time"]}: '
              f'{outcome.error or "HTTP %s" % outcome.status}')
    left += len(remaining)
    rewrite_dead_letters(path, remaining)
  for poster in posters.values():
    poster.close()
  return delivered, left


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('directory', help='the --dead_letter_dir of the run')
  parser.add_argument('--endpoint', help='URL template to post to instead of the recorded URL')
  add_delivery_args(parser)
  add_filesystem_args(parser)
  args = parser.parse_args(argv)
  configure_filesystems(args)  # before anything lists an s3:// path
  logging.basicConfig(level=logging.WARNING)
  if '://' not in args.directory and not os.path.isdir(args.directory):
    print(f'error: no such directory: {args.directory}', file=sys.stderr)
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
