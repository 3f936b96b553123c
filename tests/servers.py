"""Servers on 127.0.0.1 for the remote-reading tests: an HTTP file server with Range support that
counts what it serves and can misbehave on request, and moto's S3 API server."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    """What the server did, and how it is to misbehave."""

    requests: int = 0
    bytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    # fault modes: "404", "403", "ignore-range", "drop" (cut every body after drop_after bytes)
    fault: str = ""
    drop_after: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes, self.ranges = 0, 0, []


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: str = ""
    served: Served

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def _target(self) -> str | None:
        relative = self.path.split("?", 1)[0].lstrip("/")
        full = os.path.realpath(os.path.join(self.root, relative))
        if not full.startswith(os.path.realpath(self.root)) or not os.path.exists(full):
            return None
        return full

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        served = self.served
        with served.lock:
            served.requests += 1
        target = self._target()
        if served.fault in ("404", "403") or target is None:
            self._status(int(served.fault or 404))
            return
        if os.path.isdir(target):
            self._listing(target, body)
            return
        size = os.path.getsize(target)
        start, stop = 0, size
        match = _RANGE.match(self.headers.get("Range", ""))
        ranged = match is not None and served.fault != "ignore-range"
        if ranged and match is not None:
            start = int(match[1])
            stop = min(size, int(match[2]) + 1) if match[2] else size
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes" if served.fault != "ignore-range" else "none")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if body:
            self._send(target, start, stop)

    def _send(self, target: str, start: int, stop: int) -> None:
        served = self.served
        limit = stop - start
        if served.fault == "drop":
            limit = min(limit, served.drop_after)
        with served.lock:
            served.ranges.append((start, stop))
        sent = 0
        with open(target, "rb") as f:
            f.seek(start)
            while sent < limit:
                piece = f.read(min(1 << 20, limit - sent))
                try:
                    self.wfile.write(piece)
                except OSError:
                    break  # the client hung up
                sent += len(piece)
                with served.lock:
                    served.bytes += len(piece)
        if sent < stop - start:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)

    def _listing(self, folder: str, body: bool) -> None:
        names = sorted(os.listdir(folder))
        page = "".join(f'<a href="{n}">{n}</a>\n' for n in names).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request is what the fault tests do


@dataclass
class FileServer:
    url: str
    served: Served
    root: str


def serve_folder(root: str) -> Iterator[FileServer]:
    """An HTTP server for the files under `root`, on a free port of 127.0.0.1."""
    served = Served()
    handler = type("Handler", (_Handler,), {"root": root, "served": served})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", served, root)
    finally:
        server.shutdown()
        server.server_close()
