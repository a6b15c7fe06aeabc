# syntax=docker/dockerfile:1
# One image, two commands: `anomaly-worker` (the default) and `anomaly-trainer`.
#   docker build -t kafka-anomaly .
#   docker run --rm -v models:/models kafka-anomaly anomaly-trainer fit builtin:sensors --model-dir /models
#   docker run --rm -v models:/models -e ANOMALY_BOOTSTRAP_SERVERS=kafka:9092 ... kafka-anomaly
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the distribution is built from (see .dockerignore): a test or doc change does not
# invalidate the dependency layer.
COPY pyproject.toml README.md ./
COPY anomaly_contract/ anomaly_contract/
COPY trainer/ trainer/
COPY worker/ worker/
COPY deploy/tools/image-install.sh /usr/local/bin/image-install.sh
RUN image-install.sh /src /opt/venv

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kafka-anomaly" \
      org.opencontainers.image.description="Streaming anomaly detection for Kafka with Keras autoencoders" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 anomaly \
    && useradd --system --uid 10001 --gid anomaly --home-dir /home/anomaly --create-home \
       --shell /usr/sbin/nologin anomaly \
    && install -d -o anomaly -g anomaly /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    ANOMALY_MODEL_DIR=/models \
    ANOMALY_METRICS_PORT=8000
USER 10001:10001
WORKDIR /home/anomaly
VOLUME ["/models"]
EXPOSE 8000
# Liveness only (the loop is alive); readiness (/readyz) is for orchestrators that route traffic.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ANOMALY_METRICS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
CMD ["anomaly-worker"]
