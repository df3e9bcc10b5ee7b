"""The endpoint's secrets as plain functions: the token checked at start-up,
URLs whose authority would send the password elsewhere refused, user info and
query values redacted by position, and every form of a secret scrubbed from
any text. (tests/test_delivery_secrets.py attacks a real process.)"""

import base64
import json
import urllib.parse

import pytest

from transforms.delivery.redaction import (
  SecretError,
  Secrets,
  check_endpoint,
  forms_of,
  read_token,
  redact_text,
  redact_url,
  url_user_info,
  without_user_info,
)

TOKEN = 'tok-3f9a7c1e-very-secret'


@pytest.mark.parametrize(
  'value, token',
  [
    (f'{TOKEN}\n', TOKEN),  # a Kubernetes secret made --from-file
    (f'  {TOKEN}\r\n', TOKEN),
    ('', None),
    ('  \n', None),
  ],
  ids=['trailing_newline_stripped', 'surrounding_white_space_stripped', 'empty_is_none', 'blank_is_none'],
)
def test_token_surrounding_white_space_is_stripped(value, token):
  assert read_token({'T': value}, 'T') == token
  assert read_token({}, 'T') is None


@pytest.mark.parametrize(
  'value, what',
  [
    (f'{TOKEN[:5]}\n{TOKEN[5:]}', 'a control character at position 6'),
    (f'{TOKEN[:5]}\x00{TOKEN[5:]}', 'a control character at position 6'),
    (f'{TOKEN[:5]} {TOKEN[5:]}', 'a space at position 6'),
    (f'{TOKEN[:5]}é{TOKEN[5:]}', 'a character outside printable ASCII at position 6'),
  ],
  ids=['inner_newline', 'nul', 'inner_space', 'non_ascii'],
)
def test_token_with_a_control_character_is_refused_without_printing_it(value, what):
  with pytest.raises(SecretError) as raised:
    read_token({'VPC_FLOW_PEERS_TOKEN': value}, 'VPC_FLOW_PEERS_TOKEN')
  message = str(raised.value)
  assert what in message and '$VPC_FLOW_PEERS_TOKEN' in message
  for part in (TOKEN[:5], TOKEN[5:]):
    assert part not in message


@pytest.mark.parametrize(
  'template',
  [
    'https://user:pa/ss@example.com/c/{bucket_time}',
    'https://user:pa?ss@example.com/c/{bucket_time}',
    'https://user:pa#ss@example.com/c/{bucket_time}',
    'https://user:12/ss@example.com/c/{bucket_time}',  # host:port-looking, then the real host
    'https://us@er:pass@example.com/c/{bucket_time}x@y',
    'https://example.com:80x/c/{bucket_time}',
  ],
  ids=[
    'slash_in_password',
    'question_mark_in_password',
    'hash_in_password',
    'digits_then_slash_in_password',
    'at_after_the_host',
    'bad_port',
  ],
)
def test_url_whose_authority_does_not_parse_cleanly_is_refused(template):
  with pytest.raises(SecretError) as raised:
    check_endpoint(template, None)
  for secret in ('pa/ss', 'pa?ss', 'pa#ss', '12/ss', 'ss@'):
    assert secret not in str(raised.value)


@pytest.mark.parametrize(
  'template',
  [
    'https://user:p%2Fa%3Fs%23s%40@example.com/c/{bucket_time}',
    'https://[2001:db8::1]:8443/c/{bucket_time}',
    'https://{account_id}.example.com/c/{bucket_time}',
    'http://127.0.0.1:8080/c/{bucket_time}?token=abc&region=eu',
  ],
  ids=['percent_encoded_password', 'ipv6_host', 'placeholder_in_host', 'query'],
)
def test_clean_urls_are_accepted(template):
  check_endpoint(template, None)


def test_user_info_with_a_token_is_refused_as_ambiguous():
  with pytest.raises(SecretError, match='ambiguous'):
    check_endpoint('https://user:pass@example.com/c/{bucket_time}', TOKEN)
  check_endpoint('https://user:pass@example.com/c/{bucket_time}', None)
  check_endpoint('https://example.com/c/{bucket_time}', TOKEN)


def test_user_info_is_read_and_removed_by_position():
  url = 'https://us%40er:p%2Fss:w@example.com:8443/c/1'
  assert url_user_info(url) == ('us@er', 'p/ss:w')
  assert without_user_info(url) == 'https://example.com:8443/c/1'
  assert url_user_info('https://example.com/c/1') is None


@pytest.mark.parametrize(
  'url, redacted',
  [
    (
      'https://user:pa55@example.com/c/1?token=abc123&region=eu&code=42&pwd=x',
      'https://***@example.com/c/1?token=***&region=eu&code=***&pwd=***',
    ),
    ('https://a:b:c@d@example.com/c/1', 'https://***@example.com/c/1'),
    (
      'https://example.com/c/1?sig=a%2Fb&format=json&v=2#frag',
      'https://example.com/c/1?sig=***&format=json&v=2#***',
    ),
    ('https://example.com/c/1', 'https://example.com/c/1'),
  ],
  ids=[
    'user_info_and_unlisted_query_names',
    'last_at_of_the_authority',
    'fragment_and_harmless_names',
    'nothing_to_redact',
  ],
)
def test_redact_url_by_position(url, redacted):
  assert redact_url(url) == redacted


def test_redact_text_redacts_query_values_in_messages():
  text = (
    "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
    '/c/1?pwd=hunter2&region=eu&code=4242 (Caused by ...)'
  )
  assert redact_text(text) == (
    "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
    '/c/1?pwd=***&region=eu&code=*** (Caused by ...)'
  )


def test_every_form_of_the_token_is_scrubbed():
  token = 'tok"with\\odd/chars+=é'
  secrets = Secrets(token)
  forms = [
    token,
    repr(token),
    repr(token.encode()),
    json.dumps(token),
    urllib.parse.quote(token, safe=''),
    urllib.parse.quote_plus(token),
    base64.b64encode(token.encode()).decode(),
    repr({'Authorization': f'Bearer {token}'}),
  ]
  for form in forms:
    scrubbed = secrets.scrub(f'error: {form} end')
    for secret_form in forms_of(token):
      assert secret_form not in scrubbed, (form, scrubbed)
    assert scrubbed.startswith('error: ') and scrubbed.endswith(' end')


def test_every_form_of_a_url_password_is_scrubbed():
  template = 'https://svc:p%40ss%2Fw0rd@example.com/c/{bucket_time}?api_key=k3y-s3cr3t&region=eu'
  secrets = Secrets(None, [template])
  basic = base64.b64encode(b'svc:p@ss/w0rd').decode()
  for text in (
    f'Authorization: Basic {basic}',
    'p@ss/w0rd',
    'p%40ss%2Fw0rd',
    repr('p@ss/w0rd'),
    'svc:p%40ss%2Fw0rd@',
    'k3y-s3cr3t',
    urllib.parse.quote('k3y-s3cr3t'),
    'got ?api_key=anything&region=eu',
  ):
    scrubbed = secrets.scrub(text)
    for secret in ('p@ss/w0rd', 'p%40ss%2Fw0rd', basic, 'k3y-s3cr3t', 'anything'):
      assert secret not in scrubbed, (text, scrubbed)
  assert secrets.scrub('region=eu') == 'region=eu'
