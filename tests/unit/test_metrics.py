"""tom metrics: the services' sys.status answers as Prometheus series."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from shared.wire.messages.sys import StatusReply
from tom import metrics


class Fixed(metrics.NodeCollector):
    def __init__(self, statuses: dict[str, StatusReply | None]) -> None:
        self.fixed = statuses

    def statuses(self) -> dict[str, StatusReply | None]:
        return self.fixed


def scrape(statuses: dict[str, StatusReply | None]) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed(statuses))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_counters_of_each_service_become_series() -> None:
    crypto = StatusReply(service="crypto", impl="tom-crypto 0.1", pid=7, uptime_s=12.5,
                         frames_in=40, frames_out=41, decode_errors=2, drops=1,
                         errors={"forbidden": 3}, queues={"pending": 4},
                         counters={"bus_auth_refused": 5, "sign-refused": 6})
    got = scrape({"crypto": crypto, "router": None})
    c = (("service", "crypto"),)
    assert got[("tom_service_up", c)] == 1
    assert got[("tom_service_up", (("service", "router"),))] == 0
    assert got[("tom_service_uptime_seconds", c)] == 12.5
    assert got[("tom_bus_frames_in_total", c)] == 40
    assert got[("tom_bus_frames_out_total", c)] == 41
    assert got[("tom_bus_decode_errors_total", c)] == 2
    assert got[("tom_bus_drops_total", c)] == 1
    assert got[("tom_errors_total", (("error", "forbidden"), ("service", "crypto")))] == 3
    assert got[("tom_events_total", (("name", "bus_auth_refused"), ("service", "crypto")))] == 5
    assert got[("tom_events_total", (("name", "sign_refused"), ("service", "crypto")))] == 6
    assert got[("tom_queue_depth", (("queue", "pending"), ("service", "crypto")))] == 4
    assert not [k for k in got if k[1] and ("service", "router") in k[1]
                and k[0] != "tom_service_up"]


def test_parse_listen() -> None:
    assert metrics.parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics.parse_listen(":9464") == ("0.0.0.0", 9464)
    assert metrics.parse_listen("[::1]:80") == ("::1", 80)
