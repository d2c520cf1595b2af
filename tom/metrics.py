"""The node's counters in Prometheus text format, from one place per node.

``tom metrics [--listen HOST:PORT]`` serves ``/metrics`` over HTTP (``prometheus-client``).
Each scrape asks every service for its ``sys.status`` over the bus (with the owner's key, as
every ``tom`` command does) and turns the answers into these series, each labelled with
``service`` (transport, router, crypto, groups, backup):

==================================  =======  ===================================================
series                              type     what
==================================  =======  ===================================================
``tom_service_up``                  gauge    1 if the service answered this scrape, else 0
``tom_service_uptime_seconds``      gauge    seconds since the service started
``tom_bus_frames_in_total``         counter  messages received on its bus sockets
``tom_bus_frames_out_total``        counter  messages sent on its bus sockets
``tom_bus_decode_errors_total``     counter  received messages rejected before the core
``tom_bus_drops_total``             counter  outgoing messages dropped
``tom_errors_total``                counter  error replies sent, label ``error``
``tom_events_total``                counter  the service's own counters, label ``name``
                                             (e.g. ``bus_auth_refused``, ``sign_refused``)
``tom_queue_depth``                 gauge    current depth of each bounded queue, label
                                             ``queue``
==================================  =======  ===================================================

``tom metrics --once`` prints one scrape to stdout and exits.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from shared import endpoints as ep
from shared.bus import BusClient
from shared.wire import WireError
from shared.wire.messages.sys import Status, StatusReply

DEFAULT_LISTEN = "127.0.0.1:9464"
SCRAPE_TIMEOUT_S = 1.0


def _name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


class NodeCollector(Collector):
    """Asks each service for ``sys.status`` at every collect."""

    def __init__(self, client_factory: Callable[[], BusClient],
                 timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.client_factory = client_factory
        self.timeout_s = timeout_s
        self.lock = threading.Lock()

    def statuses(self) -> dict[str, StatusReply | None]:
        out: dict[str, StatusReply | None] = {}
        with self.lock, self.client_factory() as client:
            sent = {role: client.send(role, Status(), timeout_s=self.timeout_s)
                    for role in ep.ROLES}
            deadline = time.monotonic() + self.timeout_s
            for role, msg_id in sent.items():
                try:
                    reply = client.recv(role, msg_id,
                                        max(0.05, deadline - time.monotonic())).body
                    out[role] = reply if isinstance(reply, StatusReply) else None
                except WireError:
                    out[role] = None
        return out

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.statuses()))


def families(statuses: dict[str, StatusReply | None]) -> list[Metric]:
    """The metric families for one scrape's answers (``None``: the service did not answer)."""
    up = GaugeMetricFamily("tom_service_up", "1 if the service answered this scrape",
                           labels=["service"])
    uptime = GaugeMetricFamily("tom_service_uptime_seconds", "Seconds since the service "
                               "started", labels=["service"])
    fin = CounterMetricFamily("tom_bus_frames_in", "Messages received on the service's bus "
                              "sockets", labels=["service"])
    fout = CounterMetricFamily("tom_bus_frames_out", "Messages sent on the service's bus "
                               "sockets", labels=["service"])
    dec = CounterMetricFamily("tom_bus_decode_errors", "Received messages rejected before "
                              "reaching the core", labels=["service"])
    drops = CounterMetricFamily("tom_bus_drops", "Outgoing messages dropped",
                                labels=["service"])
    errors = CounterMetricFamily("tom_errors", "Error replies sent, by error name",
                                 labels=["service", "error"])
    events = CounterMetricFamily("tom_events", "Service-specific counters",
                                 labels=["service", "name"])
    queues = GaugeMetricFamily("tom_queue_depth", "Current depth of each bounded queue",
                               labels=["service", "queue"])
    for role, st in statuses.items():
        up.add_metric([role], 0 if st is None else 1)
        if st is None:
            continue
        uptime.add_metric([role], st.uptime_s)
        fin.add_metric([role], st.frames_in)
        fout.add_metric([role], st.frames_out)
        dec.add_metric([role], st.decode_errors)
        drops.add_metric([role], st.drops)
        for name, n in sorted(st.errors.items()):
            errors.add_metric([role, _name(name)], n)
        for name, n in sorted(st.counters.items()):
            events.add_metric([role, _name(name)], n)
        for name, n in sorted(st.queues.items()):
            queues.add_metric([role, _name(name)], n)
    return [up, uptime, fin, fout, dec, drops, errors, events, queues]


def registry(client_factory: Callable[[], BusClient]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(client_factory))
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(client_factory: Callable[[], BusClient], listen: str) -> None:
    """Serve ``/metrics`` until interrupted."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    _, thread = start_http_server(port, addr=host, registry=registry(client_factory))
    print(f"metrics on http://{listen}/metrics", flush=True)
    thread.join()
