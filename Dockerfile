# PGPS for nnU-Net v2.8: CUDA image with a `reproduce` entry point (see docker/entrypoint.sh).
# CUDA comes from the pinned PyPI torch wheel (CUDA 13.0 runtime, cuDNN, NCCL as nvidia-* wheels), so any Debian
# bookworm base works; CI builds from a debootstrapped local/debian:bookworm (no registry needed):
#   DOCKER_BUILDKIT=1 docker build --network host --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg BASE_IMAGE=local/debian:bookworm -t pgps:latest .      (or simply: pgps docker build)
# Layers go slow-to-fast: system packages, the hash-checked lock (~6 GB, pip cache mount), then the project source.
ARG BASE_IMAGE=debian:bookworm-slim

# --- system: Debian bookworm's python3 is CPython 3.11, the version the lock is for. Package versions follow the
# base image's snapshot (a Debian stable point release), so they are not pinned one by one. git: a workspace that
# is a git repository gets DVC with git (dvc exp, dvc params/metrics diff against commits).
FROM ${BASE_IMAGE} AS system
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
 && useradd --uid 1000 --create-home --shell /bin/bash pgps \
 && install -d -o pgps -g pgps /workspace

FROM system
# Exactly requirements.lock, every file checked against its sha256 (as `make setup` installs it), and no project
# source yet: a code change does not reinstall torch, and only a new lock invalidates this ~6 GB layer. Bytecode as
# `make setup` writes it: every module but the packages' own test suites (~20 % of the source; pip compiled them
# too), on all cores (pip's compile is one); the user the image runs as cannot write .pyc into /opt/venv later.
# pip_ca: optional build secret with a CA bundle for TLS-intercepting proxies; it never lands in a layer.
# PIP_NO_CACHE_DIR=1 (pgps docker build --no-pip-cache): the cache mount stays empty, for one-off builds on a small
# disk (CI); unset, the wheels (~3 GB) stay in the builder's cache for the next lock change.
ARG PIP_NO_CACHE_DIR
COPY requirements.lock /tmp/pgps-deps/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --disable-pip-version-check pip==24.3.1 \
 && /opt/venv/bin/pip install --disable-pip-version-check --no-compile \
      --require-hashes -r /tmp/pgps-deps/requirements.lock \
 && /opt/venv/bin/python -m compileall -q -j 0 -x '/tests?/|/torch/testing/_internal/py312_' /opt/venv/lib >/dev/null \
 && rm -rf /tmp/pgps-deps

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    DVC_NO_ANALYTICS=1 \
    HOME=/home/pgps \
    PGPS_DATA=/workspace/data \
    nnUNet_raw=/workspace/data/nnUNet_raw \
    nnUNet_preprocessed=/workspace/data/nnUNet_preprocessed \
    nnUNet_results=/workspace/data/nnUNet_results \
    nnUNet_extTrainer=/opt/venv/lib/python3.11/site-packages/pgps/trainers \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# The project itself (no dependency resolution: everything is installed above) and the pipeline files that
# `reproduce` copies into the workspace (docker/pipeline_files.py: copied where absent, never overwritten).
COPY docker/entrypoint.sh /usr/local/bin/pgps-entrypoint
COPY . /opt/pgps/
RUN /opt/venv/bin/pip install --disable-pip-version-check --no-deps --no-build-isolation --no-cache-dir /opt/pgps \
 && rm -rf /opt/pgps/build /opt/pgps/src/*.egg-info \
 && python -c 'import pgps.cli'

# Build metadata last: a new revision must not invalidate the layers above (ARGs feed every later RUN).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="pgps" \
      org.opencontainers.image.description="Progressive Growing of Patch Size (PGPS) for nnU-Net v2.8: trainers, DVC pipeline, reproduce entry point" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

USER 1000:1000
WORKDIR /workspace
VOLUME ["/workspace"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pgps-entrypoint"]
CMD ["help"]
