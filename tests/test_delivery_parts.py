"""A pane as the POSTs it is sent as: the split into parts (each a valid JSON
object of at most the cap, disjoint, together the document, in its order),
the Idempotency-Key (the same key is always the same bytes), X-Group and
the headers of each part."""

import gzip
import json

import pytest
from hypothesis import given, settings, strategies as st

from transforms.delivery.parts import (
  MIN_BODY_BYTES,
  DocumentPart,
  document_body,
  group_header,
  idempotency_key,
  parse_group_header,
  split_counts,
  window_parts,
)
from transforms.elements import WindowCounts

BUCKET = 1700000400
COUNTS = {'10.0.0.1': 2, '2001:db8::1': 1, '10.0.0.2': 1}


def test_document_body_is_the_counts_as_compact_json():
  assert document_body(COUNTS) == b'{"10.0.0.1":2,"2001:db8::1":1,"10.0.0.2":1}'


def test_a_document_within_the_cap_is_one_part():
  assert split_counts(COUNTS, None) == [document_body(COUNTS)]
  assert split_counts(COUNTS, 43) == [document_body(COUNTS)]


def test_a_document_over_the_cap_is_split_in_order_into_parts_within_it():
  counts = {f'10.0.{i // 256}.{i % 256}': 1000 - i for i in range(100)}
  bodies = split_counts(counts, MIN_BODY_BYTES)
  assert len(bodies) > 1
  assert all(len(b) <= MIN_BODY_BYTES for b in bodies)
  merged = [item for b in bodies for item in json.loads(b).items()]
  assert merged == list(counts.items())
  # Greedy: each part but the last could not take the next entry.
  for body, following in zip(bodies, bodies[1:]):
    first_key, first_value = next(iter(json.loads(following).items()))
    assert len(body) + len(f',"{first_key}":{first_value}') > MIN_BODY_BYTES


@settings(max_examples=200, deadline=None)
@given(
  st.dictionaries(st.ip_addresses().map(str), st.integers(1, 10**9), min_size=1, max_size=80),
  st.integers(MIN_BODY_BYTES, 2000),
)
def test_parts_are_valid_disjoint_and_together_the_document(counts, cap):
  bodies = split_counts(counts, cap)
  assert all(len(b) <= cap for b in bodies) or bodies == [document_body(counts)]
  parsed = [json.loads(b) for b in bodies]
  assert all(parsed)
  assert [k for p in parsed for k in p] == list(counts)  # disjoint, in order
  assert {k: v for p in parsed for k, v in p.items()} == counts
  assert split_counts(counts, cap) == bodies  # the same every time


def test_a_cap_below_the_minimum_is_refused():
  with pytest.raises(ValueError, match='at least 256'):
    split_counts({f'10.0.0.{i}': i for i in range(50)}, 100)


def test_the_key_names_bucket_pane_part_and_a_digest_of_group_and_body():
  body = document_body(COUNTS)
  key = idempotency_key(BUCKET, (), 1, 0, 1, body)
  assert key.startswith(f'{BUCKET}-1-0of1-') and len(key.rsplit('-', 1)[1]) == 16
  assert idempotency_key(BUCKET, (), 1, 0, 1, body) == key
  others = {
    idempotency_key(BUCKET, (), 0, 0, 1, body),
    idempotency_key(BUCKET, (), 1, 0, 2, body),
    idempotency_key(BUCKET, (), 1, 0, 1, body + b' '),
    idempotency_key(BUCKET + 600, (), 1, 0, 1, body),
    idempotency_key(BUCKET, (('account-id', '1'),), 1, 0, 1, body),
  }
  assert key not in others and len(others) == 5
  grouped = idempotency_key(BUCKET, (('account-id', '111122223333'), ('vpc-id', 'vpc-0a1b')), 0, 0, 1, body)
  assert grouped.startswith(f'{BUCKET}-account-id=111122223333&vpc-id=vpc-0a1b-0-0of1-')


def test_group_header_is_query_string_encoded_and_reads_back():
  group = (('account-id', '111122223333'), ('vpc-id', 'vpc 0a/1b&c=d'))
  assert group_header(group) == 'account-id=111122223333&vpc-id=vpc+0a%2F1b%26c%3Dd'
  assert parse_group_header(group_header(group)) == group
  assert group_header(()) == ''


def test_headers_of_each_part():
  window = WindowCounts(
    BUCKET,
    BUCKET + 600,
    {f'10.0.{i // 256}.{i % 256}': 1 for i in range(40)},
    2,
    'LATE',
    (('account-id', '111122223333'),),
  )
  parts = window_parts(window, MIN_BODY_BYTES)
  assert len(parts) == 3
  for index, part in enumerate(parts):
    assert part.headers() == {
      'Content-Type': 'application/json',
      'X-Window-Start': str(BUCKET),
      'X-Window-End': str(BUCKET + 600),
      'X-Pane-Index': '2',
      'X-Pane-Timing': 'LATE',
      'X-Part-Index': str(index),
      'X-Part-Count': '3',
      'X-Group': 'account-id=111122223333',
      'Idempotency-Key': idempotency_key(BUCKET, window.group, 2, index, 3, part.body),
    }
  assert len({p.key for p in parts}) == 3
  assert parts[0].headers(compress=True)['Content-Encoding'] == 'gzip'


def test_an_ungrouped_unsplit_pane_has_no_group_header_and_part_0_of_1():
  [part] = window_parts(WindowCounts(BUCKET, BUCKET + 600, COUNTS), None)
  headers = part.headers()
  assert 'X-Group' not in headers
  assert (headers['X-Part-Index'], headers['X-Part-Count']) == ('0', '1')


def test_compressed_payload_is_deterministic_gzip_of_the_body():
  part = DocumentPart(BUCKET, BUCKET + 600, 0, 'ON_TIME', (), 0, 1, document_body(COUNTS))
  assert part.payload(True) == part.payload(True)
  assert gzip.decompress(part.payload(True)) == part.body
  assert part.payload(False) == part.body
