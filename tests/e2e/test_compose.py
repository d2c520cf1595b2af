"""The docker-compose deployment: docker-compose.yml, Dockerfile, deploy/endpoints.compose.toml.

The test machine has no docker engine, so the containers never run here. Instead:

* docker-compose itself validates the file (``docker-compose config -q``; Debian's 1.29);
* the normalized ``docker-compose config`` output is checked against the endpoints file: the
  five roles are services, each endpoint's host is its role's service, each service runs its
  own ``services.<role>`` module with the mounted endpoints file, and only crypto gets the
  identity volume;
* the compose endpoints are exercised outside docker: the same file with the hosts replaced by
  127.0.0.1 and the ports moved to free ones, the five services started from it as in the
  containers, each answering on its rpc endpoint and publishing on its events endpoint, the
  compose healthcheck passing while they run and failing once they stop, and every service
  exiting 0 within 2 s of SIGTERM (what ``docker-compose stop`` sends).

PyYAML is not a dependency; the output of ``docker-compose config`` is normalized block YAML
(PyYAML's own dump), which :func:`service_blocks` and :func:`entry` read well enough for these
checks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from shared import endpoints
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.testing.prereq import require_command
from shared.wire import BusTimeout, decode
from shared.wire.messages.sys import Heartbeat, Ping, PingReply

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENDPOINTS_FILE = ROOT / "deploy" / "endpoints.compose.toml"
MOUNTED_ENDPOINTS = "/etc/tom/endpoints.toml"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 2.0


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = require_command(
        "docker-compose",
        "validate docker-compose.yml (Debian/Ubuntu: "
        "apt-get install --no-install-recommends docker-compose)")
    return subprocess.run([exe, "-f", str(COMPOSE_FILE), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COMPOSE_PROJECT_NAME": "tom"})


def service_blocks(config: str) -> dict[str, list[str]]:
    """The lines of each service in ``docker-compose config`` output, by service name."""
    blocks: dict[str, list[str]] = {}
    in_services = False
    current: list[str] | None = None
    for line in config.splitlines():
        if line and not line.startswith(" "):
            in_services = line == "services:"
            current = None
        elif in_services and re.fullmatch(r"  [^ -][^:]*:", line):
            current = blocks.setdefault(line.strip().rstrip(":"), [])
        elif current is not None:
            current.append(line)
    return blocks


def entry(block: list[str], key: str) -> list[str]:
    """The value of a service's ``key``: a list's items, or one item (a scalar or a mapping),
    with the lines of multi-line items joined by spaces; [] if the key is absent."""
    items: list[str] = []
    found = False
    for line in block:
        if not found:
            if line.startswith(f"    {key}:"):
                found = True
                rest = line.split(":", 1)[1].strip()
                if rest:
                    items.append(rest)
            continue
        if re.match(r"    [^ -]", line):
            break  # the next key of the service
        if line.startswith("    - "):
            items.append(line[len("    - "):].strip())
        elif items:
            items[-1] += " " + line.strip()
        else:
            items.append(line.strip())
    return items


def words(items: list[str]) -> str:
    return " ".join(" ".join(items).replace("'", "").replace('"', "").split())


@pytest.fixture(scope="module")
def config() -> dict[str, list[str]]:
    r = docker_compose("config")
    assert r.returncode == 0, r.stderr
    return service_blocks(r.stdout)


def test_compose_file_is_valid() -> None:
    r = docker_compose("config", "-q")
    assert r.returncode == 0, f"docker-compose config -q failed:\n{r.stderr}"


def test_every_role_is_a_service() -> None:
    r = docker_compose("config", "--services")
    assert r.returncode == 0, r.stderr
    missing = set(endpoints.ROLES) - set(r.stdout.split())
    assert not missing, f"docker-compose.yml has no service for {sorted(missing)}"


def test_endpoint_hosts_are_the_roles_services(config: dict[str, list[str]]) -> None:
    eps = endpoints.load(ENDPOINTS_FILE)
    assert eps == endpoints.tcp(), "regenerate the file from shared.endpoints.tcp()"
    for role in endpoints.ROLES:
        for url in (eps[role].rpc, eps[role].events):
            host, _, port = url.removeprefix("tcp://").rpartition(":")
            assert host in config, f"{role}: {url} names {host!r}, not a compose service"
            assert host == role, f"{role}: {url} is served by the {role} container, not {host}"
            # bound on the address the name resolves to in the container, or bind_host
            assert endpoints.bind_address(url, "10.1.2.3") == f"tcp://10.1.2.3:{port}"


def test_each_service_runs_its_role(config: dict[str, list[str]]) -> None:
    for role in endpoints.ROLES:
        block = config[role]
        command = words(entry(block, "command"))
        modules = re.findall(r"-m (services\S*)", command)
        assert modules == [f"services.{role}"], f"{role} runs {command!r}"
        assert f"--endpoints {MOUNTED_ENDPOINTS}" in command, command
        mounts = entry(block, "volumes")
        assert any(m.endswith(f"deploy/endpoints.compose.toml:{MOUNTED_ENDPOINTS}:ro")
                   for m in mounts), f"{role} does not mount the endpoints file read-only"
        assert any(m.startswith("identity:") for m in mounts) == (role == "crypto"), (
            f"{role}: the identity volume belongs to crypto alone ({mounts})")
        assert entry(block, "restart") == ["unless-stopped"], role
        health = words(entry(block, "healthcheck"))
        assert f"Ping()) - {role} " in health, f"{role} healthcheck: {health}"
    assert "tom --data /data init &&" in words(entry(config["crypto"], "command"))
    ports = words(entry(config["transport"], "ports"))
    assert "protocol: udp" in ports and "target: 4433" in ports, ports


# -- the compose endpoints, outside docker ---------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def localize(eps: endpoints.Endpoints) -> endpoints.Endpoints:
    """``eps`` with every host 127.0.0.1 and every port moved to a free one."""
    urls = [u for ep in eps.roles.values() for u in (ep.rpc, ep.events)]
    port_for = dict(zip(urls, free_ports(len(urls)), strict=True))

    def local(url: str) -> str:
        assert url.startswith("tcp://"), url
        return f"tcp://127.0.0.1:{port_for[url]}"

    return endpoints.Endpoints({role: endpoints.RoleEndpoints(local(ep.rpc), local(ep.events))
                                for role, ep in eps.roles.items()})


def healthcheck_script() -> str:
    """The ``x-ping`` healthcheck of docker-compose.yml (a folded scalar: lines join with
    spaces)."""
    lines = COMPOSE_FILE.read_text().splitlines()
    start = lines.index("x-ping: &ping >-") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    script = " ".join(body)
    assert MOUNTED_ENDPOINTS in script, script
    return script


def logs(data: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted(data.glob("*.log")))


@pytest.mark.slow
def test_compose_endpoints_serve_outside_docker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), "init"],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    eps = localize(endpoints.load(ENDPOINTS_FILE))
    tcp_file = tmp_path / "endpoints.tcp.toml"
    eps.write(tcp_file)
    env = {**os.environ, "TOM_BUS__HEARTBEAT_S": "0.2"}
    check = healthcheck_script().replace(MOUNTED_ENDPOINTS, str(tcp_file)).replace(
        "/data/bus", str(data / "bus"))
    keys = BusKeys(data / "bus")

    procs: dict[str, subprocess.Popen[bytes]] = {}
    zctx = zmq.Context()
    subs: dict[str, zmq.Socket] = {}
    try:
        for role in endpoints.ROLES:
            sub = subs[role] = zctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, Heartbeat.msg_type.encode())
            keys.dial(sub, "owner", role)
            sub.connect(eps[role].events)
        for role in endpoints.ROLES:
            with open(tmp_path / f"{role}.log", "wb") as log:
                procs[role] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{role}", "--data", str(data),
                     "--endpoints", str(tcp_file)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

        # Readiness: the pings are queued by ZeroMQ until each service binds, so this waits on
        # the services' own answers; READY_TIMEOUT_S only bounds a failure.
        with BusClient(eps, src="test-compose", timeout_s=READY_TIMEOUT_S,
                       keys=keys) as client:
            sent = {role: client.send(role, Ping()) for role in endpoints.ROLES}
            deadline = time.monotonic() + READY_TIMEOUT_S
            for role, msg_id in sent.items():
                try:
                    reply = client.recv(role, msg_id, max(0.1, deadline - time.monotonic())).body
                except BusTimeout as e:
                    pytest.fail(f"{role} did not answer on {eps[role].rpc}: {e}\n"
                                f"{logs(tmp_path)}")
                assert isinstance(reply, PingReply)
                assert (reply.service, reply.pid) == (role, procs[role].pid)

        for role, sub in subs.items():  # each role publishes on its events endpoint
            assert sub.poll(int(READY_TIMEOUT_S * 1000)), f"no heartbeat on {eps[role].events}"
            beat = decode(sub.recv_multipart()[1:]).body
            assert isinstance(beat, Heartbeat) and beat.service == role

        for role in endpoints.ROLES:  # the compose healthcheck, as docker would run it
            hc = subprocess.run([sys.executable, "-c", check, role], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
            assert hc.returncode == 0, f"healthcheck of {role} failed: {hc.stderr}"

        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for role, p in procs.items():
            try:
                rc = p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{role} still runs {STOP_TIMEOUT_S:g} s after SIGTERM\n"
                            f"{logs(tmp_path)}")
            assert rc == 0, f"{role} exited {rc} after SIGTERM\n{logs(tmp_path)}"

        hc = subprocess.run([sys.executable, "-c", check, "router"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
        assert hc.returncode != 0, "the healthcheck passes with the service stopped"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for sub in subs.values():
            sub.close(0)
        zctx.term()
