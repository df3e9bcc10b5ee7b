"""TLS through the command line, against a self-signed endpoint on 127.0.0.1,
with REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE set as these machines set them
(requests lets them replace a session's `verify`): the default rejects the
server, `--no_verify_tls` accepts it whatever the variables name, and
`--ca_bundle` wins over them (the poster's own TLS tests:
test_delivery_poster.py)."""

import pytest

from pipeline.cli import main
from tests.builders import flow_line
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_UNDELIVERED_WINDOW

pytest_plugins = ['tests.tls_certs']

BUCKET = 1700000400
DOCUMENT = {'10.0.0.1': 1, '10.0.0.2': 1}


def run(tls_endpoint, tmp_path, *flags):
  flows = tmp_path / 'flows.log'
  flows.write_text(flow_line('10.0.0.1', '10.0.0.2', BUCKET + 1) + '\n')
  return main(
    [
      f'--input={flows}',
      f'--endpoint={tls_endpoint.url()}',
      '--max_retry_seconds=2',
      f'--dead_letter_dir={tmp_path / "dead"}',
      *flags,
    ]
  )


def test_the_default_rejects_a_self_signed_endpoint(tls_endpoint, certificates, tmp_path, monkeypatch):
  """The variables name another CA (as on these machines, the system bundle):
  the server is rejected before any request, the window dead-lettered, exit 2."""
  monkeypatch.setenv('REQUESTS_CA_BUNDLE', str(certificates[1].cert))
  monkeypatch.setenv('CURL_CA_BUNDLE', str(certificates[1].cert))
  assert run(tls_endpoint, tmp_path) == 2
  assert tls_endpoint.requests == []
  [(_, letter)] = read_dead_letters(str(tmp_path / 'dead'), KIND_UNDELIVERED_WINDOW)
  assert (letter['bucket_time'], letter['last_status']) == (BUCKET, None)
  assert 'CERTIFICATE_VERIFY_FAILED' in letter['last_error']


@pytest.mark.parametrize('variable', ['REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'])
def test_no_verify_tls_accepts_it_though_the_environment_names_another_ca(
  tls_endpoint, certificates, tmp_path, monkeypatch, variable
):
  monkeypatch.setenv(variable, str(certificates[1].cert))
  assert run(tls_endpoint, tmp_path, '--no_verify_tls') == 0
  assert tls_endpoint.latest_by_path() == {f'/connection_sets/{BUCKET}': DOCUMENT}
  assert list(read_dead_letters(str(tmp_path / 'dead'), KIND_UNDELIVERED_WINDOW)) == []


def test_the_ca_bundle_flag_wins_over_the_machines_requests_ca_bundle(
  tls_endpoint, certificates, tmp_path, monkeypatch
):
  """With REQUESTS_CA_BUNDLE naming another bundle (as these machines set it):
  requests used to let the variable replace the session's verify, so
  --ca_bundle did not pin trust."""
  monkeypatch.setenv('REQUESTS_CA_BUNDLE', str(certificates[1].cert))
  monkeypatch.setenv('CURL_CA_BUNDLE', str(certificates[1].cert))
  assert run(tls_endpoint, tmp_path, f'--ca_bundle={certificates[0].cert}') == 0
  assert tls_endpoint.latest_by_path() == {f'/connection_sets/{BUCKET}': DOCUMENT}
