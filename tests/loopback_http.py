"""A JSON HTTP server on 127.0.0.1 for tests of HTTP clients (chat-completions client, recaptioner, LLM judge).

The test supplies the behaviour: `on_post(body) -> (status, payload, headers)` and `on_get(path) -> payload`;
the server only does the plumbing. Use as a context manager; `url` ends in /v1.
"""
from __future__ import annotations

import json
import threading
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
