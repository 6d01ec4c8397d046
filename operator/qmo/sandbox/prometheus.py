"""A stand-in for Prometheus' instant-query API (``GET /api/v1/query``), answering each query with a value
a test sets.

KEDA's Prometheus scaler sends the query text of a ScaledObject's trigger as it stands and reads one sample
from a vector result. kwok's serving pods report no load, so this plays the Prometheus that would scrape
vLLM: a test sets the value of the exact queries qmo renders (desired/autoscaling.load_query and friends)
and KEDA runs unchanged against it. A query no value was set for gets an empty vector, as Prometheus answers
for a series that does not exist (KEDA reads that as 0 with its default ``ignoreNullValues``).

Plain HTTP on 127.0.0.1: KEDA runs as a local process beside it (qmo.sandbox.keda).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class PrometheusStandIn:
    """``/api/v1/query`` on 127.0.0.1; ``set`` decides what each query returns."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.asked: Counter[str] = Counter()
        """How often each query was asked (by KEDA's operator, for its polling and for the HPA)."""
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = stand_in.respond(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set(self, query: str, value: float) -> None:
        with self._lock:
            self.values[query] = value

    def times_asked(self, query: str) -> int:
        with self._lock:
            return self.asked[query]

    def respond(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        url = urlparse(raw_path)
        if url.path != "/api/v1/query":
            return 404, {"status": "error", "errorType": "not_found", "error": f"no route {url.path}"}
        params = parse_qs(url.query)
        query = params.get("query", [""])[0]
        if not query:
            return 400, {"status": "error", "errorType": "bad_data", "error": "query is required"}
        with self._lock:
            self.asked[query] += 1
            value = self.values.get(query)
        result = [] if value is None else [{"metric": {}, "value": [time.time(), format(value, "g")]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
