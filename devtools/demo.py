"""The demo behind `./run_local.sh`: the production path, end to end, on this
machine alone.

It starts moto server (an AWS emulator) and a receiver of ours on 127.0.0.1,
creates a Kinesis stream and a VPC flow log group whose subscription filter
targets it, writes an hour of a small VPC's flows (with a scanning host and some
IPv6, `devtools.sample_data`) through CloudWatch Logs, runs the pipeline from
the stream, and prints, for each window, the number of addresses and the top
talkers by distinct peers. With --view it then keeps the receiver up, serving
the fan-out viewer at the URL it prints, until Ctrl-C. Everything it started is
stopped on the way out, on Ctrl-C too.

    python -m devtools.demo [--dir out/demo] [--lines 40000] [--view [--port 0]]
"""

import argparse
import itertools
import os
import shutil
import sys
import threading
import time
from typing import List, Optional

from pipeline import cli as pipeline_main
from devtools import aws_emulator, report
from devtools.receiver import Receiver
from devtools.sample_data import SampleVpc, control_record

STREAM = 'vpc-flow-logs'
LOG_GROUP = '/vpc/flow-logs'
LOG_STREAM = 'eni-sample-all'
LINES_PER_CALL = 300  # one put_log_events call, so one Kinesis record
STORE = 'received.sqlite'  # the receiver's store, in --dir


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dir', default='out/demo', help='working directory (emptied first)')
  parser.add_argument('--lines', type=int, default=40_000)
  parser.add_argument('--shards', type=int, default=2)
  parser.add_argument('--start', type=int, help='first flow start (default: the last full hour)')
  parser.add_argument(
    '--view', action='store_true', help='then keep the receiver and its viewer up until Ctrl-C'
  )
  parser.add_argument(
    '--port', type=int, default=0, help="the receiver's port on 127.0.0.1 (default: one the OS chooses)"
  )
  args = parser.parse_args(argv)
  shutil.rmtree(args.dir, ignore_errors=True)
  os.makedirs(args.dir)
  store = os.path.join(args.dir, STORE)
  # The emulator takes any credentials; these keep boto3 away from real ones.
  os.environ.update(aws_emulator.FAKE_AWS_ENV)
  hour_start = args.start or int(time.time()) // 3600 * 3600 - 3600
  try:
    with Receiver(args.port, store=store) as receiver:
      status = run_pipeline(args, receiver, hour_start)
      print('\n== what the endpoint received')
      print(report.render(report.load_windows(store)))
      if args.view:
        print(
          f'\n== the viewer: {receiver.viewer_url()}  (Ctrl-C stops it; the documents stay '
          f'in {store}, `python -m devtools.receiver --store {store}` serves them again)',
          flush=True,
        )
        try:
          threading.Event().wait()
        except KeyboardInterrupt:
          print('\nstopped the viewer', file=sys.stderr)
  except KeyboardInterrupt:
    print('\ninterrupted: stopped the emulator and the receiver', file=sys.stderr)
    return 130
  return status


def run_pipeline(args, receiver: Receiver, hour_start: int) -> int:
  """Writes the sample hour through CloudWatch Logs into Kinesis (moto
  server, stopped on return) and runs the pipeline from the stream into
  `receiver`; the pipeline's exit status."""
  with aws_emulator.moto_server() as moto:
    print(f'== moto server on {moto.url}, receiver on {receiver.url()}')
    kinesis, logs = aws_emulator.subscribed_stream(moto.url, STREAM, args.shards, (LOG_GROUP, LOG_STREAM))
    # CloudWatch Logs checks a new subscription's destination with a
    # CONTROL_MESSAGE; moto does not, so the demo writes one.
    kinesis.put_record(StreamName=STREAM, Data=control_record(), PartitionKey='control')
    lines = SampleVpc().flow_lines(args.lines, hour_start)
    calls = aws_emulator.put_flow_lines(
      logs, LOG_GROUP, LOG_STREAM, iter(lambda: list(itertools.islice(lines, LINES_PER_CALL)), [])
    )
    print(
      f'== wrote {args.lines} flow lines of the hour from {hour_start} through CloudWatch Logs '
      f'({calls} put_log_events calls) into the {args.shards}-shard stream {STREAM}'
    )
    print('== running the pipeline from Kinesis')
    status = pipeline_main.main(
      [
        f'--kinesis_stream={STREAM}',
        f'--kinesis_endpoint_url={moto.url}',
        f'--aws_region={aws_emulator.REGION}',
        '--kinesis_initial_position=TRIM_HORIZON',
        '--kinesis_stop_at_latest',
        f'--endpoint={receiver.url()}',
        f'--dead_letter_dir={os.path.join(args.dir, "dead_letters")}',
      ]
    )
  return status


if __name__ == '__main__':
  sys.exit(main())
