"""The identity key file: a raw 32-byte Ed25519 seed, readable by its owner only.

This module does file I/O and is used by the crypto shell (to load) and by ``tom init``
(to create); the crypto core receives the seed bytes, never the path.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

SEED_BYTES = 32


class KeyFileError(Exception):
    """The identity key file cannot be used; the message names the file and the fix."""


def create(path: Path) -> bool:
    """Create a new random seed at ``path`` (mode 0600, parents 0700) unless one exists.

    :returns: True if a new identity was created.
    """
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for d in reversed(missing):  # mkdir(parents=True) would ignore the mode for parents
        d.mkdir(mode=0o700, exist_ok=True)
    if path.exists():
        return False
    # write a complete seed under a temporary name, then link it into place: a crash or a
    # concurrent reader never sees a short file, and an existing identity is never replaced
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(SEED_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def load(path: Path) -> bytes:
    """Read the seed, refusing a file of the wrong size or one others can read."""
    fd, seed = _open(path)
    os.close(fd)
    return seed


def hold(path: Path) -> tuple[int, bytes]:
    """Read the seed and keep the file open with an exclusive lock for the process's life.

    The lock makes a second crypto service for the same identity fail clearly instead of
    both signing; the kernel releases it when the process ends, however it ends.
    :returns: the open descriptor (close it to release the lock) and the seed.
    """
    fd, seed = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise KeyFileError(f"identity key file {path} is held by another running crypto "
                           f"service; stop it first (tom node down)") from None
    return fd, seed


def _check_parent(path: Path) -> None:
    """The key's directory must be this user's and writable by nobody else: whoever can
    write there can swap the key for one they know."""
    st = os.stat(path.parent)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise KeyFileError(
            f"the directory of identity key file {path} ({path.parent}) is owned by uid "
            f"{st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: it must belong to this "
            f"user and not be writable by group or others (`chmod 700 {path.parent}`)")


def _open(path: Path) -> tuple[int, bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"identity key file {path} does not exist; create one with "
                           f"`tom init`") from None
    except OSError as e:
        raise KeyFileError(f"cannot open identity key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"identity key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyFileError(
                f"identity key file {path} belongs to uid {st.st_uid}, not to this user "
                f"({os.geteuid()}): a key another user could have planted or read is never "
                "used; move it away and run `tom init`, or run the node as its owner")
        _check_parent(path)
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"identity key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must "
                f"not be readable by group or others; fix it with `chmod 600 {path}`")
        seed = os.read(fd, SEED_BYTES + 1)
    except BaseException:
        os.close(fd)
        raise
    if len(seed) != SEED_BYTES:
        os.close(fd)
        raise KeyFileError(f"identity key file {path} holds {st.st_size} bytes, expected a "
                           f"raw {SEED_BYTES}-byte seed; restore the right file or move it "
                           f"away and run `tom init` for a new identity")
    return fd, seed
