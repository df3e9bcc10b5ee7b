"""Self-signed certificates for TLS tests, made with `cryptography` (a dependency
already installed) at test time: nothing secret is kept in the repository.
Also a pytest plugin (`pytest_plugins = ['tests.tls_certs']` in a TLS test
module) with the fixtures those modules share: two certificates, and an
endpoint on 127.0.0.1 serving the first."""

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import NamedTuple, Tuple

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Certificate(NamedTuple):
  cert: Path  # PEM, also the CA bundle that trusts it (self-signed)
  key: Path

  def server_context(self) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(self.cert, self.key)
    return context


def self_signed(directory: Path, name: str = 'endpoint') -> Certificate:
  """A self-signed certificate for 127.0.0.1 and localhost, valid for a day."""
  key = ec.generate_private_key(ec.SECP256R1())
  subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f'vpc-flow-peers test {name}')])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (
    x509.CertificateBuilder()
    .subject_name(subject)
    .issuer_name(subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(
      x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address('127.0.0.1')), x509.DNSName('localhost')]
      ),
      critical=False,
    )
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
  )
  directory.mkdir(parents=True, exist_ok=True)
  cert_path, key_path = directory / f'{name}.pem', directory / f'{name}-key.pem'
  cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  key_path.write_bytes(
    key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
  )
  return Certificate(cert_path, key_path)


@pytest.fixture(scope='module')
def certificates(tmp_path_factory) -> Tuple[Certificate, Certificate]:
  """The endpoint's certificate, and another CA's (which does not trust it)."""
  directory = tmp_path_factory.mktemp('tls')
  return self_signed(directory, 'endpoint'), self_signed(directory, 'other-ca')


@pytest.fixture
def tls_endpoint(certificates, start_receiver):
  """A tests.endpoint.ScriptedEndpoint serving TLS with the endpoint's certificate."""
  return start_receiver(tls=certificates[0].server_context())
