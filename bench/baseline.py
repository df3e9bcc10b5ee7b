"""The original single-process algorithm (MISSION.md), as the classic Lambda did
it: for each Kinesis record, base64 -> gunzip -> JSON; for each flow line with
log-status OK and both addresses, a dict of sets per 10-minute bucket.

    python bench/baseline.py FILE... > answer.json
Reads JSON Lines of Kinesis records ({"kinesis": {"data": ...}}) and prints
{bucket_time: {address: distinct peers}} as JSON.
"""

import base64
import gzip
import json
import sys
from collections import defaultdict


def handle_records(records, buckets):
  for record in records:
    payload = json.loads(gzip.decompress(base64.b64decode(record['kinesis']['data'])))
    if payload['messageType'] != 'DATA_MESSAGE':
      continue
    for event in payload['logEvents']:
      fields = event['message'].split()
      srcaddr, dstaddr, start, log_status = fields[3], fields[4], fields[10], fields[13]
      if log_status != 'OK' or srcaddr == '-' or dstaddr == '-':
        continue
      bucket = int(start) // 600 * 600
      peers = buckets[bucket]
      peers[srcaddr].add(dstaddr)
      peers[dstaddr].add(srcaddr)


def main(paths):
  buckets = defaultdict(lambda: defaultdict(set))
  for path in paths:
    with open(path, encoding='ascii') as f:
      handle_records((json.loads(line) for line in f), buckets)
  answer = {
    str(bucket): {ip: len(peers) for ip, peers in peers_by_ip.items()}
    for bucket, peers_by_ip in buckets.items()
  }
  json.dump(answer, sys.stdout)


if __name__ == '__main__':
  main(sys.argv[1:])
