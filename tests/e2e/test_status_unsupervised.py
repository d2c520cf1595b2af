"""`tom node status` of services that supervisord does not run (started by hand, compose,
systemd): the services' own answers over the bus; TOM_ENDPOINTS names the endpoints file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared import endpoints as ep

pytestmark = pytest.mark.slow


def tom(data: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_status_without_supervisord_and_tom_endpoints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "TOM_TRANSPORT__HOST": "127.0.0.1", "TOM_TRANSPORT__PORT": "0"}
    assert tom(data, "init", env=env).returncode == 0
    # the endpoints file elsewhere, found only through TOM_ENDPOINTS
    moved = tmp_path / "elsewhere.toml"
    shutil.move(data / "endpoints.toml", moved)
    env["TOM_ENDPOINTS"] = str(moved)
    log = open(tmp_path / "node.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services", "--data", str(data)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        st = tom(data, "node", "status", env=env)
        for _ in range(30):  # the services bind within a few seconds
            if st.returncode == 0:
                break
            st = tom(data, "node", "status", env=env)
        assert st.returncode == 0, st.stdout + st.stderr + (tmp_path / "node.log").read_text()
        assert "healthy" in st.stdout and "NOT healthy" not in st.stdout
        rows = json.loads(tom(data, "node", "status", "--json", env=env).stdout)
        assert {r["service"] for r in rows} == set(ep.ROLES)
        assert all(r["state"] == "RUNNING" and r["pid"] == proc.pid for r in rows), rows
        assert not (data / "endpoints.toml").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    st = tom(data, "node", "status", env=env)
    assert st.returncode != 0
