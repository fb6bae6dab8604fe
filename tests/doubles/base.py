"""The HTTP machinery the doubles share: a threaded server on a free loopback port, a request log, and
injected failures (`fail_next`) that answer before the double's own logic runs.

Standard library only (`http.server`), so a double behaves the same wherever the tests run. Responses
keep HTTP/1.1 semantics that clients rely on: Content-Length on plain answers, chunked transfer for
streams (a status 200 goes out before the first NDJSON line, as Ollama's does), request bodies read
whether sent with a length or chunked.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Reply:
    """What a double answers: a status, a body (dict/list → JSON, str → text, bytes as they are, None →
    empty), headers, or `stream` (chunks sent with chunked transfer encoding after the headers)."""

    status: int
    body: Any = None
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class Request:
    """One request as the double received it; `json` is the parsed body or None."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None


class DoubleServer:
    """Base of the doubles: `start()`, `stop()`, `url`, context manager, `requests`, `fail_next`."""

    server_name = "double"

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self._failures: dict[str, deque[Reply]] = defaultdict(deque)
        self._delays: dict[str, deque[float]] = defaultdict(deque)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # Lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        self._server = _Server(("127.0.0.1", 0), Handler)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            # A short poll interval: `stop()` waits for the next poll, and tests start and stop many doubles.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"{self.server_name}-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Test knobs --------------------------------------------------------------------------------------

    def fail_next(self, path: str, status: int, body: Any = None, *, times: int = 1) -> None:
        """Answer the next `times` requests to `path` with `status` and `body` instead of handling them
        (e.g. 503 twice, then the real answer). Failures queue up per path in the order given."""
        with self.lock:
            for _ in range(times):
                self._failures[path].append(Reply(status, body))

    def delay_next(self, path: str, seconds: float) -> None:
        """Hold the next request to `path` for `seconds` before answering it (a server busy loading)."""
        with self.lock:
            self._delays[path].append(seconds)

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    # Dispatch ----------------------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Reply:
        body: Any = request.json
        if body is None and request.raw:
            body = request.raw
        with self.lock:
            self.requests.append({"method": request.method, "path": request.path, "body": body})
            failures = self._failures.get(request.path)
            failure = failures.popleft() if failures else None
            delays = self._delays.get(request.path)
            delay = delays.popleft() if delays else 0.0
        if delay:
            time.sleep(delay)
        return failure if failure is not None else self.handle(request)

    def handle(self, request: Request) -> Reply:  # pragma: no cover - each double implements it
        raise NotImplementedError


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, closed stream) leaves a broken pipe behind: not the double's error.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: DoubleServer
    # Idle keep-alive connections close after a while, so no handler thread outlives a test for long.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        raw = self._read_body()
        request = Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, raw)
        try:
            reply = self.double._dispatch(request)
        except Exception as exc:  # noqa: BLE001 - a bug in a double must show up as a 500, not a hang
            reply = Reply(500, {"error": f"double crashed: {type(exc).__name__}: {exc}"})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.stream is not None and self.command != "HEAD":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for chunk in _chunks(reply.stream):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        payload = reply.payload()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


def _chunks(stream: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in stream:
        if chunk:
            yield chunk


def ndjson(*objects: Any) -> list[bytes]:
    """NDJSON lines, one chunk each."""
    return [json.dumps(obj).encode() + b"\n" for obj in objects]
