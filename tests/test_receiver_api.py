"""The reference receiver as a service, over HTTP on 127.0.0.1: POSTs built to
the delivery contract are answered as it says (and malformed ones with a clear
4xx), the JSON API gives the exact windows, top talkers, series and jumps, the
page and its assets come from the receiver itself, and `python -m
devtools.receiver` keeps its documents across a restart."""

import http.client
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import requests

from conftest import servers_started_by
from devtools.receiver import Receiver
from receiver_posts import contract_post, send
from tests.waiting import wait_for, while_running

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = 1767225600
X, Y, Z = '10.0.3.66', '10.0.0.24', '2600:1f18:4a3:6e00::10'
# X is quiet, then its fan-out jumps in window 3 and stays up; Y is busy
# throughout; Z comes and goes. A group of its own holds one window.
SERIES = {X: [3, 3, 3, 40, 40, 3], Y: [50, 52, 48, 51, 50, 49], Z: [0, 0, 2, 0, 25, 0]}
ACCOUNT = (('account-id', '111122223333'), ('vpc-id', 'vpc-0a1b'))
GROUP = 'account-id=111122223333&vpc-id=vpc-0a1b'
RULE = {
  'ratio': 3.0,
  'min_count': 20,
  'history': 6,
  'text': 'at least 20 distinct peers and at least 3 times the median of the previous 6 '
  'windows (0 where absent)',
}


def window_counts(i):
  return {address: counts[i] for address, counts in SERIES.items() if counts[i]}


@pytest.fixture
def start_receiver():
  """Starts the reference receiver (`devtools.receiver.Receiver`, same
  arguments), the service under test here, and stops each when the test ends
  (the suite's own start_receiver is the scripted endpoint of tests/endpoint.py)."""
  yield from servers_started_by(Receiver)


@pytest.fixture
def loaded(start_receiver, tmp_path):
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'))
  for i in range(6):
    assert send(receiver, contract_post(W + 600 * i, window_counts(i))).status_code == 200
  assert send(receiver, contract_post(W, {X: 7}, group=ACCOUNT)).status_code == 200
  return receiver


def get(receiver, path, status=200):
  response = requests.get(receiver.url(path), timeout=30)
  assert response.status_code == status, response.text
  return response.json()


def test_a_post_is_answered_with_its_outcome(start_receiver, tmp_path):
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'))
  first = send(receiver, contract_post(W, {X: 1}, part=(0, 2), group=ACCOUNT, compress=True))
  assert (first.status_code, first.json()) == (
    200,
    {'outcome': 'waiting', 'window_start': W, 'group': GROUP, 'pane': 0, 'part': 0},
  )
  second = send(receiver, contract_post(W, {Y: 2}, part=(1, 2), group=ACCOUNT))
  assert second.json()['outcome'] == 'applied'
  assert send(receiver, contract_post(W, {Y: 2}, part=(1, 2), group=ACCOUNT)).json()['outcome'] == 'duplicate'
  assert receiver.documents() == {(W, GROUP): {X: 1, Y: 2}}
  assert receiver.latest_by_path() == {f'/connection_sets/111122223333/vpc-0a1b/{W}': {X: 1, Y: 2}}
  assert [post.json() for post in receiver.posts] == [{X: 1}, {Y: 2}, {Y: 2}]
  assert receiver.attempts == 3


def test_a_service_keeps_documents_not_posts(start_receiver, tmp_path):
  """`python -m devtools.receiver` runs for days: what it keeps is in the store."""
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'), keep_posts=False)
  send(receiver, contract_post(W, {X: 1}))
  assert (receiver.posts, receiver.documents()) == ([], {(W, ''): {X: 1}})


def test_a_receiver_without_a_store_keeps_documents_in_memory_and_serves_no_page(start_receiver):
  receiver = start_receiver()
  send(receiver, contract_post(W, {X: 1}))
  send(receiver, contract_post(W, {X: 5}, pane=1))
  send(receiver, contract_post(W, {X: 1}))
  assert receiver.latest_by_path() == {f'/connection_sets/{W}': {X: 5}}
  assert get(receiver, '/api/windows', 404) == {
    'error': 'this receiver keeps no store, so it serves no viewer (start it with a store file)'
  }


