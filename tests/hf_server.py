"""A real OpenAI-compatible chat-completions server on loopback, for the tests of the ``openai`` backend.

It serves one local checkpoint through :func:`mirg_lib.generation.generate_batch` (the ``hf`` backend's
generation), reading the images back from their data URLs, so that its greedy replies can be compared with
the ``hf`` backend's. Like vLLM with ``skip_special_tokens: false`` it keeps the special tokens. It can be told
to fail: drop a connection before answering (``drop``), cut a reply short (``cut``), answer with JSON that is
not whole (``malformed``) or answer HTTP 503 (``busy``) at given request numbers, and to go down for good
(503 on every request) after some number of answered ones.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class HFServer:
    def __init__(self, checkpoint, faults: dict[int, str] | None = None, down_after: int | None = None, ignore_n: bool = False, port: int = 0):
        from mirg_lib.models import load_model, load_processor

        self.model = load_model(checkpoint)
        self.processor = load_processor(checkpoint)
        self.faults = dict(faults or {})
        self.down_after = down_after
        self.ignore_n = ignore_n
        self.port = port
        self.posts = 0  # every POST, failed ones too
        self.in_flight = self.most_in_flight = 0
        self.answered: list[str] = []  # the question text of every request answered
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._srv: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._srv is not None
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    def reply(self, body: dict) -> dict:
        from mirg_lib.generation import generate_batch
        from mirg_lib.prompts import user_turn

        content = body["messages"][-1]["content"]
        images = []
        for c in content:
            if c["type"] == "image_url":
                data = c["image_url"]["url"].split(",", 1)[1]
                images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        text = next(c["text"] for c in content if c["type"] == "text")
        n = 1 if self.ignore_n else int(body.get("n", 1))
        temperature = float(body.get("temperature", 1.0))
        with self._lock:  # one generation at a time
            texts = generate_batch(
                self.model, self.processor, [user_turn(len(images), text)] * n, [images] * n, max_new_tokens=int(body["max_tokens"]),
                temperature=temperature, do_sample=temperature > 0, batch_size=n, top_p=float(body.get("top_p", 1.0)), seed=body.get("seed"),
            )
            self.answered.append(text)
        return {"object": "chat.completion", "choices": [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]}

    def __enter__(self) -> HFServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                with server._count:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    self._post()
                finally:
                    with server._count:
                        server.in_flight -= 1

            def _post(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.posts += 1
                    k = server.posts
                    down = server.down_after is not None and len(server.answered) >= server.down_after
                fault = "busy" if down else server.faults.get(k)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "busy":
                    return self._send(503, json.dumps({"error": {"message": "the server is busy"}}).encode())
                body = json.loads(raw)
                server.bodies.append(body)
                payload = json.dumps(server.reply(body)).encode()
                if fault == "malformed":
                    return self._send(200, payload[: len(payload) // 2])
                if fault == "cut":  # headers promise the whole reply; half of it comes, then the connection closes
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.close_connection = True
                    return
                self._send(200, payload)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._srv.daemon_threads = True
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._srv is not None
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)
