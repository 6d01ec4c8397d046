"""vLLM's ``/metrics`` as tests need it: the text vLLM 0.25.1 (the pinned CPU engine) really served for a
tiny Llama, with the KV pool changed to what a test wants, and a real HTTP server answering with it.

The serving tier checks the operator's parser against a live vLLM, so the text here stays honest.
"""

from __future__ import annotations

import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REAL_METRICS = (Path(__file__).parent / "unit" / "golden" / "vllm-0.25.1-cpu-metrics.txt").read_text()
_CACHE_LINE = re.compile(r"^vllm:cache_config_info\{.*$", re.MULTILINE)


def with_pool(text: str, blocks: int, block_size: int = 16) -> str:
    """``text`` as a server whose KV pool is ``blocks`` blocks of ``block_size`` tokens reports it."""
    line = _CACHE_LINE.search(text)
    assert line is not None, "no vllm:cache_config_info line"
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line.group()))
    labels.update(
        num_gpu_blocks=str(blocks), block_size=str(block_size), kv_cache_size_tokens=str(blocks * block_size)
    )
    rendered = ",".join(f'{name}="{value}"' for name, value in labels.items())
    return text.replace(line.group(), f"vllm:cache_config_info{{{rendered}}} 1.0")


def loopback_address() -> str:
    """A random loopback address (all of 127/8 reaches this host), so its port 8000 is free."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class MetricsStandIn:
    """A real HTTP server where a pod would answer: ``/metrics`` with ``text``; ``failures`` 503s first."""

    def __init__(
        self, text: str, *, host: str = "127.0.0.1", port: int = 0, failures: int = 0, pieces: int = 1
    ) -> None:
        self.text, self.failures, self.requests = text, failures, 0
        # The body in this many writes, a moment apart: a client must read on until the end, as with a busy
        # server whose response arrives in several TCP segments.
        self.pieces = pieces
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                if outer.failures > 0:
                    outer.failures -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                body = outer.text.encode() if self.path == "/metrics" else b""
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                size = -(-len(body) // outer.pieces)
                for start in range(0, len(body), size):
                    if start:
                        self.wfile.flush()
                        time.sleep(0.05)
                    self.wfile.write(body[start : start + size])

        self.server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __enter__(self) -> MetricsStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
