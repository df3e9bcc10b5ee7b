"""The same answer as bench/baseline.py, computed by DuckDB over flow log files
as AWS delivers them to S3 (`*.log.gz`, a header line naming the fields):
read_csv over the files, then SQL. The benchmark's reference for the S3
format (a benchmark-only dependency: bench/requirements.txt).

    python bench/duckdb_query.py 'DIR/*.log.gz' [--threads 2] > answer.json
Prints {bucket_time: {address: distinct peers}} as JSON, built by DuckDB
itself (json_group_object), so that Python's share of the run is the start.
"""

import argparse
import sys

import duckdb

QUERY = """
WITH flows AS (
  SELECT srcaddr, dstaddr, CAST("start" AS BIGINT) // 600 * 600 AS bucket
  FROM read_csv(?, delim=' ', header=true, all_varchar=true)
  WHERE "log-status" = 'OK' AND srcaddr <> '-' AND dstaddr <> '-'
), pairs AS (
  SELECT bucket, srcaddr AS address, dstaddr AS peer FROM flows
  UNION ALL
  SELECT bucket, dstaddr, srcaddr FROM flows
), counts AS (
  SELECT bucket, address, count(DISTINCT peer) AS peers FROM pairs GROUP BY bucket, address
)
SELECT bucket, json_group_object(address, peers) FROM counts GROUP BY bucket ORDER BY bucket
"""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('pattern')
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args(argv)
  connection = duckdb.connect()
  connection.execute(f'SET threads = {args.threads}')
  rows = connection.execute(QUERY, [args.pattern]).fetchall()
  sys.stdout.write('{' + ','.join(f'"{bucket}":{counts}' for bucket, counts in rows) + '}')


if __name__ == '__main__':
  main()
