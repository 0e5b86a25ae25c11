"""An OpenAI-compatible embeddings server in a process of its own, serving the built-in model, with failure switches.

Run as `python -m tests.support.embeddings_server --port 0`: it prints `listening on <port>` once it
accepts connections. `POST /v1/embeddings` answers OpenAI's shape; `POST /control` sets how the next
requests fail (`{"fail": "unavailable" | "rate_limit" | "wrong_size" | "wrong_count" | null,
"times": N, "retry_after": "1"}`); `GET /stats` counts what was asked. `EmbeddingsServer` starts and
stops it from a test or a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
START_SECONDS = 60
FAILURES = ("unavailable", "rate_limit", "wrong_size", "wrong_count")


class _State:
    def __init__(self, *, api_key: str | None, threads: int) -> None:
        from search.embedding.minilm import MiniLMEmbedder

        self.api_key = api_key
        self.embedder = MiniLMEmbedder(threads=threads)
        self.lock = threading.Lock()
        self.fail: str | None = None
        self.times = 0
        self.retry_after: str | None = None
        self.stats = {"requests": 0, "texts": 0, "failed": 0, "rate_limited": 0, "refused": 0}

    def next_failure(self) -> tuple[str | None, str | None]:
        with self.lock:
            if self.fail is None or self.times == 0:
                return None, None
            self.times -= 1
            return self.fail, self.retry_after


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK (40 ms on Linux), which a real server does not charge.
    disable_nagle_algorithm = True

    def log_message(self, format, *args) -> None:  # the tests' output stays readable
        pass

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"ok": True})
        elif self.path == "/stats":
            with self.state.lock:
                self._send(200, dict(self.state.stats))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        if self.path == "/control":
            control = self._body()
            with self.state.lock:
                self.state.fail = control.get("fail")
                self.state.times = int(control.get("times", 1_000_000))
                self.state.retry_after = control.get("retry_after")
            self._send(200, {"ok": True})
        elif self.path == "/v1/embeddings":
            self._embeddings()
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _embeddings(self) -> None:
        state = self.state
        request = self._body()
        with state.lock:
            state.stats["requests"] += 1
        if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            with state.lock:
                state.stats["refused"] += 1
            self._send(
                401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}}
            )
            return
        fail, retry_after = state.next_failure()
        if fail == "unavailable":
            with state.lock:
                state.stats["failed"] += 1
            self._send(503, {"error": {"message": "The model is overloaded."}})
            return
        if fail == "rate_limit":
            with state.lock:
                state.stats["rate_limited"] += 1
            self._send(
                429, {"error": {"message": "Rate limit reached."}}, {"Retry-After": retry_after or "1"}
            )
            return
        texts = request.get("input")
        if isinstance(texts, str):
            texts = [texts]
        vectors = state.embedder.embed(texts).tolist()
        if fail == "wrong_size":
            vectors = [vector[:-1] for vector in vectors]
        elif fail == "wrong_count":
            vectors = vectors[:-1]
        with state.lock:
            state.stats["texts"] += len(texts)
        self._send(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i, vector in enumerate(vectors)
                ],
                "model": request.get("model"),
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            },
        )


def serve(*, port: int, api_key: str | None, threads: int) -> None:
    _Handler.state = _State(api_key=api_key, threads=threads)
    _Handler.state.embedder.embed(["warm up"])  # the model loads before the first request is timed
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


class EmbeddingsServer:
    """The server above in a subprocess on a free loopback port; `url` is its OpenAI base URL (…/v1)."""

    def __init__(self, *, api_key: str | None = None, threads: int = 1) -> None:
        self.api_key = api_key if api_key is not None else secrets.token_hex(16)
        self.threads = threads
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def __enter__(self) -> EmbeddingsServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(BASE_DIR), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "tests.support.embeddings_server", "--port", str(self.port or 0)]
        command += ["--threads", str(self.threads), "--api-key", self.api_key]
        self.process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=START_SECONDS)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"The embeddings server did not start within {START_SECONDS}s") from None
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"The embeddings server did not start: {line!r}")
        self.port = int(line.split()[-1])

    def stop(self) -> None:
        """Stop the process; `start` again brings it back on the same port (an outage and a recovery)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.process = None

    def control(self, *, fail: str | None, times: int = 1_000_000, retry_after: str | None = None) -> None:
        if fail is not None and fail not in FAILURES:
            raise ValueError(f"fail must be one of {FAILURES}")
        self._post("/control", {"fail": fail, "times": times, "retry_after": retry_after})

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.root}/stats", timeout=10) as response:
            return json.load(response)

    def _post(self, path: str, body: object) -> None:
        request = urllib.request.Request(
            f"{self.root}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    serve(port=arguments.port, api_key=arguments.api_key, threads=arguments.threads)
