"""A lock file held for one run: `flock` on a file that names its holder. The lock goes with the
process (kill -9 frees it); a second process waits up to `wait_seconds`, then gets an error that
names the holder, read from the file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, busy: Callable[[str], Exception], holder: str = "", wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold `path` exclusively, writing who holds it (`holder`, the pid and the time) into it; `busy(who)`
    is raised when another process still holds it after `wait_seconds`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise busy(handle.read().strip() or "another process") from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        stamp = f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
        handle.write(f"{holder} ({stamp})" if holder else stamp)
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
