"""A local stand-in for ZeroGPU's device API, the HTTP service ``spaces`` talks to
(``SPACES_ZERO_DEVICE_API_URL``): ``POST /startup-report``, ``/schedule``, ``/allow``,
``/release``, answered as spaces 0.51's client (``spaces/zero/api.py``) reads them.

It grants one GPU (index 0, always idle between calls) unless told to refuse the next
``/schedule``: ``"quota"`` answers 429 with the visitor's quota left and the wait (spaces:
"ZeroGPU quota exceeded"), ``"busy"`` answers 503 (spaces: "No GPU was available"). Every
request is recorded (path, query, headers, time) for the test to read.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class DeviceAPI:
    """The stub server, on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.refusals: list[str] = []  # what the next /schedule calls answer, in order
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with api._lock:
                    api.calls.append(
                        Call(url.path, query, {k.lower(): v for k, v in self.headers.items()})
                    )
                    refusal = (
                        api.refusals.pop(0) if url.path == "/schedule" and api.refusals else None
                    )
                if url.path == "/schedule":
                    if refusal == "quota":
                        self._json(429, {"left": 7, "wait": 600})
                    elif refusal == "busy":
                        self._json(503, {"detail": "no GPU available"})
                    else:
                        self._json(
                            200,
                            {
                                "idle": True,
                                "nvidiaIndex": 0,
                                "nvidiaUUID": "GPU-00000000-stub",
                                "allowToken": uuid.uuid4().hex,
                            },
                        )
                elif url.path in ("/startup-report", "/allow", "/release"):
                    self._json(200, {})
                else:
                    self._json(404, {"detail": "unknown path"})

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def named(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
