# One image for the five ToM services. docker-compose.yml runs it five times, one container per
# service, each with its own command (python -m services.<role> ...); see docs/deployment.md.
#
#   make image          build the wheels on the host (.wheels/), then this image as
#                       tom-node:latest; the build itself needs no network
#
# BASE is the Debian bookworm Python 3.11 the image runs on: the official python:3.11-slim, or,
# where no image registry is reachable, Debian bookworm made with debootstrap and loaded with
# `docker import` (deploy/ci-docker.sh base). Both have python3 3.11 and python3 -m venv.
#
# Layers, from the least to the most often changed: the user and /data; the dependencies'
# wheels (.wheels/deps, changed only when pyproject's dependencies change); the node's own
# wheel (.wheels/app, every source change). A source change rebuilds only the last layers.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    TOM_HOME=/data

# The services run as the unprivileged user tom, uid/gid 10001. A named volume mounted on /data
# (or /keys) starts as a copy of the image's directory: owned by 10001, mode 0700. An image that
# runs as another uid cannot read it: see docs/deployment.md ("Another image, another uid").
RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tom \
    && install -d -o tom -g tom -m 0700 /data /keys

# The dependencies, from wheels built on the host: no network, no compiler in the build.
COPY .wheels/deps/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# The node itself (shared, services, tom and the deploy files under /opt/venv/share/tom-node).
COPY .wheels/app/ /tmp/app/
RUN pip install --no-cache-dir --no-index --no-deps /tmp/app/*.whl && rm -rf /tmp/app

WORKDIR /data
USER tom

# 4433/udp: the transport's QUIC socket; 7100-7109: the bus (tcp:// endpoints of
# deploy/endpoints.compose.toml), reached over the compose network only.
EXPOSE 4433/udp 7100-7109

# docker-compose.yml gives each container its own command; alone the image prints the CLI usage.
CMD ["tom", "--help"]
