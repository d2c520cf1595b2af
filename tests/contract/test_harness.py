"""The harness itself: an implementation that cannot start fails the fixture at once and
says why (its exit status and output), instead of a silent wait for its ping."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from .harness import IMPLEMENTATIONS, ImplementationFailed, prepare

CRASHES = "{python} -c 'import sys; print(\"cannot bind: no such directory\", " \
          "file=sys.stderr); sys.exit(3)' {role} {data} {endpoints}"
SILENT = "{python} -c 'import time; print(\"serving nothing\", flush=True); time.sleep(30)' " \
         "{role} {data} {endpoints}"


def test_an_implementation_that_exits_fails_at_once_with_its_status_and_output() -> None:
    node = prepare(CRASHES)
    try:
        start = time.monotonic()
        with pytest.raises(ImplementationFailed) as info:
            node.start("router")
        assert time.monotonic() - start < 5
        text = str(info.value)
        assert "exited with status 3" in text and "cannot bind: no such directory" in text
        assert "run directory" in text  # it never created it: the message says it must
    finally:
        node.stop()
        shutil.rmtree(node.data, ignore_errors=True)


def test_an_implementation_that_never_answers_fails_with_its_output() -> None:
    node = prepare(SILENT)
    try:
        with pytest.raises(ImplementationFailed) as info:
            node.start("router", timeout_s=1)
        text = str(info.value)
        assert "did not answer sys.ping" in text and "serving nothing" in text
    finally:
        node.stop()
        shutil.rmtree(node.data, ignore_errors=True)


def test_an_implementation_that_dies_during_the_suite_fails_the_next_check_at_once() -> None:
    node = prepare(IMPLEMENTATIONS["services"])
    try:
        node.start("crypto")
        node.check_alive()
        os.kill(node.proc("crypto").pid, signal.SIGKILL)
        node.proc("crypto").wait()
        with pytest.raises(ImplementationFailed) as info:
            node.check_alive()
        assert "exited with status -9" in str(info.value) and "serving on" in str(info.value)
    finally:
        node.stop()
        shutil.rmtree(node.data, ignore_errors=True)
