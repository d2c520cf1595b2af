"""The docker-compose node for real: image built, five containers healthy, messages both ways.

Needs a docker engine (``DOCKER_HOST``; ``.ci/run`` starts a private one with
``deploy/ci-docker.sh start``), ``docker-compose`` and, where no image registry is reachable,
root and ``debootstrap`` to build the base image (``deploy/ci-docker.sh base``). On a
developer's machine without them the test is skipped; under ``CI=true`` it fails.

One module-scoped compose project (a unique name, its own image tag, a free UDP port on the
docker host) is brought up once for the tests below and removed at the end with its
containers, volumes, network and image, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.testing.prereq import missing, require_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CI_DOCKER = ROOT / "deploy" / "ci-docker.sh"
EPS = "/etc/tom/endpoints.toml"
ROLES = ("transport", "router", "crypto", "groups", "backup")
HEALTHY_TIMEOUT_S = 300.0  # a deadline: on a loaded 2-core machine 72 s was seen
SEND_TIMEOUT_S = 60


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@dataclass
class Compose:
    project: str
    image: str
    udp_port: int
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(["docker-compose", "-p", self.project, *args], env=self.env,
                   timeout=timeout, check=check)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, timeout=120, check=check)

    def tom(self, service: str, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``tom`` run inside the running container of ``service`` (which finds the bus by
        ``TOM_ENDPOINTS``)."""
        return self("exec", "-T", service, "tom", *args, check=check, timeout=timeout)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def wait_healthy(self) -> float:
        t0 = time.monotonic()
        deadline = t0 + HEALTHY_TIMEOUT_S
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for role in (*ROLES, "metrics"):
                cid = self.container(role)
                states[role] = self.docker(
                    "inspect", "-f", "{{.State.Health.Status}}", cid, check=False
                ).stdout.strip() if cid else "absent"
            if all(s == "healthy" for s in states.values()):
                return time.monotonic() - t0
            time.sleep(1)
        logs = self("logs", "--tail", "40", check=False).stdout
        raise AssertionError(f"not every service healthy after {HEALTHY_TIMEOUT_S:g} s: "
                             f"{states}\n{logs}")

    def node_id(self) -> str:
        return self.tom("crypto", "id").stdout.strip()


