# syntax=docker/dockerfile:1
# The worker: one image for all three queues (compose chooses the queue). Build from the repository root
# with the optional trainers, e.g. `--build-arg INSTALL_KOHYA=1` (docker/README.md).
#
# CUDA and PyTorch must agree. pyproject.toml pins torch 2.13.0, which PyTorch builds for CUDA 12.6, 13.0
# and 13.2, not 12.8. CUDA 12.6 runs on the most drivers (560 or newer, 525 with CUDA's minor-version
# compatibility; 13.x needs 580), so this is the CUDA 12.6 image with the cu126 wheels. The wheels bring
# their own cuBLAS and cuDNN, so the small "base" flavour is enough: "cudnn-runtime" would add a second,
# unused copy of several GB.
FROM nvidia/cuda:12.6.3-base-ubuntu22.04

ARG INSTALL_KOHYA=0
ARG INSTALL_AI_TOOLKIT=0
ARG INSTALL_SIMPLETUNER=0
# Branches or tags of the trainers' repositories (empty: their default branch), and SimpleTuner's release.
ARG KOHYA_REF=
ARG AI_TOOLKIT_REF=
ARG SIMPLETUNER_VERSION=4.10.1
# Must equal pyproject.toml's pin (tests/test_docker.py checks), or installing loratrain replaces this torch.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG DEBIAN_FRONTEND=noninteractive

# Python comes from uv (python-build-standalone builds): Ubuntu 22.04's own python3 is 3.10.
# NVIDIA_DISABLE_REQUIRE: start even on a driver older than CUDA 12.6 wants, so that Gate 3 can say what
# to update in plain words instead of Docker refusing to start the container.
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LORATRAIN_GRIMOIRE=/data/grimoire \
    LORATRAIN_DATABASE=/data/db/loratrain.sqlite3 \
    HF_HOME=/data/models/huggingface \
    NVIDIA_DISABLE_REQUIRE=1

# ca-certificates: Python's TLS (Discord's CDN, Claude, the cloud providers) uses the system's roots.
# Ubuntu's packages are not pinned: the security updates of the release are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin loratrain \
    && install -d -o loratrain -g loratrain /data/grimoire /data/db /data/models /data/models/huggingface

# uv only builds the image (its binary is mounted, not copied); pip installs, as the trainers' READMEs do.
RUN --mount=from=ghcr.io/astral-sh/uv:0.13.8,source=/uv,target=/usr/local/bin/uv \
    uv venv --seed --python 3.11 /opt/venv

# torch first, from the CUDA 12.6 index: loratrain's `torch==2.13.0` is then already satisfied (by
# 2.13.0+cu126), and pip keeps it instead of fetching PyPI's build for CUDA 13.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"

WORKDIR /app

# loratrain's dependencies before its code, so that a code change doesn't reinstall them.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Each trainer gets its own virtual environment inside its folder (their READMEs' way: they pin their own
# libraries), which loratrain runs them with (core/training/launch.py), with the same CUDA 12.6 torch.
# SimpleTuner needs Python 3.12 or newer, so its environment has its own Python; a link to its package
# stands where a checkout would keep it, which is what Gate 3 looks for in LORATRAIN_SIMPLETUNER_DIR.
# Each folder belongs to loratrain (its contents don't): trainers write scratch files where they run.
# git is for the clones and for requirements that point at repositories; libGL and GLib are for OpenCV.
# The `cd`s: sd-scripts' requirements.txt installs the clone itself (`-e .`), relative to where pip runs.
# hadolint ignore=DL3003,DL3008
RUN --mount=from=ghcr.io/astral-sh/uv:0.13.8,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    if [ "$INSTALL_KOHYA$INSTALL_AI_TOOLKIT$INSTALL_SIMPLETUNER" = "000" ]; then exit 0; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends git libgl1 libglib2.0-0; \
    rm -rf /var/lib/apt/lists/*; \
    trainer() { \
        folder=$1 python=$2; shift 2; \
        uv venv --seed --python "$python" "$folder/venv"; \
        "$folder/venv/bin/pip" install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "$@"; \
        chown loratrain:loratrain "$folder"; \
    }; \
    if [ "$INSTALL_KOHYA" = 1 ]; then \
        git clone --depth 1 ${KOHYA_REF:+--branch "$KOHYA_REF"} https://github.com/kohya-ss/sd-scripts.git /opt/trainers/sd-scripts; \
        trainer /opt/trainers/sd-scripts 3.11 torchvision; \
        (cd /opt/trainers/sd-scripts && venv/bin/pip install -r requirements.txt); \
    fi; \
    if [ "$INSTALL_AI_TOOLKIT" = 1 ]; then \
        git clone --depth 1 ${AI_TOOLKIT_REF:+--branch "$AI_TOOLKIT_REF"} https://github.com/ostris/ai-toolkit.git /opt/trainers/ai-toolkit; \
        trainer /opt/trainers/ai-toolkit 3.11 torchvision; \
        (cd /opt/trainers/ai-toolkit && venv/bin/pip install -r requirements.txt); \
    fi; \
    if [ "$INSTALL_SIMPLETUNER" = 1 ]; then \
        mkdir -p /opt/trainers/simpletuner; \
        trainer /opt/trainers/simpletuner 3.12 torchvision torchaudio; \
        /opt/trainers/simpletuner/venv/bin/pip install "simpletuner[cuda]==$SIMPLETUNER_VERSION"; \
        ln -s venv/lib/python3.12/site-packages/simpletuner /opt/trainers/simpletuner/simpletuner; \
        test -d /opt/trainers/simpletuner/simpletuner; \
    fi
# Where Gate 3 and the launcher find them (core/environment/probe.py); unused when not installed.
ENV LORATRAIN_KOHYA_DIR=/opt/trainers/sd-scripts \
    LORATRAIN_AI_TOOLKIT_DIR=/opt/trainers/ai-toolkit \
    LORATRAIN_SIMPLETUNER_DIR=/opt/trainers/simpletuner

COPY core core
COPY bot bot
COPY worker worker
COPY resources resources
# Editable, because the code finds its reference files as resources/ beside core/ (core/resources.py).
# Compiled here, because the code is read-only to the loratrain user.
RUN pip install --no-cache-dir --no-deps -e . && python -m compileall -q core bot worker

# The grimoire's starting files: Docker copies them into the grimoire volume when it is first created.
COPY --chown=loratrain:loratrain grimoire/eye.md grimoire/studio.md /data/grimoire/

# Numeric, so that a runtime (Kubernetes runAsNonRoot, too) can tell it is not root: 1000 is loratrain.
USER 1000:1000
# Healthy while this worker's arq health record in Redis is fresh (it is rewritten every minute).
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["loratrain", "worker", "--check", "--queue", "gpu"]
CMD ["loratrain", "worker", "--queue", "gpu"]
