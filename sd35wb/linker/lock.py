"""One writer per run folder: an exclusive OS lock the kernel drops when its process dies."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from .report import LinkError

LOCK = ".sd35wb-links.lock"
LOCK_TIMEOUT = 600.0  # a sync of a huge sharded EMA may hold the lock for minutes


@contextmanager
def run_lock(run_dir: Path, timeout: float = LOCK_TIMEOUT):
    """Hold the run folder's exclusive lock (across processes and threads: one open file each)."""
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise LinkError(f"run: another sync of {run_dir} has held its lock for {timeout:.0f} s; "
                                "try again when it finishes", "run", 409)
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file itself stays (deleting it would race)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
