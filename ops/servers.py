"""Start, stop and find the local Prefect server and MLflow tracking server.

``python -m ops.servers up`` (``make ui``) starts both in the background on the stores that ``make run``
writes to, so earlier runs show up in both UIs; ``down`` (``make stop``) stops exactly those processes,
found through their state files in ``.run/``; ``status`` says what runs. The tests use the same functions
to start servers on free loopback ports with temporary stores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import tenacity

from tasks import environment
from tasks.environment import LOOPBACK, REPO_ROOT, Server, recorded, run_dir, server_file

BIN = Path(sys.executable).parent


def prefect_command(host: str, port: int) -> list[str]:
    """``prefect server start`` on ``host:port`` with analytics off."""
    return [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]


def prefect_env(home: Path | str, api_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Prefect server whose database lives in ``home`` (``<home>/prefect.db``).

    ``api_url`` is what its UI calls; without it the UI of a server on any port talks to 127.0.0.1:4200.
    """
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
        **(extra or {}),
    }
    env.pop("PREFECT_API_URL", None)
    return env


def mlflow_command(
    host: str, port: int, backend_uri: str, artifacts: Path | str, app: str | None = None
) -> list[str]:
    """``mlflow server`` with one worker, proxying artifacts from ``artifacts`` (``mlflow-artifacts:/``)."""
    cmd = [str(BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts)]
    return [*cmd, "--serve-artifacts", *(["--app-name", app] if app else [])]


def mlflow_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an MLflow server: no job execution (12 processes and 3 GB otherwise), no telemetry."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **(extra or {})}


def spawn(cmd: list[str], env: Mapping[str, str], log: Path, cwd: Path | str = REPO_ROOT) -> subprocess.Popen:
    """Start ``cmd`` in ``cwd`` (this checkout) in its own process group, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )


def until(condition: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Call ``condition`` every ``interval`` s until it is True (-> True) or ``timeout`` passes (-> False)."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda done: not done),
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(interval),
        retry_error_callback=lambda _: False,
    )(condition)


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Wait until ``url`` answers 2xx; fail early with the log's tail if the process exits first."""

    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[:3])} exited with {proc.returncode}:\n{_tail(log)}")
        try:  # a generous timeout: a busy machine answers late, and each retry would start the wait again
            with urllib.request.urlopen(url, timeout=15) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    if not until(answers, timeout, 0.3):
        raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not Path(log).exists():
        return ""
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])


def _group_gone(pid: int) -> bool:
    environment.alive(pid)  # reaps the leader if it is our child
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if until(lambda: _group_gone(pid), wait, 0.2):
            return


@contextmanager
def running(
    cmd: list[str], env: Mapping[str, str], log: Path, health: str, timeout: float = 120
) -> Iterator[subprocess.Popen]:
    """Run a server for the duration of a ``with`` block; it is stopped on exit, also on error."""
    proc = spawn(cmd, env, log)
    try:
        wait_http(health, timeout, proc, log)
        yield proc
    finally:
        stop_group(proc.pid)
        proc.wait(timeout=10)


@contextmanager
def dask_cluster(env: Mapping[str, str], logs: Path, workers: int = 2) -> Iterator[str]:
    """A real Dask cluster on loopback for a ``with`` block: ``dask scheduler`` on a free port and ``workers``
    single-thread ``dask worker`` processes, no dashboards; yields the scheduler's address."""
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    found = ["--scheduler-file", str(logs / "scheduler.json")]  # the scheduler writes its address there
    quiet = ["--host", LOOPBACK, "--no-dashboard"]
    procs = [spawn([dask, "scheduler", "--port", "0", *found, *quiet], env, logs / "scheduler.log")]
    try:
        procs += [
            spawn([dask, "worker", *found, "--nthreads", "1", *quiet], env, logs / f"worker-{i}.log")
            for i in range(workers)
        ]
        with Client(scheduler_file=found[1], timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for proc in reversed(procs):
            stop_group(proc.pid)


# --- the user's servers: state files in .run/ (read by tasks.environment) -----------------------------------


def local_stores(environ: Mapping[str, str] = os.environ) -> tuple[str, str, str]:
    """``(PREFECT_HOME, MLflow backend store URI, artifact directory)``: the stores ``make run`` writes to."""
    stores = {**environ, **environment.resolve({**environ, "PIPELINE_DETECT_SERVERS": "false"})}
    uri = stores["MLFLOW_TRACKING_URI"]
    if uri.startswith(("http://", "https://")) and not recorded("mlflow", environ):
        raise SystemExit(
            f"MLFLOW_TRACKING_URI={uri} already names a tracking server; unset it to serve the local store"
        )
    return stores["PREFECT_HOME"], uri, stores["PIPELINE_ARTIFACT_ROOT"]


def up(prefect_host: str, prefect_port: int, mlflow_host: str, mlflow_port: int) -> list[Server]:
    """Start both servers in the background on the local stores (unless running); wait until they answer."""
    home, backend, artifacts = local_stores()
    prefect_url = f"http://{_connect(prefect_host)}:{prefect_port}"
    mlflow_url = f"http://{_connect(mlflow_host)}:{mlflow_port}"
    specs = {
        "prefect": (
            prefect_command(prefect_host, prefect_port),
            prefect_env(home, f"{prefect_url}/api"),
            f"{prefect_url}/api",
            prefect_url,
        ),
        "mlflow": (
            mlflow_command(mlflow_host, mlflow_port, backend, artifacts),
            mlflow_env(),
            mlflow_url,
            mlflow_url,
        ),
    }
    started = []
    for name, (cmd, env, url, ui) in specs.items():
        server = recorded(name)
        if server is None:
            log = run_dir() / f"{name}.log"
            proc = spawn(cmd, env, log)
            server = Server(name=name, pid=proc.pid, url=url, ui=ui, log=str(log))
            server_file(name).write_text(json.dumps(asdict(server)))
        started.append(server)
    for server in started:
        wait_http(server.url.rstrip("/") + "/health", 120, None, Path(server.log))
    return started


def _connect(host: str) -> str:
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host


def down() -> list[str]:
    """Stop the servers that ``up`` started (by their recorded process groups); return what was stopped."""
    stopped = []
    for name in environment.SERVERS:
        if server := recorded(name):  # still running
            stop_group(server.pid)
            stopped.append(f"{name} (pid {server.pid})")
        server_file(name).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    """Command line: up, down, status."""
    parser = argparse.ArgumentParser(prog="python -m ops.servers", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--prefect-host", default=os.environ.get("PREFECT_HOST", LOOPBACK))
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("PREFECT_PORT", 4200)))
    parser.add_argument("--mlflow-host", default=os.environ.get("MLFLOW_HOST", LOOPBACK))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    args = parser.parse_args(argv)
    if args.command == "up":
        servers = up(args.prefect_host, args.prefect_port, args.mlflow_host, args.mlflow_port)
        for s in servers:
            print(f"{s.name:<8} {s.ui:<28} pid {s.pid:<8} log {os.path.relpath(s.log)}")
        print("make run, make worker and make deploy now use these servers; make stop stops them.")
    elif args.command == "down":
        stopped = down()
        print("stopped: " + ", ".join(stopped) if stopped else "no servers were running")
    else:
        for name in environment.SERVERS:
            s = recorded(name)
            state = f"{s.ui} (pid {s.pid}, log {os.path.relpath(s.log)})" if s else "not running"
            print(f"{name:<8} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
