# One image for the whole system: `tcc migrate` (the migration job), `tcc serve` (the
# coordinator) and the sample participants (`--entrypoint python3`, `-m participants.order`).
#
#   docker build -t tcc-coordinator .
#   docker run --rm tcc-coordinator migrate           # with TCC_DATABASE_URL set
#   docker run -p 36789:36789 tcc-coordinator         # tcc serve
#
# The base is a build argument: any Debian-like image with python3 (>= 3.11) and its venv
# module, e.g. the official slim image (default) or Debian with `python3 python3-venv`.
# Installs take only wheels, so neither stage needs a compiler.
#
# Layers, from the most stable: the build tool (requirements-build.lock), the locked
# dependencies (requirements.lock), then the project. A source change rebuilds the last two
# steps only; the package downloads are also kept in a BuildKit cache mount. docs/deploy.md
# explains how a CI that starts from nothing keeps the dependency layer cached.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
# The runtime's user, made here: the runtime stage then has no RUN step at all, so nothing a
# build mounts for its RUN steps (a CA bundle, pip settings) can leave a trace in it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/tcc \
        --shell /usr/sbin/nologin tcc
# The build tool (hatchling) in a venv of its own; the runtime venv gets no pip at all. The
# runtime venv finds the project in /opt/app (a .pth file), installed by the next stage.
COPY requirements-build.lock /tmp/requirements-build.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary=:all: \
        -r /tmp/requirements-build.lock \
    && python3 -m venv --without-pip /opt/tcc \
    && echo /opt/app > "$(/opt/tcc/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tcc-app.pth"
# The dependencies, from the lock file alone: this layer changes only with the lock.
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip --python /opt/tcc/bin/python install --require-hashes \
        --only-binary=:all: -r /tmp/requirements.lock

FROM deps AS app
# The project itself, without dependencies (they are all in /opt/tcc already).
COPY pyproject.toml README.md /src/
COPY migrations /src/migrations
COPY coordinator /src/coordinator
COPY participants /src/participants
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheel /src \
    && /opt/build/bin/pip --python /opt/tcc/bin/python install --no-deps --no-index \
        --target /opt/app /tmp/wheel/*.whl

FROM ${BASE_IMAGE} AS runtime
# A user of its own (getpass needs a passwd entry: the CLI names who acted).
COPY --from=deps /etc/passwd /etc/group /etc/
COPY --from=deps --chown=10001:10001 /home/tcc /home/tcc
# Two layers: the dependencies (unchanged by a source change, so cached) and the project.
COPY --from=deps /opt/tcc /opt/tcc
COPY --from=app /opt/app /opt/app
ENV PATH=/opt/app/bin:/opt/tcc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TCC_HOST=0.0.0.0 \
    TCC_LOG_FORMAT=json
USER tcc
WORKDIR /home/tcc
EXPOSE 36789
# Python's own urllib: no curl in the image. Any answer but 2xx (or none) is unhealthy.
# With TCC_PROTECT_HEALTH=true /readyz wants a key: use your orchestrator's probe instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TCC_PORT', '36789'), timeout=4)"]
# tcc serve finishes in-flight requests and rounds, then releases its leases, on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tcc"]
CMD ["serve"]
