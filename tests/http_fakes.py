"""Serving bytes from the local test HTTP servers the way a download host does (ranges included)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve_bytes(
    handler: BaseHTTPRequestHandler,
    data: bytes,
    honour_range: bool = True,
    headers: dict[str, str] | None = None,
    drop_after: int | None = None,
) -> None:
    """Answer a GET with ``data``: 206 from its ``Range: bytes=N-`` when ``honour_range`` (416 past the
    end), else 200; ``drop_after`` cuts the body after that many bytes and closes the connection, as
    an interrupted transfer."""
    start = 0
    match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
    if match and honour_range:
        start = int(match.group(1))
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        handler.send_response(200)
    body = data[start:]
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Accept-Ranges", "bytes")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if drop_after is not None:
        handler.wfile.write(body[:drop_after])
        handler.wfile.flush()
        handler.close_connection = True
        return
    handler.wfile.write(body)


@contextlib.contextmanager
def running_server(handler: type[BaseHTTPRequestHandler], state: Any = None) -> Iterator[str]:
    """Serve ``handler`` on a free port of 127.0.0.1 with ``server.state = state``; yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves ``server.state["data"]`` (with Range support) and counts requests in ``state["hits"]``."""

    def do_GET(self) -> None:
        self.server.state["hits"] += 1  # type: ignore[attr-defined]
        serve_bytes(self, self.server.state["data"])  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass
