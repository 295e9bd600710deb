# syntax=docker/dockerfile:1
# The Discord bot. It talks to Discord and Redis and never trains, so it has no torch: a few hundred MB
# instead of the worker's many GB. Build from the repository root (docker/README.md).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LORATRAIN_GRIMOIRE=/data/grimoire \
    LORATRAIN_DATABASE=/data/db/loratrain.sqlite3

RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin loratrain \
    && install -d -o loratrain -g loratrain /data/grimoire /data/db

WORKDIR /app

# Dependencies before the code, so that a code change doesn't reinstall them.
COPY docker/requirements-bot.txt docker/
RUN pip install -r docker/requirements-bot.txt

COPY pyproject.toml README.md ./
COPY core core
COPY bot bot
COPY worker worker
COPY resources resources
# --no-deps: pyproject.toml also lists the trainer's libraries (torch and co.), which the bot never loads.
# Editable, because the code finds its reference files as resources/ beside core/ (core/resources.py).
# Compiled here, because the code is read-only to the loratrain user.
RUN pip install --no-deps -e . && python -m compileall -q core bot worker

# The grimoire's starting files: Docker copies them into the grimoire volume when it is first created.
COPY --chown=loratrain:loratrain grimoire/eye.md grimoire/studio.md /data/grimoire/

# Numeric, so that a runtime (Kubernetes runAsNonRoot, too) can tell it is not root: 1000 is loratrain.
USER 1000:1000
# Healthy while the bot is connected to Discord and relays the workers' events (its heartbeat).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 CMD ["loratrain", "bot", "--check"]
CMD ["loratrain", "bot"]
