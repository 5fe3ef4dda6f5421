"""A fault-injecting HTTP proxy on the loopback interface, in the manner of Toxiproxy, for reliability tests.

The proxy sits between the pipeline and a real server (an ``mlflow server`` in practice) and causes faults at
that boundary, so no test patches the code under test::

    with FaultProxy("http://127.0.0.1:5000") as proxy:
        client = MlflowClient(proxy.url)
        proxy.fail_next(2, status=503, path="/runs/create")
        ...
        assert proxy.count("/runs/create", forwarded=True) == 1

How it forwards: each client connection gets a handler thread and its own kept-alive upstream connection
(reopened when the upstream closed it while idle). A request is read whole (``Content-Length`` or chunked
body), sent upstream with ``Host`` rewritten to the upstream's, and the whole response is read and delivered
with a ``Content-Length``; client connections are kept alive. Bodies of a few MB are fine; streaming is not
supported (nothing is forwarded before it is complete).

Faults, settable at any time from any thread (``path`` is a regular expression searched in the request's
path without its query string, so a plain fragment such as ``"/runs/create"`` matches; ``method`` an HTTP
method; ``None`` matches everything):

- ``fail_next(n, status=503, path=None, method=None, skip=0)``: let ``skip`` matching requests pass, then
  answer the next ``n`` with ``status`` and a JSON error body; they are never forwarded. Rules are consumed in
  the order they were set.
- ``drop_after(path, method=None, skip=0)``: let ``skip`` matching requests through, forward the next one
  and deliver its response, then behave as if the server vanished: every later request, on a new or a
  kept-alive connection, is read and its connection reset (RST, no answer), and a forwarded request whose
  answer comes back after the vanish gets no answer either. Lasts until ``heal()``.
- ``cut_now()``: the same vanish, at once.
- ``delay(seconds, path=None, method=None)``: hold each matching request that long before forwarding it.
  ``held`` says how many requests are being held now; ``heal()`` releases them at once.
- ``heal()``: clear every rule above (a pending ``drop_after`` too) and release held requests.

Observability: ``log`` is a list of :class:`Exchange` ``(method, path, status, forwarded)``, in the order the
exchanges ended: ``status`` is what the client got (``None`` when its connection was reset instead),
``forwarded`` whether the request was sent upstream. ``count(...)`` and ``exchanges(...)`` filter it;
``clear_log()`` empties it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import socket
import socketserver
import struct
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from ops.servers import LOOPBACK

# never forwarded as received: connection-level headers, and those the proxy sets itself
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "content-length",
        "host",
    }
)


@dataclass(frozen=True)
class Exchange:
    """One request as the proxy handled it."""

    method: str
    path: str  # as the client sent it, query string included
    status: int | None  # what the client got; None: its connection was reset without an answer
    forwarded: bool  # whether the request was sent upstream


@dataclass
class _Rule:
    pattern: re.Pattern[str] | None
    method: str | None
    status: int = 0  # fail_next: the status to answer
    remaining: int = 0  # fail_next: how many more requests to answer
    seconds: float = 0.0  # delay: how long to hold
    skip: int = 0  # fail_next, drop_after: matching requests still to let through before acting

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.pattern is None or self.pattern.search(urllib.parse.urlsplit(path).path) is not None


def _rule(path: str | None, method: str | None, **kwargs) -> _Rule:
    return _Rule(re.compile(path) if path is not None else None, method, **kwargs)


class FaultProxy:
    """An HTTP proxy on a free loopback port in front of ``upstream_url``; a context manager."""

    def __init__(self, upstream_url: str, upstream_timeout: float = 300.0) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"an http://host:port upstream is needed, not {upstream_url!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._fails: list[_Rule] = []
        self._delays: list[_Rule] = []
        self._drop: _Rule | None = None
        self._cut = False
        self._held = 0
        self._release = threading.Event()  # set by heal() and stop(): held requests go on at once
        self._log: list[Exchange] = []
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._server: _Server | None = None
        self._serving: threading.Thread | None = None
        self.url = ""

    # --- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and serve in a background thread; ``url`` is then set."""
        self._server = _Server((LOOPBACK, 0), _Handler, self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._serving = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="faultproxy", daemon=True
        )
        self._serving.start()
        return self

    def stop(self) -> None:
        """Stop listening, close every client connection, wait for the handler threads."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._release.set()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked reading the next request
        for thread in threads:
            thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- faults -------------------------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, path: str | None = None, method: str | None = None, skip: int = 0
    ) -> None:
        """Let ``skip`` matching requests pass; answer the next ``n`` with ``status``, never forwarded."""
        with self._lock:
            self._fails.append(_rule(path, method, status=status, remaining=n, skip=skip))

    def drop_after(self, path: str, method: str | None = None, skip: int = 0) -> None:
        """Let ``skip`` matching requests through; forward the next one and deliver its answer, then vanish
        until ``heal()``."""
        with self._lock:
            self._drop = _rule(path, method, skip=skip)

    def cut_now(self) -> None:
        """Vanish now: reset every connection on its next request until ``heal()``."""
        with self._lock:
            self._cut = True

    def delay(self, seconds: float, path: str | None = None, method: str | None = None) -> None:
        """Hold each matching request ``seconds`` before forwarding it, until ``heal()``."""
        with self._lock:
            self._delays.append(_rule(path, method, seconds=seconds))

    def heal(self) -> None:
        """Clear every fault and release the requests being held."""
        with self._lock:
            self._fails.clear()
            self._delays.clear()
            self._drop = None
            self._cut = False
            release, self._release = self._release, threading.Event()
        release.set()

    @property
    def cut(self) -> bool:
        """Whether the proxy behaves as a vanished server now."""
        with self._lock:
            return self._cut

    @property
    def held(self) -> int:
        """How many requests a ``delay`` holds now."""
        with self._lock:
            return self._held

    # --- observability ------------------------------------------------------------------------------------

    @property
    def log(self) -> list[Exchange]:
        """A copy of every exchange so far, in the order they ended."""
        with self._lock:
            return list(self._log)

    def exchanges(
        self,
        path: str | None = None,
        method: str | None = None,
        *,
        forwarded: bool | None = None,
        status: int | None = None,
    ) -> list[Exchange]:
        """The exchanges matching ``path`` (a regular expression, as for the faults) and the other filters."""
        rule = _rule(path, method)
        return [
            e
            for e in self.log
            if rule.matches(e.method, e.path)
            and (forwarded is None or e.forwarded == forwarded)
            and (status is None or e.status == status)
        ]

    def count(self, path: str | None = None, method: str | None = None, **filters) -> int:
        """How many exchanges ``exchanges(path, method, **filters)`` lists."""
        return len(self.exchanges(path, method, **filters))

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- used by the handlers -----------------------------------------------------------------------------

    def _record(self, method: str, path: str, status: int | None, forwarded: bool) -> None:
        with self._lock:
            self._log.append(Exchange(method, path, status, forwarded))

    def _decide(self, method: str, path: str) -> tuple[str, int, float, threading.Event]:
        """``(action, status, delay, release)``; action: reset, fail, forward, trigger (forward, then cut)."""
        with self._lock:
            if self._cut:
                return "reset", 0, 0.0, self._release
            for rule in self._fails:
                if rule.remaining > 0 and rule.matches(method, path):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    rule.remaining -= 1
                    return "fail", rule.status, 0.0, self._release
            self._fails = [r for r in self._fails if r.remaining > 0]
            seconds = max((r.seconds for r in self._delays if r.matches(method, path)), default=0.0)
            if self._drop is not None and self._drop.matches(method, path):
                if self._drop.skip > 0:
                    self._drop.skip -= 1
                else:
                    self._drop = None
                    return "trigger", 0, seconds, self._release
            return "forward", 0, seconds, self._release

    def _answer_allowed(self, trigger: bool) -> bool:
        """After the upstream answered: may the client have it? The trigger of a drop vanishes the server."""
        with self._lock:
            if trigger:
                self._cut = True
                return True
            return not self._cut

    def _hold(self, seconds: float, release: threading.Event) -> None:
        with self._lock:
            self._held += 1
        try:
            release.wait(seconds)
        finally:
            with self._lock:
                self._held -= 1

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self._threads.add(threading.current_thread())
            else:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, handler, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        """A client that went away is no error of the proxy's; anything else is printed."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _UpstreamGone(Exception):
    def __init__(self, forwarded: bool) -> None:
        self.forwarded = forwarded


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the client
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream: http.client.HTTPConnection | None = None
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self.upstream is not None:
            self.upstream.close()
        self.server.proxy._track(self.connection, add=False)

    def log_message(self, format, *args) -> None:  # no access log on stderr
        pass

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # every method is proxied
            return self._proxy
        raise AttributeError(name)

    def _proxy(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        action, status, seconds, release = proxy._decide(method, path)
        if action == "reset":
            proxy._record(method, path, None, False)
            self._reset()
            return
        body = self._read_body()
        if action == "fail":
            proxy._record(method, path, status, False)
            error = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"faultproxy: injected {status}"}
            self._respond(status, [("Content-Type", "application/json")], json.dumps(error).encode())
            return
        if seconds > 0:
            proxy._hold(seconds, release)
        try:
            response, headers, content = self._forward(method, path, body)
        except _UpstreamGone as gone:
            proxy._record(method, path, None, gone.forwarded)
            self._reset()
            return
        if not proxy._answer_allowed(trigger=action == "trigger"):
            proxy._record(method, path, None, True)
            self._reset()
            return
        proxy._record(method, path, response.status, True)
        if action == "trigger":
            self.close_connection = True
        self._respond(response.status, headers, content, response.reason, head=method == "HEAD")

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[http.client.HTTPResponse, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        conn = self.upstream
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            conn.close()  # the upstream closed it while idle
        if conn is None:
            conn = self.upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
            )
        try:
            if conn.sock is None:
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            conn.close()
            raise _UpstreamGone(forwarded=False) from exc
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _UpstreamGone(forwarded=True) from exc
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        if method == "HEAD" and response.getheader("Content-Length") is not None:
            headers.append(("Content-Length", response.getheader("Content-Length")))
        return response, headers, content

    def _respond(
        self,
        status: int,
        headers: list[tuple[str, str]],
        content: bytes,
        reason: str | None = None,
        head: bool = False,
    ) -> None:
        if reason is None:
            try:
                reason = http.HTTPStatus(status).phrase
            except ValueError:
                reason = ""
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        if not head and not (100 <= status < 200 or status in (204, 304)):
            lines.append(f"Content-Length: {len(content)}")
        if self.close_connection:
            lines.append("Connection: close")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(payload + (b"" if head else content))
        self.wfile.flush()

    def _reset(self) -> None:
        """Close the client connection abruptly: an RST, no answer."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.server.proxy._track(sock, add=False)
            os.close(sock.detach())


def _dropped(sock: socket.socket) -> bool:
    """True when an idle connection is readable: the peer closed it (or sent something unasked)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
