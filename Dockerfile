# syntax=docker/dockerfile:1
# Two images from one file: `worker` (the default target: NumPy scoring, no TensorFlow) and
# `trainer` (the worker's runtime plus kafka-anomaly[train]: TensorFlow, pandas, matplotlib...).
#   docker build --target trainer -t kafka-anomaly-trainer .
#   docker build --target worker -t kafka-anomaly-worker .
#   docker run --rm -v models:/models kafka-anomaly-trainer anomaly-trainer fit builtin:sensors --model-dir /models
#   docker run --rm -v models:/models -e ANOMALY_BOOTSTRAP_SERVERS=kafka:9092 ... kafka-anomaly-worker
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: self-contained venvs
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the distribution is built from (see .dockerignore): a test or doc change does not
# invalidate the dependency layers.
COPY pyproject.toml README.md ./
COPY anomaly_contract/ anomaly_contract/
COPY trainer/ trainer/
COPY worker/ worker/
COPY deploy/tools/image-install.sh /usr/local/bin/image-install.sh

FROM build AS build-worker
RUN image-install.sh /src /opt/venv

FROM build AS build-trainer
RUN image-install.sh /src /opt/venv train

# ---------------------------------------------------------------- what both runtimes share
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kafka-anomaly" \
      org.opencontainers.image.description="Streaming anomaly detection for Kafka with Keras autoencoders" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 anomaly \
    && useradd --system --uid 10001 --gid anomaly --home-dir /home/anomaly --create-home \
       --shell /usr/sbin/nologin anomaly \
    && install -d -o anomaly -g anomaly /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ANOMALY_MODEL_DIR=/models
WORKDIR /home/anomaly
VOLUME ["/models"]

# ---------------------------------------------------------------- trainer: fit and publish
FROM runtime AS trainer
COPY --from=build-trainer /opt/venv /opt/venv
ENV TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
# A batch job: it serves nothing, so there is nothing to check.
HEALTHCHECK NONE
CMD ["anomaly-trainer", "--help"]

# ---------------------------------------------------------------- worker (the default target)
FROM runtime AS worker
COPY --from=build-worker /opt/venv /opt/venv
ENV ANOMALY_METRICS_PORT=8000
USER 10001:10001
EXPOSE 8000
# Liveness only (the loop is alive); readiness (/readyz) is for orchestrators that route traffic.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ANOMALY_METRICS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
CMD ["anomaly-worker"]
