# Submits vpc-flow-peers to a Flink session cluster (deploy/k8s/submit-job.yaml):
# the project installed as in worker.Dockerfile (same Python, same Beam), a JRE,
# and the Beam Flink job-server jar, built at image build time by
# deploy/flink/build-job-server.sh and put where pipeline/runners.py looks for it
# ($VFP_CACHE). Build from the repository root:
#   docker build -f deploy/docker/submitter.Dockerfile -t registry.example.com/vpc-flow-peers/submitter:0.1.0 .

# --- the job-server jar (fetched, or built with Maven when not served; then patched) ---
FROM maven:3.9-eclipse-temurin-17 AS job-server
RUN apt-get update && apt-get install -y --no-install-recommends curl patch unzip \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/flink /src/deploy/flink
RUN VFP_CACHE=/vfp-cache /src/deploy/flink/build-job-server.sh \
 && rm -rf /vfp-cache/m2-repository /vfp-cache/job-server-build /vfp-cache/job-server-patch

# --- the project's wheel, its C fast path compiled (the slim image has no compiler);
# the build fails if the extension did not compile (setup.py marks it optional) ---
FROM python:3.11 AS wheel
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY setup.py README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -c "import glob, zipfile; names = zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).namelist(); assert all(any(n.startswith(p) and n.endswith('.so') for n in names) for p in ('transforms/_flowscan.', 'transforms/counting/_scan.')), 'no C fast path in the wheel'"

# --- the submitter ---
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VFP_CACHE=/opt/vfp-cache
# Uber-jar submission (what pipeline/runners.py sets up) is pure Python; the JRE
# is for running the jar as a job server instead (--job_endpoint set-ups) and
# for build-job-server.sh's check of the jar.
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
COPY --from=job-server /vfp-cache/beam-runners-flink-1.19-job-server-2.70.0-vfp1.jar /opt/vfp-cache/
WORKDIR /opt/vpc-flow-peers
COPY --from=wheel /wheels /tmp/wheels
RUN pip install "apache-beam==2.70.0" /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import transforms._flowscan, transforms.counting._scan" \
 && useradd --uid 9999 --create-home beam
USER beam

ENTRYPOINT ["python", "-m", "pipeline"]
