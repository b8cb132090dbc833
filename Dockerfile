# syntax=docker/dockerfile:1
#
# The CanTelemetry Azure IoT Edge module (modules/CanTelemetry/module.json). One Dockerfile for
# every platform there (amd64, arm64v8, arm32v7): nothing in it depends on the architecture, so
#   docker buildx build --platform linux/arm64 -t <registry>/can-telemetry:0.1.0-arm64v8 .
# builds for a vehicle computer on any machine. See docs/azure-iot-edge.md.

# -- builder: the project's wheel and the wheels of every dependency ----------------------------
FROM python:3.11-slim-bookworm AS builder
# Compilers live here only, for a dependency without a wheel for the target architecture
# (msgpack, zstandard and bitstruct publish amd64 and arm64 wheels; on arm32v7 some are built).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The project's wheel and those of the in-vehicle stack (the `edge` extra: python-can, cantools,
# azure-iot-device, ...; pyproject.toml), exactly what the car's `pip install
# 'can-telemetry[edge]'` installs, into a wheelhouse. The cloud's `lake` extra stays out.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[edge]'

# -- runtime: Python, the wheels, nothing else ---------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CAN_TELEMETRY_DATA_DIR=/var/lib/can-telemetry \
    CAN_TELEMETRY_CACHE_DIR=/var/lib/can-telemetry/cache \
    CAN_TELEMETRY_METRICS_PORT=9600
# A fixed, unprivileged user (as the Azure IoT Edge Python module template does). Reading
# SocketCAN needs no privilege; the host brings can0 up. The spool folder is bind-mounted from
# the host (deployment.template.json) and must belong to UID 1000 there too.
RUN groupadd --gid 1000 moduleuser \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin moduleuser \
    && mkdir -p /var/lib/can-telemetry \
    && chown 1000:1000 /var/lib/can-telemetry
# Install from the builder's wheelhouse only: no index, no source builds, no compiler needed.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --only-binary=:all: --find-links=/wheels \
        'can-telemetry[edge]'
USER 1000:1000
WORKDIR /var/lib/can-telemetry
EXPOSE 9600
# /healthz answers 503 when the pipeline is stuck (see edge/metrics.py); edgeAgent restarts an
# unhealthy module (restartPolicy "always").
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CAN_TELEMETRY_METRICS_PORT', '9600'), timeout=4)"]
ENTRYPOINT ["python", "-m", "edge.iotedge.module"]
