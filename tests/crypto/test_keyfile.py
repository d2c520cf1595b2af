"""The identity key file: created private, refused when wrong, locked while in use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.crypto import keyfile
from shared.testing.prereq import require_root


def test_create_makes_a_private_file_and_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "identity.key"
    assert keyfile.create(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == 32
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    seed = keyfile.load(path)
    assert not keyfile.create(path) and keyfile.load(path) == seed  # kept, not replaced


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610])
def test_group_readable_file_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.key"
    keyfile.create(path)
    os.chmod(path, mode)
    with pytest.raises(keyfile.KeyFileError) as info:
        keyfile.load(path)
    assert str(path) in str(info.value) and f"chmod 600 {path}" in str(info.value)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "identity.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\x01" * size)
    os.close(fd)
    with pytest.raises(keyfile.KeyFileError) as info:
        keyfile.load(path)
    assert str(path) in str(info.value) and "32-byte" in str(info.value)


def test_missing_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(keyfile.KeyFileError, match="tom init"):
        keyfile.load(tmp_path / "nope.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(keyfile.KeyFileError):
        keyfile.load(tmp_path / "dir.key")


def test_a_held_key_cannot_be_held_twice(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    keyfile.create(path)
    fd, _ = keyfile.hold(path)
    try:
        with pytest.raises(keyfile.KeyFileError, match="another running crypto"):
            keyfile.hold(path)
    finally:
        os.close(fd)
    os.close(keyfile.hold(path)[0])


def tom(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=60)


def test_tom_id_is_stable_and_refuses_a_loose_key(tmp_path: Path) -> None:
    first = tom(tmp_path, "id")
    assert first.returncode == 1 and "tom init" in first.stderr
    init = tom(tmp_path, "init")
    assert init.returncode == 0
    ident = tom(tmp_path, "id").stdout.strip()
    assert len(ident) == 64 and ident in init.stdout
    assert tom(tmp_path, "init").returncode == 0 and tom(tmp_path, "id").stdout.strip() == ident
    os.chmod(tmp_path / "identity.key", 0o644)
    for args in (("id",), ("node", "up")):
        refused = tom(tmp_path, *args)
        assert refused.returncode == 1, refused
        assert f"chmod 600 {tmp_path / 'identity.key'}" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_key_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "identity.key"
    keyfile.create(real)
    (tmp_path / "node").mkdir(mode=0o700)
    link = tmp_path / "node" / "identity.key"
    link.symlink_to(real)
    with pytest.raises(keyfile.KeyFileError, match="cannot open"):
        keyfile.load(link)


def test_a_key_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    """A shared path (/tmp, a group directory) where someone else put a key they know."""
    require_root("give a file to another user")
    tmp_path.chmod(0o700)
    path = tmp_path / "identity.key"
    keyfile.create(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(keyfile.KeyFileError, match="belongs to uid 65534"):
        keyfile.load(path)


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702])
def test_a_key_in_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    node = tmp_path / "node"
    path = node / "identity.key"
    keyfile.create(path)
    node.chmod(mode)
    with pytest.raises(keyfile.KeyFileError, match="not be writable by group or others"):
        keyfile.load(path)


def test_a_data_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    from shared import endpoints

    require_root("give a directory to another user")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    with pytest.raises(endpoints.EndpointsError, match="owned by uid 65534"):
        endpoints.ensure_private_dir(run)
    (tmp_path / "file").write_text("")
    with pytest.raises(endpoints.EndpointsError, match="not a directory"):
        endpoints.ensure_private_dir(tmp_path / "file")
