"""Exclusive locks on folders that one process at a time may write (a fold being trained).

A lock is an ``flock`` on a ``.lock`` file in the folder. The kernel drops it when the holding
process ends, however it ends, so the lock of a process that was killed is taken over without
anyone deleting a file. Linux carries ``flock`` over NFS as a POSIX byte-range lock, so it holds
between machines that share ``AUTOSEG_RESULTS``, as the README suggests for running folds on several
machines. On a local disk the lock belongs to the open file; over NFS it belongs to the process, and
closing any other handle of the lock file in the holding process would release it: the holder never
opens its own lock file again (only processes that failed to take it read it). The file holds the
holder's host, PID and start time so that a refused process can say who holds it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from autoseg.errors import AutosegError
from autoseg.layout import LOCK

LOCK_NAME = LOCK
LOCK_ATTEMPTS = 4


def holder(folder: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of ``folder``, as written in its lock file."""
    try:
        info = json.loads((folder / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


def is_locked(folder: Path) -> bool:
    """True when another process holds ``folder``'s lock now (a dead holder's lock is free)."""
    import fcntl

    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, fix: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, or raise an :class:`AutosegError` that names the holder.

    ``what`` says what the folder is ("fold 3"), ``fix`` what to do when it is held."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_NAME, "a+")
    try:
        for attempt in range(LOCK_ATTEMPTS):  # a moment's shared lock of is_locked() elsewhere is no holder
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == LOCK_ATTEMPTS - 1:
                    raise AutosegError(f"{what} is in use by {_describe(holder(folder))}", folder, fix) from None
                time.sleep(0.05)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        yield
    finally:
        fh.close()  # closing the file releases the lock


def check_unlocked(folder: Path, what: str, fix: str) -> None:
    """Raise like :func:`folder_lock` when another process holds ``folder``'s lock now."""
    if is_locked(folder):
        raise AutosegError(f"{what} is in use by {_describe(holder(folder))}", folder, fix)
