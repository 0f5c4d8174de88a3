# syntax=docker/dockerfile:1
#
# mqcast service image: `docker build -t mqcast .`, then `docker run mqcast serve --help`.
#
# Two stages: the builder installs mqcast and its dependencies into a virtual environment; the
# runtime stage copies only that environment onto a slim Python, without pip caches or build files.
#
# GPU: torch comes from PyPI, whose default Linux x86_64 wheel is the CUDA build; it brings the
# CUDA runtime libraries as nvidia-* wheels, so the base image needs no CUDA toolkit. The host needs
# only the NVIDIA driver and the NVIDIA Container Toolkit (`docker run --gpus all ...`). Without a
# GPU the same image runs on the CPU (`--device auto`). For a much smaller CPU-only image, build with
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t mqcast:cpu .

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Empty: torch from PyPI (CUDA build). A PyTorch index URL: torch from there (e.g. the CPU build).
ARG TORCH_INDEX_URL=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the C extensions of the publishing hot path (stream/_messages.c, the forecast
# messages' text; stream/_records.c, their Kafka record framing); only this stage has it, the
# runtime stage gets the built modules.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, read from pyproject.toml, so editing the code does not reinstall torch.
COPY pyproject.toml ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The package itself: a regular (not editable) install of stream, model and state, with the C
# extensions (setup.py; the import fails the build if one was not compiled). README.md is
# the project's long description, so the build needs it. The bundled data set is not copied: serve
# does not read it, and the compose file mounts ../data for the train and replay jobs.
COPY README.md ./
COPY setup.py ./
COPY stream ./stream
COPY model ./model
COPY state ./state
RUN pip install --no-deps . \
    && python -c "import stream._messages, stream._records" \
    && mqcast --help > /dev/null

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mqcast" \
      org.opencontainers.image.description="Streaming multi-horizon quantile demand forecaster on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
ARG UID=10001
RUN groupadd --system --gid ${UID} mqcast \
    && useradd --system --uid ${UID} --gid ${UID} --create-home --home-dir /home/mqcast mqcast \
    && mkdir -p /models \
    && chown mqcast:mqcast /models

COPY --from=builder /opt/venv /opt/venv

# MQCAST_METRICS_HOST: the service binds 127.0.0.1 by default, which nothing outside the container
# could reach; 0.0.0.0 lets Prometheus and the orchestrator's probes in.
# MQCAST_MODEL: where `mqcast train --out /models/model.pt` (compose) or a volume (k8s) puts it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MQCAST_METRICS_HOST=0.0.0.0 \
    MQCAST_METRICS_PORT=9464 \
    MQCAST_MODEL=/models/model.pt

USER mqcast
WORKDIR /home/mqcast

EXPOSE 9464

# Liveness: /healthz fails when the consumer loop has stalled (--liveness-stall). slim has no curl,
# so Python asks; urlopen raises on a refused connection or a non-2xx answer, which exits non-zero.
# The start period covers loading the model onto the GPU and restoring partition state.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MQCAST_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["mqcast"]
CMD ["serve"]
