"""A test of the contract suites: each must fail deliberately wrong implementations.

Each mutant (tests/contract/mutant_services/) is our real service with one rule of docs/protocol.md
broken. The suite is run against it exactly as against any implementation, through
``TOM_CONTRACT_CMD``: the whole part of the role's suite that checks that rule (its class:
the role's behaviour, ``Test<Role>Role``, or the bus contract every role keeps,
``Test<Role>Contract``), never a hand-picked test. That run must fail, and among its failures
must be the checks named here, so each mutant is known to be caught for its own reason
rather than, say, because it did not start. The same classes must pass against the
unbroken service started through the same runner (the control, ``ROLE.none``).

The runs are independent processes (their own data directories, endpoints and UDP ports), so
they run ``TOM_MUTANT_JOBS`` at a time (default: the CPU count, 2 to 4); each test waits
for its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ("{python} -m tests.contract.mutant_services %s {role} --data {data} "
            "--endpoints {endpoints}")
RUN_TIMEOUT_S = 600

KILLED_BY: dict[str, list[str]] = {
    # crypto
    "crypto.opens_forgeries": [
        "TestCryptoRole::test_open_failures_are_specific_and_counted",
        "TestCryptoRole::test_open_with_ack_via_signs_nothing_for_a_forged_envelope"],
    "crypto.signs_for_others": ["TestCryptoRole::test_sign_refuses_another_nodes_envelope"],
    "crypto.acks_without_proof": [
        "TestCryptoRole::test_no_ack_without_the_envelope_it_acknowledges",
        "TestCryptoRole::test_no_read_receipt_for_a_message_to_another_node"],
    "crypto.signs_any_timestamp": [
        "TestCryptoRole::test_own_envelopes_only_with_a_current_timestamp"],
    "crypto.wrong_error_codes": ["TestCryptoRole::test_open_failures_are_specific_and_counted"],
    "crypto.uncounted_rejections": [
        "TestCryptoRole::test_open_failures_are_specific_and_counted"],
    "crypto.loose_key_file": [
        "TestCryptoRole::"
        "test_refuses_to_start_with_a_key_file_others_can_read_or_of_another_size"],
    "crypto.no_key_lock": [
        "TestCryptoRole::test_a_second_crypto_for_the_same_identity_refuses_to_start"],
    "crypto.frozen_status": ["TestCryptoContract::test_status_counts_frames"],
    # router: the suite plays its transport (transport_side.py), its crypto is the real one
    "router.routes_nothing": [
        "TestRouterRole::test_send_goes_only_to_the_first_hop_of_via_toward_a_node_behind_a_relay",
        "TestRouterRole::test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack"],
    "router.ignores_via": [
        "TestRouterRole::test_send_goes_only_to_the_first_hop_of_via_toward_a_node_behind_a_relay"],
    "router.commits_later": [
        "TestRouterRole::"
        "test_a_chat_is_stored_before_deliver_is_answered_kill_9_after_the_reply_keeps_it",
        "TestRouterRole::"
        "test_send_stores_before_it_replies_kill_9_and_it_goes_out_after_the_restart"],
    "router.ignores_signatures": [
        "TestRouterRole::"
        "test_forged_unsigned_and_tampered_envelopes_are_refused_counted_never_stored",
        "TestRouterRole::test_relays_only_along_via_from_the_previous_hop_to_the_next",
        "TestRouterRole::test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack"],
    "router.no_re_ack": [
        "TestRouterRole::"
        "test_a_new_chat_is_published_once_and_a_duplicate_is_acknowledged_again"],
    "router.never_retries": [
        "TestRouterRole::test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack"],
    "router.retries_without_backoff": [
        "TestRouterRole::test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack"],
    "router.trusts_any_ack": [
        "TestRouterRole::test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack"],
    "router.open_relay": [
        "TestRouterRole::test_relays_only_along_via_from_the_previous_hop_to_the_next"],
    "router.relays_from_any_hop": [
        "TestRouterRole::test_relays_only_along_via_from_the_previous_hop_to_the_next"],
    "router.wrong_error_codes": ["TestRouterRole::test_requests_fail_with_their_error_codes"],
    "router.counters_frozen": [
        "TestRouterRole::"
        "test_forged_unsigned_and_tampered_envelopes_are_refused_counted_never_stored",
        "TestRouterRole::test_relays_only_along_via_from_the_previous_hop_to_the_next"],
    "router.reads_the_key": ["TestRouterRole::test_only_crypto_opens_the_identity_key"],
    # transport: its router played by the suite (router_side.py), the other node by a QUIC
    # endpoint in the test (quic_peer.py)
    "transport.accepts_any_binding": [
        "TestTransportRole::test_a_peer_that_cannot_prove_its_id_is_refused_and_counted"],
    "transport.trusts_the_address": [
        "TestTransportRole::test_connect_is_answered_once_the_node_dialled_has_proven_its_id"],
    "transport.reorders_deliveries": [
        "TestTransportRole::"
        "test_a_peer_that_proves_its_id_is_connected_and_order_is_kept_both_ways"],
    "transport.delivers_nothing": [
        "TestTransportRole::"
        "test_a_peer_that_proves_its_id_is_connected_and_order_is_kept_both_ways"],
    "transport.uncounted_auth_failures": [
        "TestTransportRole::test_a_peer_that_cannot_prove_its_id_is_refused_and_counted"],
    "transport.reads_the_key": ["TestTransportRole::test_only_crypto_opens_the_identity_key"],
    # backup: alone, its router played by the suite (router_for_backup.py)
    "backup.ignores_signatures": [
        "TestBackupRole::test_refuses_what_its_sender_did_not_sign_or_did_not_seal"],
    "backup.replies_before_storing": [
        "TestBackupRole::test_it_stores_before_it_answers_kill_9_after_the_reply_keeps_the_copy"],
    "backup.wrong_error_codes": [
        "TestBackupRole::test_refuses_what_its_sender_did_not_sign_or_did_not_seal"],
    "backup.uncounted_refusals": [
        "TestBackupRole::test_refuses_what_its_sender_did_not_sign_or_did_not_seal"],
    "backup.deletes_on_any_ack": [
        "TestBackupRole::test_only_the_recipients_signed_ack_deletes_a_copy",
        "TestBackupRole::"
        "test_a_recipients_ack_passing_by_ends_the_copy_and_is_kept_for_the_origin"],
    "backup.never_passes_on": [
        "TestBackupRole::test_gives_a_node_that_is_back_what_it_holds_for_it"],
    "backup.keeps_expired": ["TestBackupRole::test_an_expired_copy_is_deleted_and_announced"],
    "backup.reads_the_key": ["TestBackupRole::test_only_crypto_opens_the_identity_key"],
    # groups: the suite plays its router and crypto (groups_side.py)
    "groups.orders_non_members": [
        "TestGroupsRole::test_a_message_from_a_non_member_is_refused_not_ordered_and_counted"],
    "groups.ignores_signatures": [
        "TestGroupsRole::"
        "test_a_forged_message_from_a_member_is_not_ordered_and_counted_rejected_forged"],
    "groups.forgets_cursor": [
        "TestGroupsRole::test_the_inbox_cursor_survives_a_kill_and_nothing_is_handled_twice"],
    "groups.replies_before_storing": [
        "TestGroupsRole::"
        "test_send_stores_before_it_replies_kill_9_after_the_reply_and_it_still_goes_out"],
    "groups.wrong_error_code": [
        "TestGroupsRole::test_send_checks_its_text_16_kib_is_accepted_more_is_too_large"],
    "groups.admits_uninvited": [
        "TestGroupsRole::test_a_join_from_a_node_not_invited_is_refused_and_not_ordered"],
    "groups.keys_in_the_clear": [
        "TestGroupsRole::test_sender_keys_go_sealed_through_router_send_to_members_only"],
    "groups.trusts_any_sender_of_entries": [
        "TestGroupsRole::test_a_member_applies_only_its_hubs_entries_and_in_their_order"],
    "groups.uncounted_garbage": [
        "TestGroupsRole::"
        "test_garbage_payloads_are_counted_rejected_malformed_and_the_service_keeps_serving"],
    "groups.reads_the_key": ["TestGroupsRole::test_only_crypto_opens_the_identity_key"],
}
"""``ROLE.MUTANT`` -> the checks (``Class::test``) that must fail against it; the run
covers every test of those classes."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("TOM_CONTRACT_CMD")),
                       reason="checks the suites against our services' mutants, not the "
                       "implementation in TOM_CONTRACT_CMD"),
]


