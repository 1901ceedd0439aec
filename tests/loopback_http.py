"""HTTP servers on 127.0.0.1 for tests of HTTP clients: a JSON one (chat-completions client, recaptioner, LLM judge)
and a plain one serving bytes (the downloader: `LoopbackHttpServer`, `Route`).

For the JSON one the test supplies the behaviour: `on_post(body) -> (status, payload, headers)` and
`on_get(path) -> payload`; the server only does the plumbing. Use as a context manager; `url` ends in /v1.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = tuple[int, dict, dict]


class LoopbackJsonServer:
    def __init__(self, on_post: Callable[[dict, dict], Reply], on_get: Callable[[str], dict]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, reply: Reply):
                code, payload, headers = reply
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                self._reply((200, on_get(self.path), {}))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._reply(on_post(body, dict(self.headers)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackJsonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Route:
    """One response of `LoopbackHttpServer`: status, headers, and a body sent in `chunks` (each after `delay`
    seconds), so a test can serve slow, trickling, huge or truncated bodies."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict | None = None, delay: float = 0.0,
                 chunks: list[bytes] | None = None, content_length: bool = True):
        self.status, self.headers, self.delay = status, dict(headers or {}), delay
        self.chunks = chunks if chunks is not None else [body]
        self.content_length = content_length


class LoopbackHttpServer:
    """A plain HTTP server on 127.0.0.1 for downloader tests. `routes[path]` is a Route, or a callable
    `(attempt_number) -> Route` (fails-then-succeeds); unknown paths get 404. It records every request it receives
    (`requests`: (path, headers)), so a test can prove a blocked URL was never fetched."""

    def __init__(self, routes: dict):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = server.routes.get(self.path, Route(404, b"not found"))
                if callable(route):
                    route = route(sum(1 for p, _ in server.requests if p == self.path))
                try:
                    self.send_response(route.status)
                    for key, value in route.headers.items():
                        self.send_header(key, value)
                    if route.content_length:
                        self.send_header("Content-Length", str(sum(len(c) for c in route.chunks)))
                    else:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in route.chunks:
                        if route.delay:
                            self.wfile.flush()
                            time.sleep(route.delay)
                        self.wfile.write(chunk)
                    self.wfile.flush()
                    if not route.content_length:
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, byte cap)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # a short poll interval: shutdown() waits up to one, and every test starts and stops its own server
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackHttpServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
