"""The counting flags end to end, by the command line: two accounts' flow log
groups subscribed to one Kinesis stream in moto server (the emulated
CloudWatch Logs subscription of devtools/aws_emulator.py), counted per account
with `--group_by account-id` and POSTed to one URL per account and window of a
real HTTP receiver; packet addresses from a file; and the start-up checks of
the new flags (one line, exit 1)."""

import logging

import pytest

from pipeline.cli import main, run
from tests import kinesis_helpers as kh
from tests.builders import NAT_FORMAT_FIELDS, flow_line, nat_line, no_traffic_line

W0, W1 = 1700000400, 1700001000
ALICE, BOB = '111122223333', '444455556666'


def account_line(account, srcaddr, dstaddr, start, **values):
  return flow_line(srcaddr, dstaddr, start, **values).replace('123456789012', account, 1)


# Both accounts' VPCs use 10.0.0.0/16: the same addresses, different hosts.
FLOWS = {
  ALICE: [
    [
      account_line(ALICE, '10.0.0.5', '10.0.0.6', W0 + 10),
      account_line(ALICE, '10.0.0.5', '10.0.0.7', W0 + 20),
      no_traffic_line(W0 + 30).replace('123456789012', ALICE),
    ],
    [
      account_line(ALICE, '10.0.0.6', '10.0.0.5', W0 + 40),
      account_line(ALICE, '10.0.0.5', '10.0.0.6', W1 + 5),
    ],
  ],
  BOB: [
    [
      account_line(BOB, '10.0.0.5', '10.0.9.9', W0 + 11),
      account_line(BOB, '2001:db8::5', '10.0.0.5', W0 + 12),
    ],
    [account_line(BOB, '10.0.0.5', '10.0.0.6', W0 + 13)],
  ],
}
EXPECTED = {
  f'/{ALICE}/connection_sets/{W0}': {'10.0.0.5': 2, '10.0.0.6': 1, '10.0.0.7': 1},
  f'/{ALICE}/connection_sets/{W1}': {'10.0.0.5': 1, '10.0.0.6': 1},
  f'/{BOB}/connection_sets/{W0}': {'10.0.0.5': 3, '10.0.9.9': 1, '2001:db8::5': 1, '10.0.0.6': 1},
}


@pytest.fixture
def two_accounts_stream(fake_aws_credentials):
  """moto server with a 2-shard stream fed by the subscriptions of two
  accounts' flow log groups."""
  log_streams = {account: (f'/vpc/flow-logs/{account}', f'eni-{account}-all') for account in FLOWS}
  with kh.moto_server() as moto:
    _, logs = kh.subscribed_stream(moto.url, 'org-flow-logs', 2, *log_streams.values())
    for account, batches in FLOWS.items():
      kh.put_flow_lines(logs, *log_streams[account], batches)
    yield moto.url


def test_two_accounts_in_one_stream_are_counted_apart_and_posted_to_their_own_urls(
  two_accounts_stream, start_receiver, tmp_path
):
  receiver = start_receiver()
  summary = run(
    [
      '--kinesis_stream=org-flow-logs',
      f'--kinesis_endpoint_url={two_accounts_stream}',
      f'--aws_region={kh.REGION}',
      '--kinesis_stop_at_latest',
      '--group_by=account-id',
      f'--endpoint={receiver.url("/{account_id}/connection_sets/{bucket_time}")}',
      f'--dead_letter_dir={tmp_path}',
    ]
  )
  assert receiver.latest_by_path() == EXPECTED
  # Most peers first, then by address, as without grouping.
  assert list(receiver.latest_by_path()[f'/{BOB}/connection_sets/{W0}']) == [
    '10.0.0.5',
    '10.0.0.6',
    '10.0.9.9',
    '2001:db8::5',
  ]
  assert sorted(post.path for post in receiver.posts) == sorted(EXPECTED)
  assert (
    summary.records,
    summary.flow_lines,
    summary.counted_flows,
    summary.skipped_nodata,
    summary.bad_inputs,
    summary.windows_delivered,
  ) == (4, 8, 7, 1, 0, 3)


