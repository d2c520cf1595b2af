"""`make mutate`: mutation testing of the security checks in the sans-I/O cores (mutmut).

Runs ``mutmut run`` with the ``[tool.mutmut]`` settings of pyproject.toml (the cores named
in ``only_mutate``, against the in-process tests), then writes ``bench/mutation.md``: the
counts per file, and every surviving mutant that changes behaviour, each with its diff and
either the test that should have caught it (none: a gap to close) or the written reason it
may live, from ``REASONS`` below. Mutants that only change the text of an error message are
counted apart: the message is for people, its code and counter are what tests check.

    python -m bench.mutate            # run, then write the report
    python -m bench.mutate --report   # write the report from the last run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "mutation.md"
MUTMUT = [sys.executable, "-m", "mutmut"]

REASONS: dict[str, str] = {
    # pattern on the mutant's name -> why a survivor there is acceptable
    "CryptoCoreǁhandle": "dispatch of requests the base already filtered (`handles`) and "
                         "bookkeeping of success counters; a wrong dispatch fails every "
                         "contract test that runs the real process",
    "Identityǁx25519_of": "the size and order of a cache of public-key conversions",
    "Identityǁgroup_": "group messages are not used by a service yet (issue 15)",
    "x__fits": "an early size check; the envelope encoder enforces the same limit",
    "x_info": "descriptive fields of a reply",
    "Identityǁseal__mutmut_65": "the boundary of an early size check (payload within 512 B "
                                "of the limit); the encoded size is checked exactly after it",
    "Refusedǁ__init__": "the text of a refusal; its reason (the counter) is tested",
    "Identityǁbind_transport__mutmut_7": "the text of a refusal; its reason is tested",
    "CryptoCoreǁ_do__mutmut_151": "crypto's clock in seconds as a float instead of an int: "
                                  "bounds move by under a second",
}


# -- the router (services/router/core.py and its parts) -------------------------------------------
# The security checks (what peers send: _deliver and what it calls, gossip.py, quota.py) have
# tests in tests/unit/test_router_*.py; a survivor there is listed below only when it cannot be
# told apart from the original (equivalent), with why. The rest is the router's own work on
# behalf of the local app (authenticated on the bus) and its own transport: scheduling,
# retries, paths, status; those run end to end in tests/e2e/ (real processes, which mutmut's
# copy of the tree does not reach).

_E2E_DELIVERY = ("tests/e2e/test_router.py (direct and relayed messages reach delivered then "
                 "read; kill -9 of the router mid-burst loses and duplicates nothing) and "
                 "tests/e2e/test_nat.py (ten percent loss each way loses no message)")
_E2E_PATHS = ("tests/e2e/test_nat.py (cone-to-cone punches a direct path; behind symmetric NATs "
              "messages go through the relay; a broken direct path falls back to the relay and "
              "comes back)")
_E2E_STATUS = ("tests/e2e/test_chat.py (status steps sent, delivered, read; send exit status)")
_E2E_DISCOVERY = ("tests/e2e/test_router.py (a node reaches a fourth node it was never told "
                  "about)")


def _each(function: str, numbers: str, reason: str) -> dict[str, str]:
    """One entry per mutant ``function__mutmut_N`` for the numbers listed."""
    return {f"{function}__mutmut_{n}": reason for n in numbers.split()}


_R = "xǁRouterCoreǁ"
REASONS.update({
    # whole functions that check nothing a peer sent
    f"{_R}_attempt__mutmut_": "sends or re-sends this node's own message (lifetime expiry, "
        "retry backoff 5 s doubling to 60 s, 2 s for the first 4 tries through a relay that "
        "has not said RELAYED (both tested in tests/unit/test_router_heal.py), re-signing "
        "for a new path, dial and punch); a "
        "wrong schedule delays or repeats our own sends, which receivers already absorb "
        "(a duplicate is acknowledged, not delivered twice); runs end to end in "
        + _E2E_DELIVERY,
    f"{_R}_resigned__mutmut_": "crypto's answer to re-signing our own message for a new path "
        "(stores the new envelope and sends it, or retries in 5 s); " + _E2E_PATHS,
    f"{_R}_sealed__mutmut_": "crypto's answer to sealing what the local app sent: the Pending "
        "record, the app's reply or failure, the accepted counter; " + _E2E_STATUS,
    f"{_R}_send__mutmut_": "router.send from the local app (authenticated on the bus): its "
        "argument errors, idempotent ids, the cap on open messages and the seal call; it "
        "guards nothing from peers; " + _E2E_STATUS + " and tests/unit/test_router_core.py "
        "(sending again with the same id)",
    f"{_R}_advance__mutmut_": "moves our own message's status and tells the app; which ACK "
        "or receipt may move it is decided before, in _on_ack and _on_receipt (tested); "
        + _E2E_STATUS,
    f"{_R}_read__mutmut_": "router.read from the local app: marks a message read and sends "
        "the receipt back (best effort), answers the app; " + _E2E_STATUS,
    f"{_R}_states__mutmut_": "router.outbox from the local app: the rows it asked for or the "
        "latest; " + _E2E_STATUS,
    f"{_R}_peer_up__mutmut_": "a path may have appeared: retries our waiting messages at once "
        "(else at their next retry, 5 s); " + _E2E_PATHS,
    f"{_R}_reroute__mutmut_": "a connection dropped: re-sends at once what was last sent over "
        "it and is unacknowledged (else at its next retry); " + _E2E_PATHS,
    f"{_R}_connect__mutmut_": "dials a known address of a node we want a direct path to, at "
        "most every 5 s; a dial only opens a connection the transport authenticates; "
        + _E2E_PATHS,
    f"{_R}_punch__mutmut_": "asks the transport to hole-punch to a node one relay away, with "
        "backoff; the punch's result is only a connection the transport authenticates; "
        + _E2E_PATHS,
    f"{_R}_punched__mutmut_": "the punch backoff (2 s doubling to 16 s) and the punches_direct "
        "and punches_failed counters; " + _E2E_PATHS,
    f"{_R}_path_event__mutmut_": "the router.path event to the app (direct or relayed, route, "
        "rtt); " + _E2E_PATHS,
    f"{_R}_connected__mutmut_": "records a connection our transport reports (address, rtt, "
        "the announcement to re-sign); the transport is a local service, its connections "
        "authenticated; " + _E2E_PATHS,
    f"{_R}_transport_event__mutmut_": "events of our own transport (a local service): peer "
        "connected, disconnected, stalled or answering again, our public address moved; "
        "path bookkeeping and saving peers with history, no check on what a peer sent (that "
        "a reconnect re-sends what went over the last connection is tested in "
        "tests/unit/test_router_heal.py); "
        + _E2E_PATHS,
    f"{_R}_peer_entries__mutmut_": "router.peers for the local app (fields of each entry); "
        + _E2E_DISCOVERY,
    f"{_R}_gossip_to__mutmut_": "the gossip this node sends (its own announcement and a "
        "sample of those it holds); what a receiver accepts is checked on the receiving side "
        "(_gossip_allowed, read_gossip, read_announce: tested); " + _E2E_DISCOVERY,
    f"{_R}_seal_announce__mutmut_": "the announcement this node signs about itself (name, "
        "addresses, neighbours; ttl 0 is not read for announcements, which are never "
        "forwarded); " + _E2E_DISCOVERY,
    f"{_R}next_deadline__mutmut_": "when on_timer runs next (before the node id is known: "
        "None while crypto is being asked, which ends with its answer or failure); scheduling",
    f"{_R}counters__mutmut_": "sys.status counters: with no topology yet its empty stats are "
        "merged either way (the `or True` mutant reads self.topo.stats only once topo is set "
        "in practice: counters are read after start)",
    f"{_R}queues__mutmut_": "sys.status queue sizes (known_peers before the node id is "
        "known)",
})
REASONS.update(_each(f"{_R}__init__", "10 20 21 23 25 27 28 29 30 34 36 37 38 39",
                     "initial values of timers and flags (first tick, announce, gossip and "
                     "liveness times; dirty flags), replaced at the first on_timer, which runs "
                     "at once; scheduling only"))
REASONS.update(_each(f"{_R}handle", "29 39", "`_asked_id = None` instead of False after crypto "
                     "failed: both falsy, equivalent"))
REASONS.update(_each(f"{_R}handle", "67 73", "`now` passed as None to _send / _read, which do "
                     "not read it: equivalent"))
REASONS.update(_each(f"{_R}handle", "83 84", "router.outbox from the local app: which rows it "
                     "gets; " + _E2E_STATUS))
REASONS.update(_each(f"{_R}handle", "89 94 95 96 97 99 100", "the 1 MiB bound of one "
                     "router.inbox reply to the local app (it pages with `after`); not a "
                     "check on peers; " + _E2E_STATUS))
REASONS.update(_each(f"{_R}handle", "130 131 133 134 135", "router.add_peer from the local "
                     "app naming this node itself: the fields of the refusal (the peer is not "
                     "added either way: _add_bootstrap skips this node's own id)"))
REASONS.update(_each(f"{_R}handle", "146 149", "router.add_peer from the local app: its reply, "
                     "and the immediate dial (on_timer dials bootstrap peers within a second "
                     "anyway)"))
REASONS.update(_each(f"{_R}handle", "171 172 173 174", "the base class's answer to inputs no "
                     "case matches: every request type in `handles` and every token of the "
                     "router's own calls has a case, so only unknown bus events reach it"))
REASONS.update(_each(f"{_R}on_timer", "3 12 22 23 24 25 26 27 28 29 30 31 34 35 36 37 38 43 "
                     "47 52 53 55 58 60 64 66 83", "scheduling of the "
                     "router's own work at each tick: retrying our messages, dialling "
                     "bootstrap peers, re-announcing, gossiping, liveness events; "
                     + _E2E_DELIVERY + "; " + _E2E_DISCOVERY))
REASONS.update(_each(f"{_R}on_timer", "96", "`<=` instead of `<` keeps a forwarding record "
                     "exactly 2 s old one tick longer; _forward treats it as expired either "
                     "way (`now - t < FORWARD_DEDUP_S`): equivalent"))
REASONS.update(_each(f"{_R}on_timer", "98 99 100 101", "housekeeping of the saved-peer table: "
                     "pruning again when nothing was added (idempotent) and its "
                     "saved_peers_pruned counter; the bound itself is tested "
                     "(test_strangers_are_not_saved_...: the store keeps 5)"))
REASONS.update(_each(f"{_R}on_timer", "109", "the inbox purge's cutoff 0.1% further back (a "
                     "window of 24 h 10 min kept 87 s longer): the safe side, replays are "
                     "refused by the freshness check on their timestamp (tested at its edges); "
                     "the purge only frees room"))
REASONS.update(_each(f"{_R}on_timer", "118 119 122 123 125 126", "purge of our own finished "
                     "messages from the outbox after their lifetime (and its counter); "
                     "storage of the local app's messages, not a check on peers"))
REASONS.update(_each(f"{_R}_started", "13", "forget_after_s × 1001 ms instead of 1000: peers "
                     "forgotten 0.1% later"))
REASONS.update(_each(f"{_R}_started", "21 66", "`=` instead of `+=` on a counter that is 0 "
                     "when the router starts (it starts once): equivalent"))
REASONS.update(_each(f"{_R}_started", "22 67", "the sign of a start-up counter "
                     "(saved_peers_pruned, restored_messages) shown by sys.status"))
REASONS.update(_each(f"{_R}_started", "27", "`break` instead of `continue` on this node's own "
                     "id among the saved peers: it is never saved (_add_bootstrap, _contact and "
                     "add_peer refuse it, the transport never connects to itself): equivalent"))
REASONS.update(_each(f"{_R}_started", "5", "the topology's own id keeps this node out of its "
                     "own table; the router never hands it its own id (_on_gossip drops our own "
                     "announcements first, nobody else can sign as this node, the transport "
                     "never reports itself as a peer)"))
REASONS.update(_each(f"{_R}_started", "35 36 37 38 39 40 41", "restores the contact flag of "
                     "the recipients of open messages; each was also saved with contact=1 when "
                     "the message was sent (_contact), and the loop above restores that, unless "
                     "more than max_saved_peers contacts were pruned since"))
REASONS.update(_each(f"{_R}_started", "42 43 44 45 46 47", "bootstrap peers from the config "
                     "file (the operator's own settings), added like router.add_peer"))
REASONS.update(_each(f"{_R}_started", "63 64", "attempts and next retry of our own messages "
                     "reloaded after a restart (retry backoff); " + _E2E_DELIVERY))
REASONS.update(_each(f"{_R}_started", "32", "a saved peer's first_seen_ms 0 instead of now: "
                     "it ranks only among eviction candidates, where it makes this peer (which "
                     "has history) look long known and evicted later"))
REASONS.update(_each(f"{_R}_add_bootstrap", "7", "a user-added peer's first_seen_ms 0 instead "
                     "of now: bootstrap peers are never evicted"))
REASONS.update(_each(f"{_R}_contact", "6", "a new contact's first_seen_ms 0 instead of now: "
                     "it only ranks the contact among eviction candidates, where contacts come "
                     "last anyway; it makes it look long known (kept longer)"))
REASONS.update(_each(f"{_R}_connected", "6", "a connected peer's first_seen_ms: connected "
                     "peers are never evicted; when the entry is new the transport reported a "
                     "connection; it ranks the peer later, among candidates once disconnected"))
REASONS.update(_each(f"{_R}_add_bootstrap", "14 20 21 22 23 24 25 26", "saving the peer the "
                     "user added so that it is dialled again after a restart (the user's own "
                     "configuration, not a check on peers)"))
REASONS.update(_each(f"{_R}_outgoing", "1 2", "finds our own message in memory else in the "
                     "outbox: reading it from the outbox each time gives the same recipient, "
                     "path and status (the store is updated with every change)"))
REASONS.update(_each(f"{_R}_outgoing", "8", "a receipt for a message already Read is loaded "
                     "and then refused by _advance as a stale update (counted) instead of "
                     "counted unknown: no status moves either way"))
REASONS.update(_each(f"{_R}_outgoing", "14 20 21", "created_ms and attempts of a message "
                     "reloaded for an ACK or receipt: only Delivered rows are loaded here (open "
                     "ones are all in memory since _started, Read and Failed ones are refused "
                     "by the `>= READ` check), and _attempt, the only reader of created_ms, "
                     "returns at once for them; attempts is only written back to the store, "
                     "which no reply shows"))
REASONS.update(_each(f"{_R}_forget", "1 4 7", "drops the dial, punch and stall state of "
                     "evicted peers; entries exist only for nodes this node dialled, punched or "
                     "was connected to (its own sends and connections), so a stranger cannot "
                     "grow them; a stale one delays one dial or punch of a re-learned node by "
                     "at most 16 s"))
REASONS.update(_each(f"{_R}_answered", "9 66 80 83 84 95 96 101 103 108 109 110 111 116 130 "
                     "211 218",
                     "dispatch of the answers to the router's own calls to the transport "
                     "(announce info and sealing, gossip and control sends, transport.peers, "
                     "connect, punch) and the <kind>_failures counters; the tokens are the "
                     "router's own, no check on a peer; " + _E2E_PATHS + "; "
                     + _E2E_DISCOVERY))
REASONS.update(_each(f"{_R}_transmitted", "4 16 17 18 19 20 21 23 24 25", "the "
                     "transport's answer to our own send: Sent, a retry in 0.5 s when it is "
                     "overloaded, or Failed on too_large, and the send_failures counter; "
                     "delivery bookkeeping, no check on a peer; " + _E2E_DELIVERY))
REASONS.update(_each(f"{_R}_transmitted", "48", "a hop our view holds connected is never in "
                     "_stalled (a stall sets it offline, and each way back online removes it), "
                     "so discarding None instead changes nothing: equivalent"))
_ANNOUNCE_DIRTY = ("our announcement is not re-signed at once after {what} (else at the next "
                   "change of our connections, which the dial or transport.peers that follows "
                   "brings, at the latest at the 60 s re-announce); it lists our neighbours "
                   "for others' routes, where only mutual edges count; discovery, not a check "
                   "on a peer; " + _E2E_DISCOVERY)
REASONS.update(_each(f"{_R}_transmitted", "49 50", _ANNOUNCE_DIRTY.format(
    what="a send found its hop gone")))
REASONS.update(_each(f"{_R}_transport_restarted", "20 21", _ANNOUNCE_DIRTY.format(
    what="the transport restarted")))
REASONS.update(_each(f"{_R}_transport_restarted", "12", "`set_connected(node, None)`: "
                     "None is falsy wherever `connected` is read (routes, neighbours, "
                     "`connected()`, `router.peers`): equivalent"))
REASONS.update(_each(f"{_R}_transport_restarted", "22", "`<=` instead of `<`: a delivered "
                     "message's next try is set to now too, but on_timer and _attempt skip "
                     "every message at DELIVERED or beyond: equivalent"))
REASONS.update(_each(f"{_R}_answered", "181", "`dialled=True` in the PeerConnected made up for "
                     "a peer transport.peers holds: _transport_event does not read `dialled`: "
                     "equivalent"))
REASONS.update(_each(f"{_R}_answered", "182", "`or` instead of `and`: the peer is always in "
                     "the table here (the PeerConnected just before adds it), so it differs "
                     "only when the transport has no rtt yet: the router then shows none "
                     "either (router.peers, path events) instead of its last one; display "
                     "only"))
REASONS.update(_each(f"{_R}_answered", "197", "`via[:2]`: a dial of a message's second hop "
                     "failing unavailable hurries that message too (one early try of our own "
                     "message); this node dials only its first hops and recipients, so it "
                     "cannot happen unless a second hop is also one of those"))
REASONS.update(_each(f"{_R}_answered", "198", "`<=` instead of `<`: a delivered message's "
                     "next try moves too, but on_timer and _attempt skip every message at "
                     "DELIVERED or beyond: equivalent"))
REASONS.update(_each(f"{_R}_answered", "204", "`now - 0.5` instead of `now + 0.5`: messages "
                     "are tried at on_timer's ticks (1 s apart), so the hurried try comes at "
                     "the next tick either way, or one tick earlier when the failure came "
                     "within 0.5 s before it; scheduling of our own retries"))
REASONS.update(_each(f"{_R}_answered", "93", "`assert a and b` weakened to `or`: in the "
                     "`announce if ok` case the event is a PeerReplied and topo is set: "
                     "equivalent"))
REASONS.update(_each(f"{_R}_answered", "33", "`now` passed as None to _opened, which does not "
                     "read it (its clock is self.now_ms()): equivalent"))
# equivalent mutants in the security checks
REASONS.update(_each(f"{_R}_deliver", "18", "`assert a and b` weakened to `or`: node_id and "
                     "topo are set together in _started, and handle fails every request "
                     "before: equivalent"))
REASONS.update(_each(f"{_R}_forward", "1", "`assert a and b` weakened to `or`: node_id and "
                     "topo are set together in _started: equivalent"))
REASONS.update(_each(f"{_R}_send", "2", "`assert a and b` weakened to `or`: both hold "
                     "(handle routes only rm.Send here, after the node id is known): "
                     "equivalent"))
REASONS.update(_each(f"{_R}_seal_announce", "1", "`assert a and b` weakened to `or`: both "
                     "set together in _started: equivalent"))
REASONS.update(_each(f"{_R}_deliver", "35 65 89", "`now` passed as None to _receive_chat, "
                     "_on_ack, _on_receipt or _on_gossip, which do not read it (their clock is "
                     "self.now_ms()): equivalent"))
REASONS.update(_each(f"{_R}_fresh", "11", "`>=` instead of `>` only names the refusal of a "
                     "timestamp equal to now, which is always fresh (the window contains "
                     "now): equivalent"))
REASONS.update(_each(f"{_R}_opened", "4 6 11", "a missing key in _opening: every open call is "
                     "made after its bytes were added under its key, and the same bytes are "
                     "never in flight twice (a copy whose bytes are being opened is counted a "
                     "duplicate), so the key is there: equivalent"))
REASONS.update(_each(f"{_R}_opened", "122", "`actions = ` instead of `+=` on an empty list: "
                     "equivalent"))
REASONS.update(_each(f"{_R}_control", "6", "every caller passes the proof (_ack, _forward's "
                     "RelayForwarded ACK, _read after its `if not proof` return), so `proof is "
                     "None` never holds: equivalent"))
REASONS.update(_each(f"{_R}_forward", "47", "the default time of a copy never forwarded, -1e9 "
                     "or -1000000001 s: either is over 2 s before any monotonic now: "
                     "equivalent"))
REASONS.update({
    "xǁRateLimitǁtake__mutmut_18": "pruning on every take of a known key too, not only when "
        "a new key meets the cap: the decisions are the same (a pruned bucket was full, and "
        "a missing bucket is taken as full), only the cost of a take grows",
    "xǁInboxQuotaǁ_move__mutmut_14": "deleting a row when its bytes reach 0 instead of its "
        "count: every message is charged at least ROW_OVERHEAD bytes, so both reach 0 "
        "together: equivalent",
    "x_announce_payload__mutmut_4": "use_bin_type=True is msgpack's default (msgpack >= 1.0): "
        "equivalent",
    "x_gossip_payload__mutmut_4": "use_bin_type=True is msgpack's default (msgpack >= 1.0): "
        "equivalent",
    "x_read_announce__mutmut_21": "raw=None is falsy, msgpack reads it as raw=False: "
        "equivalent",
    "x_read_announce__mutmut_23": "raw=False is msgpack's default (msgpack >= 1.0): "
        "equivalent",
    "x_read_gossip__mutmut_3": "raw=None is falsy, msgpack reads it as raw=False: equivalent",
    "x_read_gossip__mutmut_5": "raw=False is msgpack's default (msgpack >= 1.0): equivalent",
})


def matches(pattern: str, name: str) -> bool:
    """A pattern ending in a digit names one mutant (``..._mutmut_1`` is not ``_mutmut_12``);
    any other pattern is a part of the name (a function's mutants)."""
    return name.endswith(pattern) if pattern[-1:].isdigit() else pattern in name


def cosmetic(diff: str) -> bool:
    """True when the mutant only changes string literals (message text)."""
    minus = "".join(line[1:] for line in diff.splitlines()
                    if line.startswith("-") and not line.startswith("---"))
    plus = "".join(line[1:] for line in diff.splitlines()
                   if line.startswith("+") and not line.startswith("+++"))
    if not minus:
        return False
    literal = re.compile(r"""(?:[fbr]{0,2})("([^"\\]|\\.)*"|'([^'\\]|\\.)*')|None""")

    def bare(code: str) -> str:
        return re.sub(r"\s+", "", literal.sub("S", code)).replace("SS", "S")

    return bare(minus) == bare(plus)


def results() -> list[tuple[str, str]]:
    """(mutant, status) of every mutant not killed, from mutmut's last runs."""
    out = subprocess.run([*MUTMUT, "results"], cwd=ROOT, capture_output=True, text=True).stdout
    return [(name.strip(), status.strip()) for name, _, status in
            (line.rpartition(":") for line in out.splitlines()) if name.strip()]


def survivors(rows: list[tuple[str, str]]) -> list[str]:
    """Mutants no test noticed: survived, or run by no test at all (mutmut's "no tests": a
    function none of the selected tests reaches, e.g. new code without a test yet)."""
    return [name for name, status in rows if status in ("survived", "no tests")]


def show(name: str) -> str:
    """The mutant's diff: in-process through mutmut's own functions (pinned to mutmut 3;
    a subprocess per survivor takes minutes for a thousand), else ``mutmut show``."""
    try:
        from mutmut.__main__ import find_mutant
        from mutmut.mutation.diff_apply import get_diff_for_mutant
    except ImportError:
        return subprocess.run([*MUTMUT, "show", name], cwd=ROOT, capture_output=True,
                              text=True).stdout
    return get_diff_for_mutant(name, path=find_mutant(name).path)


def report() -> int:
    rows = results()
    names = survivors(rows)
    unchecked = sum(1 for _, status in rows if status == "not checked")
    by_file: Counter[str] = Counter()
    text_only: Counter[str] = Counter()
    explained: list[tuple[str, str, str]] = []
    gaps: list[tuple[str, str]] = []
    for name in names:
        module = name.split(".x")[0]
        by_file[module] += 1
        diff = show(name)
        if cosmetic(diff):
            text_only[module] += 1
            continue
        reason = next((r for pat, r in REASONS.items() if matches(pat, name)), None)
        body = "\n".join(line for line in diff.splitlines() if line[:1] in "+-" and
                         not line.startswith(("---", "+++")))
        if reason:
            explained.append((name, body, reason))
        else:
            gaps.append((name, body))
    lines = ["# Mutation testing of the security checks (`make mutate`)", "",
             "Generated by `bench/mutate.py` from the last `mutmut run` (settings in "
             "pyproject.toml, `[tool.mutmut]`). A surviving mutant is a change to the code "
             "that no test noticed.", "",
             "These are one-line mutations of the cores against the in-process tests. Whole "
             "wrong services (one rule of protocol.md broken each) against the black-box "
             "contract suites are in `tests/contract/mutant_services/`, checked by "
             "`tests/contract/test_mutants.py` (docs/contract.md, \"A test of the suites\").",
             "",
             "| module | survivors | of which message text only |", "|---|---|---|"]
    lines += [f"| `{m}` | {n} | {text_only[m]} |" for m, n in sorted(by_file.items())]
    if unchecked:
        lines += ["", f"**{unchecked} mutants were not run** (mutmut: not checked): run "
                  "`python -m bench.mutate` before reading this report."]
    lines += ["", f"## Survivors without a test or a reason: {len(gaps)}", ""]
    for name, body in gaps:
        lines += [f"- `{name}`", "", "```diff", body, "```", ""]
    lines += [f"## Survivors with a written reason: {len(explained)}", ""]
    for name, _body, reason in explained:
        lines += [f"- `{name}`: {reason}", ""]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"{len(names)} survivors: {sum(text_only.values())} message text only, "
          f"{len(explained)} with a reason, {len(gaps)} gaps, {unchecked} not run; report "
          f"in {REPORT}")
    return 1 if gaps or unchecked else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only write the report")
    args = ap.parse_args()
    if not args.report:
        rc = subprocess.run([*MUTMUT, "run"], cwd=ROOT).returncode
        if rc:
            return rc
    os.chdir(ROOT)  # mutmut's functions read its state from the working directory
    return report()


if __name__ == "__main__":
    sys.exit(main())
