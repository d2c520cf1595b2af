"""A service starts with its peers down: requests to them time out clearly, then succeed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shared.wire import ErrorCode, RemoteError
from shared.wire.messages.router import NodeInfo, NodeInfoReply
from shared.wire.messages.sys import Ping, PingReply
from tests.contract.harness import IMPLEMENTATIONS, Node, prepare


@pytest.fixture()
def node() -> Iterator[Node]:
    n = prepare(IMPLEMENTATIONS["services"])
    try:
        yield n
    finally:
        n.stop()
        shutil.rmtree(n.data, ignore_errors=True)


def test_router_without_crypto_times_out_then_succeeds(node: Node) -> None:
    node.start("router")
    with node.client(timeout_s=5) as c:
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as info:
            c.request("router", NodeInfo())
        assert info.value.code == ErrorCode.PEER_TIMEOUT
        assert "crypto did not answer crypto.node_id within 1 s" in info.value.message
        assert time.monotonic() - t0 < 3  # node.toml sets request_timeout_s = 1.0
        node.start("crypto")
        reply = c.request("router", NodeInfo())
        assert isinstance(reply, NodeInfoReply) and len(reply.node_id) == 32



def test_a_second_instance_of_a_role_refuses_to_start(node: Node) -> None:
    """Binding would silently take the ipc socket from the running instance."""
    node.start("groups")
    second = subprocess.run([sys.executable, "-m", "services.groups", "--data", str(node.data),
                             "--endpoints", str(node.data / "endpoints.toml")],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "another groups service is already serving" in second.stderr
    with node.client() as c:
        reply = c.request("groups", Ping())
    assert isinstance(reply, PingReply) and reply.pid == node.procs["groups"].pid
