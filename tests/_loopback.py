"""A chat-completions server on a real loopback socket, that can misbehave on purpose.

Unlike ``convmem.testing.FakeChatServer`` (an ``httpx`` transport), this one speaks HTTP/1.1
over TCP, so it can do what only a socket can: close before the headers, close in the middle of
a body, stall a stream until the client's read timeout fires, or not listen at all. Each
request takes the next scripted :class:`Act` (a normal reply when the script is empty) and the
request bodies are recorded. Error bodies are shaped like OpenAI's.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Shaped like the real error bodies of the OpenAI API.
ERRORS: dict[int, dict[str, Any]] = {
    # A 400 that is not a context overflow (an overflow is recovered by one retry; see
    # tests/test_providers.py).
    400: {
        "message": "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_type",
    },
    401: {
        "message": "Incorrect API key provided: sk-test. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    },
    429: {
        "message": "Rate limit reached for gpt-4o-mini in organization org-test on requests "
        "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    },
    500: {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    },
    503: {
        "message": "The engine is currently overloaded, please try again later.",
        "type": "server_error",
        "param": None,
        "code": None,
    },
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Act:
    """What the server does with one request.

    kind: ``reply`` (a completion, or a stream when the request asked for one), ``error``
    (``status``), ``raw`` (``body`` as is, ``content_type``), ``close`` (hang up before the
    headers), ``cut_body`` (headers, then part of the body, then hang up), ``stall`` (read the
    request, answer nothing for ``seconds``), ``sse`` (``events`` as SSE ``data:`` lines, then
    ``end``: ``done``, ``cut`` (hang up), ``stall``).
    """

    kind: str = "reply"
    text: str = "ok"
    tool_calls: list[dict[str, Any]] | None = None
    n: int = 1
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    events: list[str] = field(default_factory=list)
    end: str = "done"
    seconds: float = 5.0


def completion(
    text: str,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    n: int = 1,
    model: str = "gpt-4o-mini",
) -> dict[str, Any]:
    choices = []
    for i in range(n):
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if n > 1:
            message["content"] = f"{text} #{i}"
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "logprobs": None,
            }
        )
    return {
        "id": "chatcmpl-loop",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def chunks(text: str, *, tool_calls: list[dict[str, Any]] | None = None, n: int = 1) -> list[str]:
    """The SSE ``data:`` payloads of a streamed completion, as OpenAI sends them."""
    base = {
        "id": "chatcmpl-loop",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
    }
    out = []
    for i in range(n):
        piece = text if n == 1 else f"{text} #{i}"
        first: dict[str, Any] = {"role": "assistant", "content": "" if tool_calls else piece[:2]}
        out.append(
            json.dumps({**base, "choices": [{"index": i, "delta": first, "finish_reason": None}]})
        )
        if tool_calls:
            for k, call in enumerate(tool_calls):
                delta = {
                    "tool_calls": [
                        {
                            "index": k,
                            "id": call["id"],
                            "type": "function",
                            "function": call["function"],
                        }
                    ]
                }
                out.append(
                    json.dumps(
                        {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
                    )
                )
        elif piece[2:]:
            out.append(
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {"index": i, "delta": {"content": piece[2:]}, "finish_reason": None}
                        ],
                    }
                )
            )
        out.append(
            json.dumps(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {},
                            "finish_reason": "tool_calls" if tool_calls else "stop",
                        }
                    ],
                }
            )
        )
    usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    out.append(json.dumps({**base, "choices": [], "usage": usage}))
    return out


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        reader = sock.makefile("rb")
        while True:  # keep-alive: several requests per connection
            try:
                line = reader.readline()
            except OSError:
                return
            if not line:
                return
            headers: dict[str, str] = {}
            while True:
                h = reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            body = reader.read(int(headers.get("content-length", "0") or 0))
            try:
                request = json.loads(body) if body else {}
            except ValueError:
                request = {"raw": body.decode("utf-8", "replace")}
            act = self.server.owner.next_act(request)
            if not self._act(sock, act, request):
                return

    def _send(
        self, sock: socket.socket, status: int, body: bytes, ctype: str, extra: str = ""
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'X')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nx-request-id: req_loop\r\n{extra}\r\n"
        )
        sock.sendall(head.encode() + body)

    def _act(self, sock: socket.socket, act: Act, request: dict[str, Any]) -> bool:
        """Returns False when the connection must be dropped."""
        stop = self.server.owner.stop
        if act.kind == "close":
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if act.kind == "stall":
            stop.wait(act.seconds)
            return False
        if act.kind == "error":
            body = json.dumps({"error": ERRORS[act.status]}).encode()
            extra = "retry-after: 0\r\n" if act.status == 429 else ""
            self._send(sock, act.status, body, "application/json", extra)
            return True
        if act.kind == "raw":
            self._send(sock, act.status, act.body.encode(), act.content_type)
            return True
        if act.kind == "cut_body":
            data = json.dumps(completion(act.text)).encode()
            head = (
                f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n"
            )
            sock.sendall(head.encode() + data[: len(data) // 3])
            sock.shutdown(socket.SHUT_RDWR)
            return False
        streaming = bool(request.get("stream"))
        if act.kind == "reply" and not streaming:
            data = json.dumps(completion(act.text, tool_calls=act.tool_calls, n=act.n)).encode()
            self._send(sock, 200, data, "application/json")
            return True
        events = (
            act.events
            if act.kind == "sse"
            else chunks(act.text, tool_calls=act.tool_calls, n=act.n)
        )
        sock.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )

        def chunk(payload: bytes) -> None:
            sock.sendall(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        for ev in events:
            chunk(f"data: {ev}\n\n".encode())
            time.sleep(0.002)
        end = act.end if act.kind == "sse" else "done"
        if end == "cut":
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if end == "stall":
            stop.wait(act.seconds)
            return False
        chunk(b"data: [DONE]\n\n")
        sock.sendall(b"0\r\n\r\n")
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackServer


class LoopbackServer:
    """The server; ``url`` is its ``base_url``. Script it with :meth:`then`."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Act] = deque()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def then(self, *acts: Act) -> LoopbackServer:
        with self._lock:
            self._script.extend(acts)
        return self

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    def next_act(self, request: dict[str, Any]) -> Act:
        with self._lock:
            self.requests.append(request)
            return self._script.popleft() if self._script else Act()

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()
