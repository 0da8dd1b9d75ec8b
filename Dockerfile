# agentstore worker image. `docker compose up --scale worker=4` runs several of these; the
# same image runs the demo and the CLI (`agentstore ...`). No secret is baked in: every
# setting comes from the environment at run time (see .env.example).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid: Celery refuses to run as root with pickle enabled, and a worker
# has no reason to own anything in the image. Not `--system`: 10001 is above SYS_UID_MAX,
# and useradd warns when a system account gets a uid outside the system range.
RUN groupadd --gid 10001 agentstore \
    && useradd --uid 10001 --gid agentstore --no-create-home --no-log-init \
        --home-dir /nonexistent --shell /usr/sbin/nologin agentstore

WORKDIR /app

# Dependencies in their own layer, keyed on pyproject.toml only: editing the code does not
# reinstall them. They are read from [project].dependencies, so there is one list to maintain.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code, package by package. README.md is left out on purpose: setuptools only warns
# without it, and a docs edit should not rebuild this layer. `--no-deps`: all is installed above.
COPY storage ./storage
COPY broker ./broker
COPY producer ./producer
COPY worker ./worker
COPY agentstore_cli ./agentstore_cli
COPY agentstore_langgraph ./agentstore_langgraph
# setuptools leaves its build tree and egg-info in the source directory: not in the image.
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

USER 10001:10001

# Store and broker reachable, schema current; `--no-workers` because a container checks
# itself, not the whole fleet (a fresh worker would otherwise be unhealthy until it is up).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["agentstore", "health", "--no-workers"]

CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
