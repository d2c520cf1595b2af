# One image for the five ToM services. docker-compose.yml runs it five times, one container per
# service, each with its own command (python -m services.<role> ...); see docs/deployment.md.
#
#   docker build -t tom-node:latest .
#
# The image holds the installed package (shared, services, tom) and the checkout it was built
# from (deploy/ included) under /opt/tom. The node's data directory is /data (TOM_HOME): the
# identity key, node.toml and anything a service keeps; compose mounts a volume there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOM_HOME=/data

WORKDIR /opt/tom
COPY . .
# pyzmq, cryptography and aioquic ship manylinux wheels for CPython 3.11: no compiler needed.
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info \
    && useradd --system --user-group --uid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tom \
    && install -d -o tom -g tom -m 0700 /data /keys

# A named volume mounted on /data starts as a copy of this directory: owned by tom, mode 0700.
USER tom

# 4433/udp: the transport's QUIC socket; 7100-7109: the bus (tcp:// endpoints of
# deploy/endpoints.compose.toml), reached over the compose network only.
EXPOSE 4433/udp 7100-7109

# docker-compose.yml gives each container its own command; alone the image prints the CLI usage.
CMD ["tom", "--help"]
