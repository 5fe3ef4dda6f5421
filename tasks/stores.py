"""The embedded SQLite stores' first use: one process at a time creates or migrates a store's schema.

MLflow (and Optuna) create their tables, then run their migrations, the first time a process opens a SQLite
file, with nothing between processes: flows started at the same moment on a fresh state directory all migrate
at once and some fail (``sqlite3.OperationalError: duplicate column name: step``). A process that may have to
create or migrate a store opens it holding ``<database>.lock``, next to the database (``tasks.tracking`` skips
the lock for a store already at MLflow's current schema); servers and PostgreSQL need no lock.

Standard library only (``fcntl.flock``: Linux and macOS), and importing it changes nothing.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A fresh store's migrations take seconds; a holder that keeps the lock this long is stuck, not busy.
LOCK_TIMEOUT = 120.0
_POLL = 0.02  # seconds between attempts while another process holds the lock


class StoreLockTimeout(TimeoutError):
    """Another process held a store's creation lock for longer than the timeout."""


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite URI (``sqlite:///relative.db``, ``sqlite:////absolute.db``), resolved
    against the working directory as SQLite would; None for an in-memory database or any other URI."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.split("+")[0] != "sqlite":
        return None
    path = rest.removeprefix("/").partition("?")[0]
    if path in ("", ":memory:"):
        return None
    return Path(path).resolve()


def lock_file(database: Path) -> Path:
    """The creation lock of a database file: ``mlflow.db.lock`` next to ``mlflow.db``."""
    return database.with_name(f"{database.name}.lock")


@contextmanager
def creating(uri: str, timeout: float = LOCK_TIMEOUT) -> Iterator[Path | None]:
    """Hold the creation lock of the store at ``uri`` while the body opens it; yield the lock file (None, and
    no lock, unless ``uri`` is a SQLite file).

    The lock is ``flock`` on a file that is never deleted: the kernel releases it when its holder exits, even
    by SIGKILL, so a crashed process leaves no stale lock behind.
    """
    database = sqlite_file(uri)
    if database is None:
        yield None
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    path = lock_file(database)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text().strip() or "unknown"
                    raise StoreLockTimeout(
                        f"process {holder} has held {path} for over {timeout:.0f} s while opening "
                        f"{database}; it is stuck: stop it (its lock goes with it)"
                    ) from None
                time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the message above
        yield path
    finally:
        os.close(fd)  # releases the lock
