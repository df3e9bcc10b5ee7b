# The Beam Python SDK worker pool that runs beside each Flink TaskManager
# (deploy/k8s/flink-session-cluster.yaml, container beam-worker-pool): it starts
# the SDK harnesses that execute the pipeline's Python code, so it holds the
# project installed with exactly the Beam release of the submitter and the
# job-server jar. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t registry.example.com/vpc-flow-peers/worker:0.1.0 .
# (deploy/docker/build-images.sh builds both images with the right tags.)

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

# --- the worker pool ---
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/vpc-flow-peers
COPY --from=wheel /wheels /tmp/wheels
# apache-beam pinned again here so that a change of setup.py's pin without a
# rebuild of both images is caught by tests/test_deploy_manifests.py.
RUN pip install "apache-beam==2.70.0" /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import transforms._flowscan, transforms.counting._scan" \
 && useradd --uid 9999 --create-home beam
USER beam

EXPOSE 50000
ENTRYPOINT ["python", "-m", "pipeline.worker_pool"]
CMD ["--service_port=50000"]