def suite_of(role: str) -> str:
    return f"tests/contract/test_{role}_contract.py"


def classes(checks: list[str]) -> list[str]:
    return sorted({c.split("::")[0] for c in checks})


def controls() -> dict[str, list[str]]:
    """role -> every class some mutant of that role is checked against."""
    out: dict[str, set[str]] = {}
    for name, checks in KILLED_BY.items():
        out.setdefault(name.split(".")[0], set()).update(classes(checks))
    return {role: sorted(cs) for role, cs in out.items()}


def run_suite(mutant: str, role: str, selected: list[str]) -> tuple[int, str, set[str]]:
    """Run the classes ``selected`` of ``role``'s suite against ``mutant``: (exit status,
    output, the ``Class::test`` names that failed; setup errors are not failures)."""
    env = {**os.environ, "TOM_CONTRACT_CMD": TEMPLATE % mutant}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                               *(f"{suite_of(role)}::{c}" for c in selected)],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        return -1, f"the suite did not finish within {RUN_TIMEOUT_S} s\n{out}", set()
    out = proc.stdout + proc.stderr
    failed = {f"{c}::{t}" for c, t in re.findall(r"^FAILED \S+::(\w+)::(\w+)\[", out, re.M)}
    return proc.returncode, out, failed


def _job(key: str) -> tuple[int, str, set[str]]:
    if key.endswith(".none"):
        role = key.split(".")[0]
        return run_suite(key, role, controls()[role])
    return run_suite(key, key.split(".")[0], classes(KILLED_BY[key]))


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> dict[str, Future[tuple[int, str, set[str]]]]:
    """Every run this session selected, started at once, ``TOM_MUTANT_JOBS`` at a time."""
    keys = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None:
            keys.append(callspec.params.get("mutant") or f"{callspec.params['role']}.none")
    jobs = os.environ.get("TOM_MUTANT_JOBS") or max(2, min(4, os.cpu_count() or 2))
    pool = ThreadPoolExecutor(int(jobs))
    request.addfinalizer(lambda: pool.shutdown(wait=False, cancel_futures=True))
    return {k: pool.submit(_job, k) for k in keys}


@pytest.mark.parametrize("mutant", sorted(KILLED_BY))
def test_the_suite_fails_a_wrong_implementation(
        mutant: str, runs: dict[str, Future[tuple[int, str, set[str]]]]) -> None:
    code, out, failed = runs[mutant].result()
    assert code == 1, out[-4000:]
    missing = set(KILLED_BY[mutant]) - failed
    assert not missing, f"{mutant} was not caught by {sorted(missing)}:\n{out[-4000:]}"


@pytest.mark.parametrize("role", sorted(controls()))
def test_the_same_classes_pass_against_the_real_service_through_the_mutant_runner(
        role: str, runs: dict[str, Future[tuple[int, str, set[str]]]]) -> None:
    code, out, failed = runs[f"{role}.none"].result()
    assert code == 0 and not failed, out[-4000:]
