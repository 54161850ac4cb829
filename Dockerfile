# catsdogs serving image: TorchServe 0.12 (Java 17 frontend + Python worker) with the model archive baked in.
#   make archive && make docker-build      (tags: <git sha> and model-<model version>, see mk/infra.mk)
#   docker run --rm -p 127.0.0.1:8080:8080 catsdogs-serving:<tag>
# Layers go from least to most often changed: OS packages, Python deps, serving code/config, model.
# Lint: `make validate-docker` (hadolint); every ignored rule is explained where it is ignored.

# No `# syntax=` line: it makes BuildKit pull a frontend image; the built-in Dockerfile frontend suffices.
# Build arguments (defaults = the public sources; `make docker-test` overrides them where those are not
# reachable, see scripts/docker_test.py):
#   BASE_IMAGE           any Debian bookworm image with python 3.11 and pip first on PATH
#   TORCH_INDEX_URL      pip index for torch/torchvision
#   PIP_EXTRA_INDEX_URL  extra pip indexes for every pip install (pip reads it from the environment)
# Secret `ca-bundle` (optional, `--secret id=ca-bundle,src=...`): a CA bundle pip trusts, for a package index
# behind a TLS-intercepting proxy. Mounted only while pip runs, never stored in a layer.
# bookworm, not the default trixie: Debian 13 no longer ships openjdk-17 and TorchServe 0.12 needs Java 17.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Java runtime for the TorchServe frontend (the man1 dir works around the JRE's postinst on slim images).
# DL3008 (pin apt versions) ignored: Debian's archive drops superseded versions, so an exact pin breaks the
# build at the next JRE security update; the base image tag fixes the Debian release (and Java 17) instead.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# PyTorch from the CPU wheel index: the same torch/torchvision versions as requirements.txt, without
# the CUDA libraries (several GB) that the default PyPI wheels pull in. The image serves on CPU.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_INDEX_URL=
RUN --mount=type=secret,id=ca-bundle \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1

COPY docker/requirements-serving.txt /tmp/requirements-serving.txt
RUN --mount=type=secret,id=ca-bundle \
    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install --no-cache-dir -r /tmp/requirements-serving.txt && rm /tmp/requirements-serving.txt

# Non-root runtime user; TorchServe's run dir (keys, tmp) and logs live in its home.
RUN groupadd --gid 1000 model-server \
    && useradd --create-home --home-dir /home/model-server --uid 1000 --gid 1000 model-server \
    && mkdir -p /home/model-server/model-store /home/model-server/run /home/model-server/logs \
    && chown -R model-server:model-server /home/model-server

# Serving code: `python -m serving ready` (HEALTHCHECK) and the entry point. config.properties is the
# repo's reviewed file, unchanged; docker/entrypoint.py derives the container's copy from it.
WORKDIR /app
COPY config.properties /app/config.properties
COPY catsdogs/ /app/catsdogs/
COPY serving/ /app/serving/
COPY docker/entrypoint.py /app/docker/entrypoint.py

# The model: changes with every training run, so it is the last layer. MODEL_NAME is params.yaml
# serve.model_name (make docker-build passes it); the archive is model-store/<MODEL_NAME>.mar.
ARG MODEL_NAME
COPY --chown=model-server:model-server model-store/${MODEL_NAME}.mar /home/model-server/model-store/${MODEL_NAME}.mar

ENV PYTHONPATH=/app \
    TS_CONFIG=/app/config.properties \
    TS_RUN_DIR=/home/model-server/run \
    TS_MODEL_STORE=/home/model-server/model-store \
    LOG_LOCATION=/home/model-server/logs \
    TS_BIND_ADDRESS=0.0.0.0 \
    MODEL_NAME=${MODEL_NAME}

ARG GIT_COMMIT=unknown
ARG MODEL_VERSION=unknown
LABEL org.opencontainers.image.title="catsdogs-serving" \
      org.opencontainers.image.description="TorchServe 0.12 serving the catsdogs cats-vs-dogs classifier" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      ai.catsdogs.model.version="${MODEL_VERSION}"

# Numeric, so Kubernetes' runAsNonRoot can verify it (uid 1000 = model-server).
USER 1000:1000
# 8080 inference, 8081 management, 8082 metrics. Publish 8081/8082 on 127.0.0.1 (or not at all).
EXPOSE 8080 8081 8082

# Healthy = /ping answers Healthy and the model has a READY worker (describe-model with the management key).
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=4 \
    CMD ["sh", "-c", "python -m serving ready --quiet --run-dir \"$TS_RUN_DIR\" --model \"$MODEL_NAME\""]

ENTRYPOINT ["python", "/app/docker/entrypoint.py"]
