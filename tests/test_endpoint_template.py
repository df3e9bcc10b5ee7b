"""The endpoint URL template: what start-up accepts and refuses, and the URL
each (window, group) gets."""

import pytest

from transforms.endpoint_template import endpoint_url, validate_endpoint_template

ACCEPTED = [
  ('plain', 'https://example.com/connection_sets/{bucket_time}', ()),
  ('in the query', 'http://127.0.0.1:8080/windows?start={bucket_time}', ()),
  ('one group field', 'https://example.com/{account_id}/connection_sets/{bucket_time}', ('account-id',)),
  ('two group fields', 'https://example.com/{account_id}/{vpc_id}/{bucket_time}', ('account-id', 'vpc-id')),
]


@pytest.mark.parametrize('name, template, group_fields', ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_templates(name, template, group_fields):
  validate_endpoint_template(template, group_fields)


REFUSED = [
  (
    'no bucket_time',
    'https://example.com/connection_sets',
    (),
    '--endpoint must hold {bucket_time} so that each window has its own URL, for example '
    'https://example.com/connection_sets/{bucket_time}',
  ),
  (
    'a misspelt placeholder',
    'https://example.com/connection_sets/{bucket}',
    (),
    '--endpoint names an unknown placeholder {bucket}; it may hold {bucket_time}',
  ),
  (
    'a group field without its placeholder',
    'https://example.com/{bucket_time}',
    ('account-id',),
    '--endpoint must hold {account_id} so that each window and group has its own URL, for '
    'example https://example.com/connection_sets/{bucket_time}',
  ),
  (
    'a placeholder of a field not grouped by',
    'https://example.com/{vpc_id}/{bucket_time}',
    ('account-id',),
    '--endpoint names an unknown placeholder {vpc_id}; it may hold {bucket_time}, {account_id}',
  ),
  (
    'an unmatched brace',
    'https://example.com/{bucket_time}/x}',
    (),
    '--endpoint has an unmatched brace: /{bucket_time}/x}',
  ),
  (
    'not http',
    'ftp://example.com/{bucket_time}',
    (),
    '--endpoint must be an http:// or https:// URL template, for example '
    'https://example.com/connection_sets/{bucket_time}',
  ),
  (
    'no host',
    'https:///{bucket_time}',
    (),
    '--endpoint must be an http:// or https:// URL template, for example '
    'https://example.com/connection_sets/{bucket_time}',
  ),
]


@pytest.mark.parametrize('name, template, group_fields, message', REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_templates_say_what_to_write(name, template, group_fields, message):
  with pytest.raises(ValueError) as refused:
    validate_endpoint_template(template, group_fields)
  assert str(refused.value) == message


def test_each_window_and_group_gets_its_url_with_values_kept_inside_their_segment():
  template = 'https://example.com/{account_id}/{vpc_id}/connection_sets/{bucket_time}'
  assert endpoint_url(template, 1700000400, (('account-id', '111122223333'), ('vpc-id', 'vpc-0a'))) == (
    'https://example.com/111122223333/vpc-0a/connection_sets/1700000400'
  )
  assert endpoint_url(template, 0, (('account-id', 'a/b?c'), ('vpc-id', '-'))) == (
    'https://example.com/a%2Fb%3Fc/-/connection_sets/0'
  )
  assert endpoint_url('http://h/{bucket_time}', 600) == 'http://h/600'
