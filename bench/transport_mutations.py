"""One-line mutations of the transport's security checks (issue 13): each removes or
weakens one check; the tests named must then fail. Run from the repository root:

    .venv/bin/python -m bench.transport_mutations [--e2e]

Prints RED (a test caught it) or GREEN (a surviving mutant: a check without a test) per
mutation and exits 1 if any survived. ``--e2e`` also runs the mutations checked against
real processes (tests/hostile, about a minute). A complement to a general mutation tool:
these are the checks issue 13 lists, each written down once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UNIT = ["tests/unit/test_transport_endpoint.py", "tests/unit/test_transport_core.py",
        "tests/unit/test_transport_addresses.py", "tests/unit/test_transport_admission.py",
        "tests/unit/test_transport_memory.py", "tests/unit/test_transport_checks.py"]
HOSTILE = "tests/hostile/test_transport_attacks.py::"

MUTATIONS: list[tuple[str, str, str, str, list[str]]] = [
    ('proof bound to its connection (channel binding constant)',
     'services/transport/endpoint.py',
     '    return bytes(schedule.derive_secret(CHANNEL_LABEL))',
     "    return b'cb'",
     UNIT),
    ('self-connection check',
     'services/transport/endpoint.py',
     '        if node_id == self.node_id:\n            self._fail(conn, "connected to ourselves")',
     '        if False:\n            self._fail(conn, "connected to ourselves")',
     UNIT),
    ('probe-token check',
     'services/transport/signalling.py',
     '        if p is None or p.introduced is None or token not in p.tokens:',
     '        if p is None or p.introduced is None:',
     UNIT),
    ('punch-relay check (intro)',
     'services/transport/signalling.py',
     '        elif p.via != conn.node_id:  # only the relay of this punch adds to it',
     '        elif False:',
     UNIT),
    ('punch-relay check (nointro)',
     'services/transport/signalling.py',
     '                            and p.via == node_id:',
     '                            and True:',
     UNIT),
    ('half-open cap',
     'services/transport/admission.py',
     '            if self.total >= lim.max_half_open:',
     '            if False:',
     UNIT),
    ('address-report rate limit',
     'services/transport/signalling.py',
     '                    if not self._allow(conn.addr_reports, now, ADDR_BURST):',
     '                    if False:',
     UNIT),
    ('retry beyond threshold',
     'services/transport/admission.py',
     '            return RETRY',
     '            return ACCEPT',
     UNIT),
    ('half-open per address (unproven)',
     'services/transport/admission.py',
     '                or self.by_ip[ip] >= lim.half_open_per_address:',
     '                or False:',
     UNIT),
    ('half-open per address (proven)',
     'services/transport/admission.py',
     '            if self.proven_by_ip[ip] >= lim.half_open_per_address:',
     '            if False:',
     UNIT),
    ('retry token validated',
     'services/transport/endpoint.py',
     '        if header.token:  # the Initial that answers our Retry',
     '        if False:',
     UNIT),
    ("strangers' share",
     'services/transport/endpoint.py',
     '                and len(strangers) < lim.max_connections - lim.reserved:',
     '                and True:',
     UNIT),
    ('eviction for known/own dial',
     'services/transport/endpoint.py',
     '            victim = evict_for_known(strangers)',
     '            victim = None',
     UNIT),
    ('eviction for a stranger after grace',
     'services/transport/endpoint.py',
     '            victim = evict_for_stranger(strangers, now, lim.stranger_grace_s)',
     '            victim = None',
     UNIT),
    ('eviction order newest first',
     'services/transport/admission.py',
     '        c.valued_at > 0, -c.authenticated_at if c.valued_at == 0 else c.valued_at))',
     '        c.valued_at > 0, c.authenticated_at if c.valued_at == 0 else c.valued_at))',
     UNIT),
    ('router acceptance values a peer',
     'services/transport/core.py',
     '                    ep.valued(peer, now)  # the router took it: a peer worth its slot',
     '                    pass',
     UNIT),
    ('intro: one public candidate',
     'services/transport/signalling.py',
     '                if i > 0 or public >= PUBLIC_CANDIDATES:',
     '                if False:',
     UNIT),
    ("probe from a candidate's IP only",
     'services/transport/signalling.py',
     '            if addr[0] not in {h for h, _ in p.candidates}:',
     '            if False:',
     UNIT),
    ('stranger address not kept',
     'services/transport/core.py',
     '                if ev.node_id in ep.known:',
     '                if True:',
     UNIT),
    ('forgotten after redials give up',
     'services/transport/core.py',
     '            self._known.pop(node, None)  # the router asks again if it still wants it',
     '            pass',
     UNIT),
    ('names refused from peers',
     'services/transport/addresses.py',
     '    if not is_literal:',
     '    if False:',
     UNIT),
    ('connect host checked',
     'services/transport/core.py',
     '                    host, is_literal = parse_host(host)',
     '                    is_literal = True',
     UNIT),
    ('resolutions bounded',
     'services/transport/core.py',
     '        if len(self._resolving) >= MAX_RESOLVING:',
     '        if False:',
     UNIT),
    ('resolving peers not failed by other closes',
     'services/transport/core.py',
     '        dialling = ep.dialling() | {p for p, _, _ in self._resolving.values()}',
     '        dialling = ep.dialling()',
     UNIT),
    ('probes per punch',
     'services/transport/signalling.py',
     '        p.next_probe = now + PROBE_EVERY_S if p.probes_left > 0 else p.deadline',
     '        p.next_probe = now + PROBE_EVERY_S',
     UNIT),
    ('dial marks known',
     'services/transport/endpoint.py',
     '        self.want(node_id)\n        if node_id in self.peers or node_id in self.dialling():',
     '        if node_id in self.peers or node_id in self.dialling():',
     UNIT),
    ('punch marks known',
     'services/transport/core.py',
     '                ep.want(peer)\n                try:\n                    ep.punch',
     '                try:\n                    ep.punch',
     UNIT),
    ('retired unmetered',
     'services/transport/endpoint.py',
     '            if node_id is not None and self.budget <= (-self.overdraft if final else 0):',
     '            if node_id is not None and self.budget <= (-self.overdraft if final else 0) and (final or conn.retired_until is None):',  # noqa: E501
     ['tests/unit/test_transport_memory.py']),
    ('retired window grows',
     'services/transport/endpoint.py',
     '        if stream is not None and node_id is not None and conn.retired_until is None \\',
     '        if stream is not None and node_id is not None \\',
     ['tests/unit/test_transport_memory.py']),
    ('overdraft unbounded',
     'services/transport/endpoint.py',
     '            if node_id is not None and self.budget <= (-self.overdraft if final else 0):',
     '            if node_id is not None and self.budget <= (-sys.maxsize if final else 0):',
     ['tests/unit/test_transport_memory.py']),
    ("punch dial is a stranger's",
     'services/transport/endpoint.py',
     '        return (node_id or conn.node_id) not in self.known',
     '        return not conn.dialled and (node_id or conn.node_id) not in self.known',
     ['tests/unit/test_transport_admission.py']),
    ("strangers' rate",
     'services/transport/endpoint.py',
     '                    and not self._rate.take(node_id, size, now):',
     '                    and False:',
     ['tests/unit/test_transport_admission.py']),
    ("strangers' byte rate",
     'services/transport/ratelimit.py',
     '        if b.envelopes < 1 or b.bytes < size:',
     '        if b.envelopes < 1:',
     ['tests/unit/test_transport_admission.py']),
    ("strangers' rate spares the nodes asked for",
     'services/transport/endpoint.py',
     '                    and node_id not in self.known \\',
     '                    and True \\',
     ['tests/unit/test_transport_admission.py']),
    ("throttled lanes are read again",
     'services/transport/endpoint.py',
     '        times += self._throttled.values()',
     '        pass',
     ['tests/unit/test_transport_admission.py']),
    ("strangers' rate (e2e)",
     'services/transport/endpoint.py',
     '                    and not self._rate.take(node_id, size, now):',
     '                    and False:',
     ['tests/hostile/test_router_attacks.py::'
      'test_made_up_senders_leave_a_bounded_table_and_l_is_served']),
    ('proof bound to its connection (e2e)',
     'services/transport/endpoint.py',
     '    return bytes(schedule.derive_secret(CHANNEL_LABEL))',
     "    return b'cb'",
     [HOSTILE + 'test_a_copied_proof_does_not_pass_as_another_node']),
    ('self-connection check (e2e)',
     'services/transport/endpoint.py',
     '        if node_id == self.node_id:\n            self._fail(conn, "connected to ourselves")',
     '        if False:\n            self._fail(conn, "connected to ourselves")',
     [HOSTILE + 'test_a_node_told_to_connect_to_itself_refuses']),
    ('address-report rate limit (e2e)',
     'services/transport/signalling.py',
     '                    if not self._allow(conn.addr_reports, now, ADDR_BURST):',
     '                    if False:',
     [HOSTILE + 'test_address_reports_are_rate_limited']),
    ('resolver threads bounded (e2e)',
     'services/transport/shell.py',
     '        if self._resolver_busy >= RESOLVER_THREADS:',
     '        if False:',
     [HOSTILE + 'test_a_name_whose_resolver_never_answers_does_not_freeze_the_transport']),
    ('resolution off the loop (e2e)',
     'services/transport/shell.py',
     '        job = self._resolver.submit(socket.getaddrinfo, action.host, action.port,',
     '        job = concurrent.futures.Future(); job.set_result(socket.getaddrinfo(action.host, action.port)); (',  # noqa: E501
     [HOSTILE + 'test_a_name_whose_resolver_never_answers_does_not_freeze_the_transport']),
]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    e2e = "--e2e" in sys.argv
    survivors = 0
    for name, file, old, new, tests in MUTATIONS:
        if not e2e and any(t.startswith("tests/hostile/") for t in tests):
            continue
        path = root / file
        src = path.read_text()
        if src.count(old) != 1:
            print(f"STALE {name}: the text to mutate is not found once in {file}")
            survivors += 1
            continue
        path.write_text(src.replace(old, new))
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                                  "no:cacheprovider", *tests], cwd=root, capture_output=True,
                                 text=True, env=dict(os.environ, PYTHONPATH=str(root)))
        finally:
            path.write_text(src)
        failed = [x for x in run.stdout.splitlines() if x.startswith("FAILED")]
        if run.returncode:
            print(f"RED   {name}: {failed[0][7:] if failed else run.stdout.splitlines()[-1:]}")
        else:
            survivors += 1
            print(f"GREEN {name}: survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