def test_a_record_only_receiver_reads_nothing(start_receiver):
  """The benchmark's endpoint: every POST kept as sent, the last at a path
  its document, nothing checked."""
  receiver = start_receiver(record_only=True)
  send(receiver, contract_post(W, {X: 1}))
  send(receiver, contract_post(W, {X: 1}, pane=1, body=b'{"10.0.3.66": 5}'))
  assert send(receiver, ('/elsewhere', {}, b'not json')).json() == {'outcome': 'recorded'}
  assert [post.body for post in receiver.posts] == [b'{"10.0.3.66":1}', b'{"10.0.3.66": 5}', b'not json']
  assert receiver.documents() == {}
  receiver.posts.pop()
  assert receiver.latest_by_path() == {f'/connection_sets/{W}': {X: 5}}


@pytest.mark.parametrize(
  'change, status, error',
  [
    ({'body': b'not json'}, 400, 'body is not JSON'),
    ({'headers': {'X-Pane-Index': 'x'}}, 400, "X-Pane-Index must be a non-negative whole number, got 'x'"),
    (
      {'headers': {'Content-Encoding': 'deflate'}},
      415,
      "Content-Encoding must be gzip or none, got 'deflate'",
    ),
    ({'body': b'{"%s": 1}' % (b'1' * 2000)}, 413, 'body of 2007 bytes is larger than 1000 bytes'),
    ({'key_reused': True}, 422, "Idempotency-Key 'k' was already used for another body"),
  ],
  ids=['not_json', 'bad_pane', 'unknown_encoding', 'over_the_cap', 'key_reused_for_another_body'],
)
def test_a_malformed_post_gets_a_clear_4xx(start_receiver, tmp_path, change, status, error):
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'), max_body_bytes=1000)
  path, headers, body = contract_post(W, {X: 1}, key='k')
  if change.get('key_reused'):
    assert send(receiver, (path, headers, body)).status_code == 200
    body = b'{"10.0.3.66":2}'
  body = change.get('body', body)
  response = send(receiver, (path, {**headers, **change.get('headers', {})}, body))
  assert (response.status_code, response.json()['error'][: len(error)]) == (status, error)


def test_a_post_without_a_length_is_refused(start_receiver, tmp_path):
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'))
  connection = http.client.HTTPConnection('127.0.0.1', receiver.port, timeout=30)
  connection.putrequest('POST', f'/connection_sets/{W}')
  connection.putheader('Transfer-Encoding', 'chunked')
  connection.endheaders()
  connection.send(b'0\r\n\r\n')
  response = connection.getresponse()
  assert (response.status, json.loads(response.read())) == (
    411,
    {'error': 'send the body with a Content-Length, not chunked'},
  )
  connection.close()


def test_a_store_that_cannot_write_answers_503(start_receiver, tmp_path, monkeypatch):
  receiver = start_receiver(store=str(tmp_path / 'store.sqlite'))

  def full_disk(part):
    raise sqlite3.OperationalError('database or disk is full')

  monkeypatch.setattr(receiver.store, 'add', full_disk)
  response = send(receiver, contract_post(W, {X: 1}))
  assert (response.status_code, response.json()) == (
    503,
    {'error': 'the store could not take the document: database or disk is full'},
  )
  assert receiver.posts == []


def test_scripted_answers_come_before_the_contract(start_receiver):
  receiver = start_receiver(statuses=[503], retry_after='1')
  response = send(receiver, contract_post(W, {X: 1}))
  assert (response.status_code, response.headers['Retry-After']) == (503, '1')
  assert send(receiver, contract_post(W, {X: 1})).status_code == 200
  assert (receiver.attempts, len(receiver.posts)) == (2, 1)


def test_windows_give_each_window_and_its_jump_count(loaded):
  answer = get(loaded, '/api/windows')
  assert answer['rule'] == RULE
  assert [
    (w['start'], w['end'], w['pane'], w['pane_timing'], w['addresses'], w['max_peers'], w['jumps'])
    for w in answer['windows']
  ] == [
    (W, W + 600, 0, 'ON_TIME', 2, 50, 0),
    (W + 600, W + 1200, 0, 'ON_TIME', 2, 52, 0),
    (W + 1200, W + 1800, 0, 'ON_TIME', 3, 48, 0),
    (W + 1800, W + 2400, 0, 'ON_TIME', 2, 51, 1),
    (W + 2400, W + 3000, 0, 'ON_TIME', 3, 50, 2),
    (W + 3000, W + 3600, 0, 'ON_TIME', 2, 49, 0),
  ]
  grouped = get(loaded, f'/api/windows?group={GROUP.replace("&", "%26")}')
  assert [(w['start'], w['addresses']) for w in grouped['windows']] == [(W, 1)]
  # A higher minimum leaves Z's 25 out.
  assert [w['jumps'] for w in get(loaded, '/api/windows?min_count=30')['windows']] == [0, 0, 0, 1, 1, 0]


