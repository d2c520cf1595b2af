"""The example backup implementation (examples/backup-pyzmq) swapped into running nodes:

* under supervisord: two whole nodes (`tom node up`) whose deploy directory has the example's
  program file in place of conf.d/backup.ini; they still exchange messages both ways (sent,
  delivered, read), and their backup service is the example;
* under docker-compose: the example's compose file makes the backup service run it
  (``docker-compose config``), and, outside docker as in tests/e2e/test_compose.py, the
  example serves the compose (tcp, CURVE) endpoints: it answers the node's keys, holds a
  sealed envelope over tcp, refuses a client without a bus key, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.crypto.core import Identity
from shared import endpoints
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.wire import BusTimeout
from shared.wire.messages import backup as bm
from shared.wire.messages.sys import Ping, PingReply, Status, StatusReply
from tests.e2e.test_compose import ENDPOINTS_FILE, docker_compose, localize, service_blocks
from tests.e2e.test_router import RealNode, statuses

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "backup-pyzmq"
IMPL = "tom-backup-pyzmq/"


@pytest.fixture(scope="module")
def deploy() -> Iterator[Path]:
    """A copy of deploy/ with the example's program file as conf.d/backup.ini, next to a link
    to examples/ (the program file finds the example at %(here)s/../../examples)."""
    top = Path(tempfile.mkdtemp(prefix="tom-deploy-"))
    try:
        shutil.copytree(ROOT / "deploy", top / "deploy")
        (top / "examples").symlink_to(ROOT / "examples")
        shutil.copy(EXAMPLE / "backup.ini", top / "deploy" / "conf.d" / "backup.ini")
        yield top / "deploy"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def backup_status(n: RealNode) -> StatusReply:
    reply = n.client.bus.request("backup", Status())
    assert isinstance(reply, StatusReply)
    return reply


def test_two_nodes_with_the_example_backup_still_exchange_messages(
        deploy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOM_DEPLOY", str(deploy))  # `tom node up` runs this deploy/
    nodes: list[RealNode] = []
    pids: list[int] = []
    try:
        a, b = RealNode("xa"), RealNode("xb")
        nodes += [a, b]
        for n in nodes:
            status = backup_status(n)
            assert status.impl.startswith(IMPL), status.impl
            pids.append(status.pid)
        a.introduce(b)
        for sender, recipient in ((a, b), (b, a)):
            sender.client.subscribe()
            text = f"from {sender.name}".encode()
            msg_id = sender.client.send(recipient.id, text)
            seen = statuses(sender.client, msg_id, "delivered", timeout_s=40)
            assert "delivered" in seen, seen
            got = [m for m in recipient.client.inbox() if m.info.id == msg_id]
            assert [m.payload for m in got] == [text]
    finally:
        for n in nodes:
            n.stop()
        for pid in pids:  # stopped with its node; never left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_compose_file_of_the_example_runs_it_as_the_backup_service() -> None:
    r = docker_compose("-f", str(EXAMPLE / "docker-compose.yml"), "config")
    assert r.returncode == 0, r.stderr
    blocks = service_blocks(r.stdout)
    command = " ".join(blocks["backup"])
    assert "/opt/example/tom_backup.py" in command, command
    # the image holds no checkout: the one file is mounted into it, read-only
    mounts = " ".join(blocks["backup"])
    assert "examples/backup-pyzmq/tom_backup.py" in mounts and "/opt/example/tom_backup.py" \
        in mounts, mounts
    assert "--endpoints" in command and "/etc/tom/endpoints.toml" in command, command
    assert "services.backup" not in command
    router = " ".join(blocks["router"])
    assert "services.router" in router  # the other services are untouched


def test_the_example_serves_the_compose_endpoints_outside_docker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), "init"],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    eps = localize(endpoints.load(ENDPOINTS_FILE))
    tcp_file = tmp_path / "endpoints.tcp.toml"
    eps.write(tcp_file)
    keys = BusKeys(data / "bus")
    log = tmp_path / "backup.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(EXAMPLE / "tom_backup.py"), "--data",
                                 str(data), "--endpoints", str(tcp_file)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOM_BUS__HEARTBEAT_S": "0.2"})
    try:
        with BusClient(eps, src="test-example", timeout_s=20, keys=keys) as client:
            reply = client.request("backup", Ping())
            assert isinstance(reply, PingReply) and reply.impl.startswith(IMPL), reply
            a, c = Identity(b"\x51" * 32, os.urandom), Identity(b"\x53" * 32, os.urandom)
            raw = a.seal(c.node_id, "Chat", b"over tcp", int(time.time() * 1000)).encode()
            held = client.call("backup", bm.Hold(expires_ms=int(time.time() * 1000) + 60_000),
                               (raw,)).body
            assert isinstance(held, bm.HoldReply) and not held.already
            pending = client.call("backup", bm.Pending(recipient=c.node_id))
            assert pending.blobs == (raw,)
        with BusClient(eps, src="stranger", timeout_s=1) as stranger,  \
                pytest.raises(BusTimeout):  # no bus key: CURVE lets nothing through
            stranger.request("backup", Ping())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(2) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
