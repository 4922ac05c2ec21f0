"""A tiny local HTTP server for tests: records requests, answers from a script.

``HttpSink()`` binds 127.0.0.1 on a free port; each request is recorded
(method, path, headers, body) and answered by ``answer(request)``, by default
``200 ok``. Used as a report sink, a worker's status/cancel URLs, a token
endpoint, or a server that fails a few times before it answers.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class HttpSink:
    def __init__(self, answer: Callable[[Seen], Answer] | None = None) -> None:
        self.seen: list[Seen] = []
        self.answer = answer or (lambda s: (200, {"Content-Type": "text/plain"}, b"ok"))
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(n))
                sink.seen.append(seen)
                status, headers, body = sink.answer(seen)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def do_DELETE(self) -> None:
                self._any()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