def test_answers_follow_each_new_document(loaded):
  before = get(loaded, '/api/windows')
  assert get(loaded, '/api/windows') == before
  send(loaded, contract_post(W + 3600, {X: 3, Y: 100}))
  after = get(loaded, '/api/windows')['windows']
  assert [(w['start'], w['max_peers'], w['jumps']) for w in after[-2:]] == [
    (W + 3000, 49, 0),
    (W + 3600, 100, 0),
  ]
  send(loaded, contract_post(W + 3600, {X: 3, Y: 100, Z: 90}, pane=1))
  assert get(loaded, '/api/windows')['windows'][-1]['jumps'] == 1


def test_groups_list_every_group_with_its_windows(loaded):
  assert get(loaded, '/api/groups') == {
    'groups': [
      {'group': '', 'pairs': [], 'windows': 6, 'first': W, 'last': W + 3000},
      {
        'group': GROUP,
        'pairs': [['account-id', '111122223333'], ['vpc-id', 'vpc-0a1b']],
        'windows': 1,
        'first': W,
        'last': W,
      },
    ]
  }


def test_top_gives_a_window_s_top_talkers_with_their_jumps(loaded):
  assert get(loaded, f'/api/top?window={W + 1800}') == {
    'group': '',
    'window': W + 1800,
    'top': [
      {'address': Y, 'peers': 51, 'baseline': 50.0, 'jump': False},
      {'address': X, 'peers': 40, 'baseline': 3.0, 'jump': True},
    ],
  }
  assert get(loaded, f'/api/top?window={W + 1800}&limit=1&ratio=20')['top'] == [
    {'address': Y, 'peers': 51, 'baseline': 50.0, 'jump': False}
  ]
  assert get(loaded, f'/api/top?window={W}')['top'][0]['baseline'] is None
  assert get(loaded, f'/api/top?window={W + 1}', 404) == {'error': f"no window {W + 1} in group ''"}


def test_series_gives_an_address_s_count_in_every_window(loaded):
  answer = get(loaded, f'/api/series?address={X}')
  assert (answer['address'], answer['seen'], answer['rule']) == (X, True, RULE)
  assert [(p['start'], p['peers'], p['baseline'], p['present'], p['jump']) for p in answer['series']] == [
    (W, 3, None, True, False),
    (W + 600, 3, 3.0, True, False),
    (W + 1200, 3, 3.0, True, False),
    (W + 1800, 40, 3.0, True, True),
    (W + 2400, 40, 3.0, True, True),
    (W + 3000, 3, 3.0, True, False),
  ]
  z = get(loaded, f'/api/series?address={Z}')['series']
  assert [(p['peers'], p['present'], p['jump']) for p in z] == [
    (0, False, False),
    (0, False, False),
    (2, True, False),
    (0, False, False),
    (25, True, True),
    (0, False, False),
  ]
  unknown = get(loaded, '/api/series?address=192.0.2.1')
  assert (unknown['seen'], [p['peers'] for p in unknown['series']]) == (False, [0] * 6)


def jump(window_start, address, peers, baseline, group=''):
  """One jump as /api/jumps lists it (of a 600 s window)."""
  return {
    'group': group,
    'window_start': window_start,
    'window_end': window_start + 600,
    'address': address,
    'peers': peers,
    'baseline': baseline,
  }


def test_jumps_since_a_time_for_an_alerting_system(loaded):
  answer = get(loaded, '/api/jumps?since=0')
  assert answer == {
    'rule': RULE,
    'since': 0,
    'truncated': False,
    'jumps': [jump(W + 1800, X, 40, 3.0), jump(W + 2400, X, 40, 3.0), jump(W + 2400, Z, 25, 0.0)],
  }
  since = get(loaded, f'/api/jumps?since={W + 2400}')
  assert [(j['window_start'], j['address']) for j in since['jumps']] == [(W + 2400, X), (W + 2400, Z)]
  iso = get(loaded, '/api/jumps?since=2026-01-01T00:40:00Z')
  assert (iso['since'], iso['jumps']) == (W + 2400, since['jumps'])
  newest = get(loaded, '/api/jumps?limit=1&order=desc')
  assert ([(j['window_start'], j['address']) for j in newest['jumps']], newest['truncated']) == (
    [(W + 2400, X)],
    True,
  )
  assert get(loaded, '/api/jumps?ratio=14')['jumps'] == [jump(W + 2400, Z, 25, 0.0)]
  assert get(loaded, f'/api/jumps?group={GROUP.replace("&", "%26")}')['jumps'] == []


