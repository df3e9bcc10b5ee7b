"""vpc-flow-peers: distinct peers per IP address per window from AWS VPC Flow Logs,
as an Apache Beam pipeline."""

import setuptools

# apache-beam is pinned: the Flink runner needs a job-server jar of exactly this
# Beam version built for Flink 1.19, and Maven Central here serves the Beam Flink
# runner artifacts for 2.70.0 (see deploy/flink/).
BEAM_VERSION = '2.70.0'

setuptools.setup(
  name='vpc-flow-peers',
  version='0.1.0',
  description=__doc__.strip().splitlines()[0],
  packages=setuptools.find_packages(include=['pipeline', 'pipeline.*', 'transforms', 'transforms.*']),
  python_requires='>=3.10',
  install_requires=[
    f'apache-beam=={BEAM_VERSION}',
    'boto3>=1.34',
    'requests>=2.31',
    # 3x faster JSON parsing of CloudWatch Logs messages (bench/ measures it).
    'orjson>=3.9',
    # ISA-L's inflate: gunzip of files and records about twice zlib's speed (bench/).
    'isal>=1.6',
    # SIMD base64: a Kinesis record's data decoded >10x faster than by the standard library.
    'pybase64>=1.3',
  ],
  # The decoding and counting fast paths in C (transforms/_flowscan.c,
  # transforms/counting/_scan.c): subscription messages to lines about 2.5
  # times, lines to peer pairs about 6 times faster than the same work in
  # Python (bench/ measures the whole pipeline). Optional: without a C
  # compiler the package still installs and gives the same answers in
  # Python, slower (with a warning when a pipeline starts). The images build
  # them in a stage with a compiler.
  # Both include transforms/_ascii_text.h (what they share): a change to it
  # rebuilds both.
  ext_modules=[
    setuptools.Extension(
      'transforms._flowscan',
      ['transforms/_flowscan.c'],
      depends=['transforms/_ascii_text.h'],
      optional=True,
      extra_compile_args=['-O3'],
    ),
    setuptools.Extension(
      'transforms.counting._scan',
      ['transforms/counting/_scan.c'],
      depends=['transforms/_ascii_text.h'],
      optional=True,
      extra_compile_args=['-O3'],
    ),
  ],
  extras_require={
    'test': ['pytest>=8', 'hypothesis>=6.100', 'moto[server]>=5.0'],
  },
)
