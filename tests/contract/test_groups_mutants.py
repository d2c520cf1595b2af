"""A test of the groups contract suite: it must fail deliberately wrong implementations.

Each mutant (tests/contract/groups_mutants/) is the real groups service with one rule broken. The
suite is run against it exactly as against any implementation, through
``TOM_CONTRACT_CMD``, and the checks named here must fail; the same checks must pass
against the unbroken service started through the same runner (the control), so a failure
is the mutation's doing. The whole suite can be run against a mutant by hand (see
groups_mutants/__init__.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = "tests/contract/test_groups_contract.py::TestGroupsRole::"
TEMPLATE = ("{python} -m tests.contract.groups_mutants %s {role} --data {data} "
            "--endpoints {endpoints}")

KILLED_BY: dict[str, list[str]] = {
    "orders_non_members": [
        "test_a_message_from_a_non_member_is_refused_not_ordered_and_counted"],
    "ignores_signatures": [
        "test_a_forged_message_from_a_member_is_not_ordered_and_counted_rejected_forged"],
    "forgets_cursor": [
        "test_the_inbox_cursor_survives_a_kill_and_nothing_is_handled_twice"],
    "replies_before_storing": [
        "test_send_stores_before_it_replies_kill_9_after_the_reply_and_it_still_goes_out"],
    "wrong_error_code": [
        "test_send_checks_its_text_16_kib_is_accepted_more_is_too_large"],
    "admits_uninvited": [
        "test_a_join_from_a_node_not_invited_is_refused_and_not_ordered"],
    "keys_in_the_clear": [
        "test_sender_keys_go_sealed_through_router_send_to_members_only"],
    "trusts_any_sender_of_entries": [
        "test_a_member_applies_only_its_hubs_entries_and_in_their_order"],
    "uncounted_garbage": [
        "test_garbage_payloads_are_counted_rejected_malformed_and_the_service_keeps_serving"],
}
"""mutant -> the checks of the suite that must fail against it."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("TOM_CONTRACT_CMD")),
                       reason="checks the suite against our service's mutants, not the "
                       "implementation in TOM_CONTRACT_CMD"),
]


def run_suite(mutant: str, tests: list[str]) -> tuple[int, str, set[str]]:
    """Run ``tests`` of the groups suite against ``mutant``: (exit status, output, the
    names of the tests that failed)."""
    env = {**os.environ, "TOM_CONTRACT_CMD": TEMPLATE % mutant}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *(SUITE + t for t in tests)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    failed = set(re.findall(r"^FAILED \S+::(\w+)\[", out, re.M))
    return proc.returncode, out, failed


@pytest.mark.parametrize("mutant", sorted(KILLED_BY))
def test_the_groups_suite_fails_a_wrong_implementation(mutant: str) -> None:
    code, out, failed = run_suite(mutant, KILLED_BY[mutant])
    assert code == 1, out[-3000:]
    assert set(KILLED_BY[mutant]) <= failed, out[-3000:]


def test_the_same_checks_pass_against_the_real_service_through_the_mutant_runner() -> None:
    tests = sorted({t for ts in KILLED_BY.values() for t in ts})
    code, out, failed = run_suite("none", tests)
    assert code == 0 and not failed, out[-3000:]
