"""A tiny OpenAI-compatible chat server on a real loopback socket, for the chat command's tests.

A subprocess (``convmem chat`` in a pseudo-terminal) cannot use the in-process
``convmem.testing.FakeChatServer``, so this one listens on 127.0.0.1. It answers
``POST /v1/chat/completions`` (streamed or not, with ``usage`` shaped as OpenAI sends it) with
``You said: <last user text>``; a message containing ``slow`` streams one word every 0.2 s,
long enough to press Ctrl-C in the middle. Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": []}).encode()
                self._send(200, body, "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(body)
                text = server.reply_to(body)
                if body.get("stream"):
                    self._stream(body, text)
                else:
                    self._send(
                        200, json.dumps(server.completion(body, text)).encode(), "application/json"
                    )

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, body: dict[str, Any], text: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                slow = "slow" in _last_user(body)
                try:
                    for chunk in server.chunks(body, text):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if slow:
                            time.sleep(0.2)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (Ctrl-C)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reply_to(self, body: dict[str, Any]) -> str:
        user = _last_user(body)
        if "slow" in user:
            return " ".join(["word"] * 40)
        return f"You said: {user}"

    def completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt = _prompt_tokens(body)
        completion = len(text.split())
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }

    def chunks(self, body: dict[str, Any], text: str) -> Iterator[dict[str, Any]]:
        base = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        words = text.split(" ")
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = self.completion(body, text)["usage"]
            yield {**base, "choices": [], "usage": usage}


def _last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) + 4 for m in body.get("messages") or [])
