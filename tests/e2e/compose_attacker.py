"""A process that is not one of the node's services tries the compose node's bus.

Run as ``python - HOST_OR_FILE [SERVER_KEYS_JSON]`` with this file on stdin, inside a container
on the compose bus network (``docker run -i --network ...``) or on the docker host. For every
bus port of every role it asks crypto to sign a forged envelope (the request sent to that
port), once without CURVE and once with a made-up CURVE key pair that knows the servers' public
keys (which are no secret); it subscribes to every events port too. It prints one JSON object:
``{"answers": [...], "events": [...]}``, both empty when the bus refused everything.

Only ``shared`` (in the image) and ``pyzmq`` are needed; nothing of the node's keys.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq
import zmq.auth

from shared import endpoints
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.wire import BusTimeout, WireError
from shared.wire.messages import crypto as cm

WAIT_S = 1.0


class StrangerKeys(BusKeys):
    """A made-up key pair of the attacker's own, with the servers' public keys."""

    def __init__(self, directory: Path, servers: dict[str, str]) -> None:
        super().__init__(directory)
        self.servers = servers

    def public(self, name: str) -> bytes:
        return self.servers[name].encode()


def main() -> None:
    eps = endpoints.load(Path(sys.argv[1]))
    servers = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    keydir = Path("/tmp/stranger")
    BusKeys.create(keydir)
    answers: list[str] = []
    ports = [(role, url) for role in endpoints.ROLES
             for url in (eps[role].rpc, eps[role].events)]
    forged = b"\x92\x01" + b"forged envelope from the node" * 4
    for curve in ([False, True] if servers else [False]):
        for role, url in ports:
            # the made-up key dials the key of the service that listens on this port
            keys = StrangerKeys(keydir, {"crypto": servers[role]}) if curve else None
            # crypto.sign sent to this port, whichever service listens there
            target = endpoints.Endpoints({
                r: endpoints.RoleEndpoints(url if r == "crypto" else eps[r].rpc, eps[r].events)
                for r in endpoints.ROLES})
            kind = "curve" if keys else "plain"
            try:
                with BusClient(target, src="attacker", timeout_s=WAIT_S, keys=keys) as c:
                    c.call("crypto", cm.Sign(), [forged], timeout_s=WAIT_S)
                answers.append(f"{kind} {role} {url}: signed")
            except BusTimeout:
                pass
            except WireError as e:  # an error reply is still an answer: it got through
                answers.append(f"{kind} {role} {url}: {type(e).__name__} {e}")
            except Exception as e:  # noqa: BLE001 - unreachable, refused: nothing got through
                print(f"{kind} {url}: {type(e).__name__}: {e}", file=sys.stderr)
    ctx = zmq.Context()
    events: list[str] = []
    subs = []
    for role in endpoints.ROLES:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(eps[role].events)
        subs.append((role, sub))
    time.sleep(2 * WAIT_S)
    for role, sub in subs:
        if sub.poll(0):
            events.append(role)
        sub.close(0)
    ctx.term()
    print(json.dumps({"answers": answers, "events": events}))


if __name__ == "__main__":
    main()