@pytest.mark.parametrize(
  'path, error',
  [
    ('/api/jumps?since=yesterday', "since must be Unix seconds or an ISO 8601 time, got 'yesterday'"),
    ('/api/jumps?ratio=0.5', 'ratio must be a number of at least 1, got 0.5'),
    ('/api/jumps?ratio=nan', 'ratio must be a number of at least 1, got nan'),
    ('/api/jumps?min_count=0', 'min_count must be a whole number of at least 1, got 0'),
    ('/api/jumps?min_count=2.5', "min_count must be a whole number, got '2.5'"),
    ('/api/jumps?limit=0', 'limit must be from 1 to 10000, got 0'),
    ('/api/jumps?order=random', "order must be asc (oldest window first) or desc, got 'random'"),
    ('/api/top', 'give window'),
    ('/api/top?window=1&limit=5000', 'limit must be from 1 to 1000, got 5000'),
    ('/api/series', 'give an address'),
  ],
  ids=[
    'since_not_a_time',
    'ratio_under_1',
    'ratio_nan',
    'min_count_0',
    'min_count_fraction',
    'limit_0',
    'unknown_order',
    'top_without_window',
    'top_limit_over_cap',
    'series_without_address',
  ],
)
def test_bad_parameters_are_a_clear_400(loaded, path, error):
  assert get(loaded, path, 400) == {'error': error}


def test_the_page_and_its_assets_come_from_the_receiver(loaded):
  page = requests.get(loaded.url('/'), timeout=30)
  assert page.headers['Content-Type'] == 'text/html; charset=utf-8'
  assert page.headers['Content-Security-Policy'].startswith("default-src 'self'")
  assert '<script src="/static/viewer.js" defer></script>' in page.text
  assert '://' not in page.text  # no asset from elsewhere
  for name, content_type in [
    ('viewer.js', 'text/javascript; charset=utf-8'),
    ('viewer.css', 'text/css; charset=utf-8'),
    ('icon.svg', 'image/svg+xml'),
  ]:
    asset = requests.get(loaded.url(f'/static/{name}'), timeout=30)
    assert (asset.status_code, asset.headers['Content-Type']) == (200, content_type)
  for path in ['/static/../receiver.py', '/static/%2e%2e/api.py', '/static/.hidden.js', '/nothing']:
    assert requests.get(loaded.url(path), timeout=30).status_code == 404, path


def test_the_command_keeps_its_documents_across_a_restart(tmp_path):
  store = tmp_path / 'store.sqlite'

  def start():
    port_file = tmp_path / 'port'
    if port_file.exists():
      port_file.unlink()
    process = subprocess.Popen(
      [
        sys.executable,
        '-m',
        'devtools.receiver',
        f'--store={store}',
        f'--port_file={port_file}',
        '--jump_min_count=5',
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    wait_for(
      while_running(process, port_file.exists, process.stderr.read),
      60,
      'the receiver to write its port',
      interval=0.05,
    )
    return process, f'http://127.0.0.1:{port_file.read_text()}'

  process, url = start()
  try:
    path, headers, body = contract_post(W, {X: 3})
    assert requests.post(url + path, data=body, headers=headers, timeout=30).json()['outcome'] == 'applied'
    path, headers, body = contract_post(W + 600, {X: 30})
    assert requests.post(url + path, data=body, headers=headers, timeout=30).status_code == 200
  finally:
    process.kill()  # no clean stop: what was acknowledged must be on disk
    process.wait()
  process, url = start()
  try:
    assert requests.get(url + '/api/rule', timeout=30).json()['min_count'] == 5
    assert [
      (j['window_start'], j['address']) for j in requests.get(url + '/api/jumps', timeout=30).json()['jumps']
    ] == [(W + 600, X)]
    path, headers, body = contract_post(W, {X: 3})
    assert requests.post(url + path, data=body, headers=headers, timeout=30).json()['outcome'] == 'duplicate'
  finally:
    process.terminate()
    process.wait()


@pytest.mark.parametrize(
  'argv, message',
  [
    (['--store=/nonexistent-dir/s.sqlite'], 'no directory /nonexistent-dir for --store'),
    (
      ['--store=s.sqlite', '--jump_ratio=0.5'],
      '--jump_ratio, --jump_min_count and --jump_history must be at least 1',
    ),
  ],
  ids=['store_directory_missing', 'ratio_under_1'],
)
def test_command_line_mistakes_are_one_line_and_exit_1(argv, message):
  finished = subprocess.run(
    [sys.executable, '-m', 'devtools.receiver', *argv],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert finished.returncode == 1
  assert finished.stderr.strip().splitlines() == [f'receiver.py: {message}']