def engine_env() -> dict[str, str]:
    require_command("docker", "run the compose node (Debian: apt-get install docker.io)")
    require_command("docker-compose", "run the compose node (apt-get install docker-compose)")
    env = {**os.environ}
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        missing("no docker engine answers (DOCKER_HOST="
                f"{env.get('DOCKER_HOST', 'unset')}); as root, `eval $(deploy/ci-docker.sh "
                "start)` starts a private one")
    return env


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    env = engine_env()
    tag = uuid.uuid4().hex[:10]
    net = int(tag[:4], 16) % 200 + 20  # the bus subnet 172.30.NET.0/24
    t0 = time.monotonic()
    base = run(["bash", str(CI_DOCKER), "base"], env=env, timeout=900).stdout.strip()
    timings = {"base_s": time.monotonic() - t0}
    c = Compose(project=f"tomtest{tag}", image=f"tom-node:test-{tag}",
                udp_port=free_udp_port(), env=env, timings=timings)
    c.env.update(TOM_IMAGE=c.image, TOM_UDP_PORT=str(c.udp_port), TOM_BASE_IMAGE=base,
                 TOM_HEALTH_INTERVAL="2s", TOM_BUS_SUBNET=f"172.30.{net}.0/24",
                 TOM_BUS_TRANSPORT_IP=f"172.30.{net}.10",
                 TOM_METRICS_PORT=str(free_tcp_port()))
    try:
        t0 = time.monotonic()
        run(["make", "image", f"BASE={base}", f"IMAGE={c.image}",
             f"IMAGE_PY={sys.executable}", "IMAGE_DEPS="], env=env, timeout=900)
        timings["image_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        c("up", "-d")
        timings["healthy_s"] = c.wait_healthy() + (time.monotonic() - t0)
        yield c
    finally:
        c("logs", "--no-color", check=False)  # kept in the failure report if any
        c("down", "-v", "--remove-orphans", check=False)
        c.docker("rmi", "-f", c.image, check=False)
        print(f"compose timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


@contextlib.contextmanager
def host_node_at() -> Iterator[tuple[Path, str, int]]:
    """A node on the docker host (supervisord, ipc bus), its UDP socket on every interface so
    that the containers reach it through the compose network's gateway."""
    port = free_udp_port()
    tmp = Path(tempfile.mkdtemp(prefix="tom-compose-host-"))
    data = tmp / "data"
    env = {**os.environ, "TOM_TRANSPORT__PORT": str(port)}
    tom = [sys.executable, "-m", "tom.cli", "--data", str(data)]
    try:
        run([*tom, "init"], env=env, timeout=60)
        run([*tom, "node", "up"], env=env, timeout=120)
        node_id = run([*tom, "id"], env=env).stdout.strip()
        yield data, node_id, port
    finally:
        run([*tom, "node", "down"], env=env, timeout=60, check=False)


def host_send(data: Path, peer: str, text: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "tom.cli", "--data", str(data), "send", peer, text,
                "--timeout", str(SEND_TIMEOUT_S)], timeout=SEND_TIMEOUT_S + 30, check=False)


def gateway(c: Compose) -> str:
    return c.docker("network", "inspect", f"{c.project}_public", "-f",
                    "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout.strip()


def test_messages_both_ways_and_identity_kept(compose: Compose) -> None:
    with host_node_at() as (data, host_id, host_port):
        compose_id = first_exchange(compose, data, host_id, host_port)
        # the host node stays up across down/up, as a peer in the field would: its
        # connection to the old containers is dead, and it must find the new ones
        down_up_keeps_identity(compose, compose_id)
        both_ways(compose, data, host_id, host_port, "after down/up")
    after_down_up(compose, compose_id)


def first_exchange(compose: Compose, data: Path, host_id: str, host_port: int) -> str:
    compose_id = compose.node_id()
    assert compose_id and compose_id != host_id
    t0 = time.monotonic()
    r = host_send(data, f"{compose_id}@127.0.0.1:{compose.udp_port}", "hello compose")
    assert r.returncode == 0, f"host -> compose: {r.stdout}{r.stderr}"
    compose.timings["send_host_to_compose_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    back = compose.tom("router", "send", f"{host_id}@{gateway(compose)}:{host_port}",
                       "hello host", "--timeout", str(SEND_TIMEOUT_S), check=False,
                       timeout=SEND_TIMEOUT_S + 30)
    assert back.returncode == 0, f"compose -> host: {back.stdout}{back.stderr}"
    compose.timings["send_compose_to_host_s"] = time.monotonic() - t0
    return compose_id


def down_up_keeps_identity(compose: Compose, compose_id: str) -> None:
    # down / up: the containers go, the volumes (and so the identity) stay
    t0 = time.monotonic()
    compose("down")
    assert not compose("ps", "-q").stdout.strip()
    compose("up", "-d")
    compose.wait_healthy()
    compose.timings["down_up_healthy_s"] = time.monotonic() - t0
    assert compose.node_id() == compose_id, "the compose node's identity changed on down/up"


def both_ways(compose: Compose, data: Path, host_id: str, host_port: int, when: str) -> None:
    """A message from the host node to the compose node and one back, both delivered."""
    compose_id = compose.node_id()
    t0 = time.monotonic()
    r = host_send(data, f"{compose_id}@127.0.0.1:{compose.udp_port}", f"hello {when}")
    assert r.returncode == 0, f"host -> compose {when}: {r.stdout}{r.stderr}"
    back = compose.tom("router", "send", f"{host_id}@{gateway(compose)}:{host_port}",
                       f"hello {when}", "--timeout", str(SEND_TIMEOUT_S), check=False,
                       timeout=SEND_TIMEOUT_S + 30)
    assert back.returncode == 0, f"compose -> host {when}: {back.stdout}{back.stderr}"
    compose.timings[f"both_ways_{when.replace(' ', '_').replace('/', '_')}_s"] = \
        time.monotonic() - t0


def after_down_up(compose: Compose, compose_id: str) -> None:
    # and with a host node the compose node has not met: the restarted containers serve and
    # dial
    with host_node_at() as (data2, host2_id, host2_port):
        both_ways(compose, data2, host2_id, host2_port, "new host after down/up")


def test_node_status_shows_the_compose_node_healthy(compose: Compose) -> None:
    r = compose.tom("router", "node", "status", check=False)
    assert r.returncode == 0, f"tom node status in a container: {r.stdout}{r.stderr}"
    assert "healthy" in r.stdout and "NOT healthy" not in r.stdout, r.stdout
    assert compose.node_id() in r.stdout


def refused_counts(c: Compose) -> dict[str, int]:
    """``bus_auth_refused`` of each service, asked with the owner's key inside a container."""
    script = (
        "import json, pathlib; from shared import endpoints; from shared.bus import BusClient;"
        "from shared.buskeys import BusKeys; from shared.wire.messages.sys import Status;"
        "c = BusClient(endpoints.load(pathlib.Path('/etc/tom/endpoints.toml')), src='test',"
        " keys=BusKeys(pathlib.Path('/data/bus')));"
        "print(json.dumps({r: c.request(r, Status()).counters.get('bus_auth_refused', 0)"
        " for r in endpoints.ROLES}))")
    return dict(json.loads(c("exec", "-T", "router", "python", "-c", script).stdout))


def server_public_keys(c: Compose) -> dict[str, str]:
    script = ("import json, pathlib; from shared.buskeys import BusKeys;"
              "k = BusKeys(pathlib.Path('/data/bus'));"
              f"print(json.dumps({{r: k.public(r).decode() for r in {ROLES!r}}}))")
    return dict(json.loads(c("exec", "-T", "router", "python", "-c", script).stdout))


def test_a_stranger_on_the_bus_network_gets_nothing_signed(compose: Compose) -> None:
    """A container that is not one of the node's services, on the node's bus network, tries
    every bus port, with no key and with a made-up one: no answer, no event, counted."""
    before = refused_counts(compose)
    attacker = (ROOT / "tests" / "e2e" / "compose_attacker.py").read_text()
    r = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", f"{compose.project}_bus",
         "-v", f"{ROOT / 'deploy' / 'endpoints.compose.toml'}:{EPS}:ro",
         compose.image, "python", "-", EPS, json.dumps(server_public_keys(compose))],
        input=attacker, env=compose.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == {"answers": [], "events": []}, seen
    after = refused_counts(compose)
    for role in ROLES:
        assert after[role] > before[role], f"{role}: refusals not counted ({before} {after})"


def test_the_bus_is_not_published(compose: Compose) -> None:
    """Only the transport's UDP port is published to the docker host (and the metrics on
    its loopback)."""
    ports = compose.docker("ps", "--filter", f"label=com.docker.compose.project="
                           f"{compose.project}", "--format", "{{.Names}} {{.Ports}}").stdout
    published = [p for line in ports.splitlines() for p in line.split(" ", 1)[-1].split(", ")
                 if "->" in p]
    metrics = f"127.0.0.1:{compose.env['TOM_METRICS_PORT']}->9464/tcp"
    assert published and all(p.endswith("->4433/udp") or p == metrics for p in published), ports
    internal = compose.docker("network", "inspect", f"{compose.project}_bus", "-f",
                              "{{.Internal}}").stdout.strip()
    assert internal == "true"


def test_metrics_endpoint_returns_the_counters(compose: Compose) -> None:
    url = f"http://127.0.0.1:{compose.env['TOM_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    for role in ROLES:
        assert f'tom_service_up{{service="{role}"}} 1.0' in text, text
        assert f'tom_bus_frames_in_total{{service="{role}"}}' in text
    assert "tom_events_total" in text


def test_a_swapped_groups_service_joins_by_configuration(compose: Compose) -> None:
    """groups replaced by another command (deploy/compose.groups-swap.yml): it joins the bus
    with the keys and endpoints it is given, the node is healthy and groups work."""
    swap = ["-f", "docker-compose.yml", "-f", "deploy/compose.groups-swap.yml"]
    old = compose.container("groups")
    compose(*swap, "up", "-d", "--no-deps", "groups")
    assert compose.container("groups") != old
    compose.wait_healthy()
    cmd = compose.docker("inspect", "-f", "{{json .Config.Cmd}}",
                         compose.container("groups")).stdout
    assert '"services","groups"' in cmd.replace(" ", ""), cmd
    status = compose.tom("router", "node", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    made = compose.tom("router", "group", "create", "swapped", check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    contract_suite_passes(compose)


def test_the_example_backup_swapped_in_keeps_the_node_working(compose: Compose) -> None:
    """examples/backup-pyzmq (plain pyzmq, written from the docs) in place of the backup
    service, by its compose file alone: healthy, named by `tom node status`, messages both
    ways with a host node, and the contract suite passes against the node."""
    swap = ["-f", "docker-compose.yml", "-f", "examples/backup-pyzmq/docker-compose.yml"]
    old = compose.container("backup")
    compose(*swap, "up", "-d", "--no-deps", "backup")
    assert compose.container("backup") != old
    compose.wait_healthy()
    status = compose.tom("router", "node", "status", check=False)
    assert status.returncode == 0 and "tom-backup-pyzmq" in status.stdout, \
        status.stdout + status.stderr
    with host_node_at() as (data, host_id, host_port):
        both_ways(compose, data, host_id, host_port, "with the example backup")
    contract_suite_passes(compose)


def contract_suite_passes(compose: Compose) -> None:
    """tests/contract against the running compose node (TOM_CONTRACT_NODE), from the docker
    host: its endpoints are the containers' bus addresses, its key the owner's bus key copied
    from the node's volume. On a running node the suite checks every role's bus contract
    (tests/contract/harness.py); the checks that play neighbours or start processes skip."""
    tmp = Path(tempfile.mkdtemp(prefix="tom-compose-contract-"))
    try:
        lines = []
        for i, role in enumerate(ROLES):
            ip = compose.docker("inspect", "-f", "{{(index .NetworkSettings.Networks "
                                f'"{compose.project}_bus").IPAddress}}}}',
                                compose.container(role)).stdout.strip()
            assert ip, f"{role} has no address on the bus network"
            lines += [f"[{role}]", f'rpc = "tcp://{ip}:{7100 + 2 * i}"',
                      f'events = "tcp://{ip}:{7101 + 2 * i}"', ""]
        (tmp / "endpoints.toml").write_text("\n".join(lines))
        compose.docker("cp", f"{compose.container('router')}:/data/bus", str(tmp / "bus"))
        r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                 "tests/contract"],
                env={**compose.env, "TOM_CONTRACT_NODE": str(tmp / "endpoints.toml"),
                     "TOM_CONTRACT_BUS_KEYS": str(tmp / "bus")}, timeout=900, check=False)
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        assert r.returncode == 0 and " passed" in summary and "failed" not in summary, \
            f"contract suite on the compose node: {r.stdout[-6000:]}{r.stderr[-2000:]}"
        passed = {role: r.stdout.count(f"PASSED tests/contract/test_{role}_contract.py::"
                                       f"Test{role.capitalize()}Contract::") for role in ROLES}
        # every role's bus contract was checked, the swapped groups service's included
        assert all(n >= 10 for n in passed.values()), passed
        print(f"contract suite on the compose node: {summary} {passed}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
