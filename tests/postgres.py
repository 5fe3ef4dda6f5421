"""A PostgreSQL server for the tests: the local one when it answers, else a throwaway cluster.

``server()`` decides, from the environment, which server the tests use and yields a :class:`PgServer`:

- ``PIPELINE_TEST_PG=throwaway``: always a throwaway cluster;
- otherwise the server at ``PIPELINE_TEST_PG_URL`` (an admin URL such as
  ``postgresql://postgres@127.0.0.1:5432/postgres``; that one by default) when it answers, else a throwaway
  cluster.

``throwaway_cluster()`` runs ``initdb`` in a temporary directory (trust authentication, superuser
``postgres``), starts the server with ``pg_ctl -w start`` listening on 127.0.0.1 only, on a free port, with
its unix socket in that directory, and on exit stops it (``pg_ctl -m fast stop``) and removes the directory,
also when the block raised or the start failed. PostgreSQL refuses to run as root: as root, ``initdb`` and
``pg_ctl`` run as the ``postgres`` OS user (``runuser``), who owns the directory. The binaries come from
``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin`` (``make postgresql`` installs them when missing).

``fresh_database(admin_url)`` creates a uniquely named database on a server, yields its URL, and drops it
afterwards, terminating whatever is still connected. ``SharedServer`` starts ``server()`` lazily, once, for a
whole test session. Nothing here depends on pytest.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .sockets import LOOPBACK, free_port

DEFAULT_URL = f"postgresql://postgres@{LOOPBACK}:5432/postgres"
OS_USER = "postgres"  # who runs a throwaway cluster when we are root


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    url: str  # admin URL: superuser, database ``postgres``
    port: int
    directory: Path | None  # a throwaway cluster's temporary directory; None for a server found running

    @property
    def throwaway(self) -> bool:
        return self.directory is not None


def answers(url: str, timeout: int = 3) -> bool:
    """True when a PostgreSQL server at ``url`` accepts a connection and a query."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextmanager
def server(environ: Mapping[str, str] = os.environ) -> Iterator[PgServer]:
    """The server the tests use: the configured one when it answers (and no throwaway is forced), else one."""
    url = environ.get("PIPELINE_TEST_PG_URL") or DEFAULT_URL
    if environ.get("PIPELINE_TEST_PG", "").lower() != "throwaway" and answers(url):
        yield PgServer(url, urllib.parse.urlsplit(url).port or 5432, None)
        return
    with throwaway_cluster() as cluster:
        yield cluster


def bindir() -> Path:
    """The directory of ``initdb``: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        found = Path(done.stdout.strip())
        if (found / "initdb").exists():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb): run `make postgresql`")
    return Path(candidates[-1]).parent


@contextmanager
def throwaway_cluster(start_timeout: int = 60) -> Iterator[PgServer]:
    """A new cluster in a temporary directory on a free loopback port; stopped and removed on exit."""
    binaries = bindir()
    root = os.geteuid() == 0
    as_user = ["runuser", "-u", OS_USER, "--"] if root else []
    tmp = Path(tempfile.mkdtemp(prefix="thermo-pg-"))
    data, log = tmp / "data", tmp / "postgres.log"
    started = False
    try:
        if root:
            account = pwd.getpwnam(OS_USER)
            os.chown(tmp, account.pw_uid, account.pw_gid)
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        _run([*as_user, *initdb, "--locale=C", "--no-sync"], tmp)
        for attempt in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            options = (
                f"-c listen_addresses={LOOPBACK} -p {port} -c unix_socket_directories={tmp} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            start = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
            started = True
            try:
                _run([*as_user, *start, "-w", "-t", str(start_timeout), "start"], tmp)
                break
            except RuntimeError:
                _stop(as_user, binaries, data, tmp, "immediate")
                started = False
                if attempt == 2:
                    raise
        yield PgServer(f"postgresql://postgres@{LOOPBACK}:{port}/postgres", port, tmp)
    finally:
        if started:
            _stop(as_user, binaries, data, tmp, "fast")
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        log = cwd / "postgres.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


def _stop(as_user: list[str], binaries: Path, data: Path, cwd: Path, mode: str) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"],
            cwd=cwd,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )


@contextmanager
def fresh_database(admin_url: str, prefix: str = "thermo_test") -> Iterator[str]:
    """A new, uniquely named database on the server of ``admin_url``; its URL; dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    parts = urllib.parse.urlsplit(admin_url)
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class SharedServer:
    """``server()`` started on first use and kept until ``close()``: one server for a test session."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._server: PgServer | None = None

    def get(self) -> PgServer:
        with self._lock:
            if self._server is None:
                self._server = self._stack.enter_context(server(self._environ))
            return self._server

    def close(self) -> None:
        with self._lock:
            self._server = None
            self._stack.close()