def test_packet_addresses_by_the_command_line(start_receiver, tmp_path):
  lines = [' '.join(NAT_FORMAT_FIELDS)] + [
    nat_line('eni-nat', s, d, ps, pd, W0 + 10)
    for s, d, ps, pd in [
      ('10.0.1.5', '10.0.0.220', '10.0.1.5', '203.0.113.5'),
      ('10.0.0.220', '10.0.1.5', '203.0.113.5', '10.0.1.5'),
    ]
  ]
  (tmp_path / 'nat.log').write_text('\n'.join(lines) + '\n')
  receiver = start_receiver()
  assert (
    main(
      [
        f'--input={tmp_path}/nat.log',
        f'--endpoint={receiver.url()}',
        '--address_fields=packet',
        f'--dead_letter_dir={tmp_path / "dl"}',
      ]
    )
    == 0
  )
  assert receiver.latest_by_path() == {f'/connection_sets/{W0}': {'10.0.1.5': 1, '203.0.113.5': 1}}


@pytest.mark.parametrize(
  'flags, message',
  [
    (
      ['--group_by=account-id'],
      '--endpoint must hold {account_id} so that each window and group has its own URL',
    ),
    (['--group_by=account-id,Account'], '--group_by takes up to 8 distinct flow log field names'),
    (['--group_by=account-id,account-id'], '--group_by takes up to 8 distinct flow log field names'),
    (['--merge_shards=0'], "--merge_shards: expected a whole number above 0, not '0'"),
    (['--merge_shards=129'], '--merge_shards must be between 1 and 128'),
    (
      ['--address_fields=nat'],
      "error: --address_fields: invalid choice: 'nat' (choose from 'interface', 'packet')",
    ),
    (
      ['--log_format=${srcaddr} ${start}'],
      '--log_format: log format lacks the fields needed to count peers: dstaddr',
    ),
  ],
  ids=[
    'group_without_placeholder',
    'group_field_not_a_name',
    'group_field_twice',
    'no_shards',
    'too_many_shards',
    'bad_address_fields',
    'format_without_dstaddr',
  ],
)
def test_counting_flags_are_checked_at_start_up(flags, message, tmp_path, capsys):
  (tmp_path / 'flows.log').write_text(flow_line('10.0.0.1', '10.0.0.2', W0) + '\n')
  argv = [f'--input={tmp_path}/flows.log', '--endpoint=http://127.0.0.1:9/c/{bucket_time}', *flags]
  assert main(argv) == 1
  error = capsys.readouterr().err
  assert message in error
  assert 'Traceback' not in error


def test_a_kinesis_run_needs_the_group_field_in_its_log_format(capsys):
  assert (
    main(['--kinesis_stream=s', '--group_by=vpc-id', '--endpoint=http://127.0.0.1:9/{vpc_id}/{bucket_time}'])
    == 1
  )
  assert 'error: --group_by names vpc-id, which the log format lacks (--log_format, default version 2)' in (
    capsys.readouterr().err
  )


def test_unknown_log_format_fields_are_read_and_named_in_a_warning(start_receiver, tmp_path, caplog):
  (tmp_path / 'flows.log').write_text(f'10.0.0.1 some-value 10.0.0.2 {W0 + 1} x\n')
  receiver = start_receiver()
  with caplog.at_level(logging.WARNING, logger='pipeline'):
    assert (
      main(
        [
          f'--input={tmp_path}/flows.log',
          f'--endpoint={receiver.url()}',
          '--log_format=${srcaddr} ${flow-hint} ${dstaddr} ${start} ${next-big-thing}',
          f'--dead_letter_dir={tmp_path / "dl"}',
        ]
      )
      == 0
    )
  assert (
    '--log_format names fields this version does not know (read like any other field): '
    'flow-hint next-big-thing'
  ) in caplog.text
  assert receiver.latest_by_path() == {f'/connection_sets/{W0}': {'10.0.0.1': 1, '10.0.0.2': 1}}
