"""A scripted fake of the OpenAI chat-completions API, for testing chat loops offline.

:class:`FakeChatServer` answers at the HTTP transport (an ``httpx2.MockTransport``), so the real
``openai`` SDK builds the request, parses the reply, decodes the stream and raises its own
exceptions exactly as it would against a real server. Queue the replies a test expects, run the
code under test, then assert on the exact request bodies it sent::

    import openai
    from convmem.testing import FakeChatServer

    def ask(client: openai.OpenAI, history: list[dict], text: str) -> str:
        history.append({"role": "user", "content": text})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=history)
        answer = reply.choices[0].message.content or ""
        history.append({"role": "assistant", "content": answer})
        return answer

    def test_my_loop_remembers() -> None:
        server = FakeChatServer().reply("Hi Ada!").reply("Your name is Ada.")
        client = server.client()
        history: list[dict] = []
        ask(client, history, "I am Ada")
        assert ask(client, history, "Who am I?") == "Your name is Ada."
        assert server.messages(-1)[0] == {"role": "user", "content": "I am Ada"}
        server.assert_all_used()

One queued item answers one HTTP request, first in first out. A request that finds the queue
empty gets HTTP 500 (``openai.InternalServerError``) saying ``FakeChatServer: no reply queued``,
so a test that makes one call too many fails loudly. Clients are built with ``max_retries=0``
so each SDK call is exactly one request.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import anyio
import httpx2
import openai

from .errors import UsageError

__all__ = [
    "CREATED",
    "ChoiceSpec",
    "FakeChatServer",
    "ToolCallSpec",
    "estimate_tokens",
]

#: The ``created`` timestamp of every fake response (fixed, so outputs are deterministic).
CREATED = 1_700_000_000

_CHAT_PATH = "/chat/completions"

UsageSpec: TypeAlias = "Mapping[str, Any] | Literal[False] | None"
ToolCallLike: TypeAlias = "ToolCallSpec | Mapping[str, Any]"


def estimate_tokens(text: str) -> int:
    """The fake server's deterministic token estimate for a piece of text: ``len(text) // 4``.

    It is not a tokenizer: it only makes default ``usage`` numbers predictable in tests.
    """
    return len(text) // 4


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call the fake model makes.

    Args:
        name: The function name.
        arguments: The JSON arguments, as a string (sent verbatim, so it may be malformed on
            purpose) or a dict (sent as ``json.dumps(arguments)``).
        id: The tool call id; when omitted the server assigns ``call_1``, ``call_2``, ... in the
            order tool calls are queued (for :meth:`FakeChatServer.respond_with`, rendered).
    """

    name: str
    arguments: str | Mapping[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class ChoiceSpec:
    """One choice of a multi-choice reply (a request with ``n > 1``).

    Args:
        content: The message text; ``None`` sends ``content: null``.
        reasoning: Text sent as ``reasoning_content`` (as DashScope/Qwen and vLLM do).
        tool_calls: Tool calls, as :class:`ToolCallSpec` or dicts (see
            :meth:`FakeChatServer.reply`).
        finish_reason: Defaults to ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    """

    content: str | None = ""
    reasoning: str | None = None
    tool_calls: Sequence[ToolCallLike] | None = None
    finish_reason: str | None = None


# --- queued items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class _Choice:
    content: str | None
    reasoning: str | None
    tool_calls: tuple[_ToolCall, ...]
    finish_reason: str


@dataclass(frozen=True)
class _Reply:
    choices: tuple[_Choice, ...]
    usage: UsageSpec
    chunk_size: int
    status: int
    delay: float
    # For cut_stream: how many SSE events to send before the body stops, and how it stops.
    cut_after: int | None = None
    cut_error: bool = True

    def describe(self) -> str:
        first = self.choices[0]
        text = first.content if first.content is not None else ""
        what = "cut_stream" if self.cut_after is not None else "reply"
        parts = [repr(text[:40] + ("..." if len(text) > 40 else ""))]
        if first.tool_calls:
            parts.append("tool_calls=" + ",".join(tc.name for tc in first.tool_calls))
        if len(self.choices) > 1:
            parts.append(f"choices={len(self.choices)}")
        return f"{what}({', '.join(parts)})"


@dataclass(frozen=True)
class _Error:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]

    def describe(self) -> str:
        return f"error({self.status}, {self.body['error']['message']!r})"


@dataclass(frozen=True)
class _Raise:
    kind: Literal["timeout", "disconnect"]

    def describe(self) -> str:
        return f"{self.kind}()"


@dataclass(frozen=True)
class _Dynamic:
    fn: Callable[[dict[str, Any]], Any]

    def describe(self) -> str:
        return f"respond_with({getattr(self.fn, '__name__', repr(self.fn))})"


_Item: TypeAlias = "_Reply | _Error | _Raise | _Dynamic"


# --- the server -------------------------------------------------------------------------------


@dataclass
class _Counters:
    completion: int = 0
    tool_call: int = 0
    request: int = 0


class FakeChatServer:
    """A scripted OpenAI-compatible chat-completions endpoint, faked at the HTTP transport.

    Queue replies with :meth:`reply`, :meth:`reply_json`, :meth:`reply_raw`, :meth:`error`,
    :meth:`timeout`,
    :meth:`disconnect`, :meth:`cut_stream` and :meth:`respond_with` (each returns the server,
    so calls chain); get SDK clients wired to it with :meth:`client` and :meth:`async_client`.
    Each request to ``.../chat/completions`` consumes one queued item, in order, whether it
    streams or not: the same item renders as a JSON ``chat.completion`` or as SSE chunks,
    depending on the request's ``"stream"``. Thread-safe: many threads or tasks may share one
    server (the order in which concurrent requests take items is then up to the scheduler; use
    :meth:`respond_with` to answer by content instead of by order).

    Requests to other paths (``/embeddings``, ``/models``, ...) get HTTP 404 and are recorded in
    :attr:`other_requests`, not in :attr:`requests`.

    Args:
        model: The model named in responses when a request names none (a request's own
            ``model`` is echoed otherwise).
        validate: Refuse, as the real API does with HTTP 400, requests whose ``messages`` are
            empty or break the tool-call pairing rule (a ``tool`` message must answer a
            ``tool_calls`` id of the assistant message before it, and every such id must be
            answered before the next other message). A refused request is recorded but does
            not consume a queued item.

    Attributes:
        requests: Every chat-completions request body (parsed JSON), in arrival order,
            including those answered with an error, a timeout or an empty-queue 500.
        other_requests: Requests to other paths, as ``{"method", "path", "body"}`` dicts.
    """

    def __init__(self, *, model: str = "gpt-4o-mini", validate: bool = True) -> None:
        self.model = model
        self.validate = validate
        self.requests: list[dict[str, Any]] = []
        self.other_requests: list[dict[str, Any]] = []
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._counters = _Counters()

    # --- queueing -----------------------------------------------------------------------------

    def reply(
        self,
        content: str | None = "",
        *,
        reasoning: str | None = None,
        tool_calls: Sequence[ToolCallLike] | None = None,
        finish_reason: str | None = None,
        usage: UsageSpec = None,
        choices: Sequence[ChoiceSpec] | None = None,
        chunk_size: int = 4,
        status: int = 200,
        delay: float = 0.0,
    ) -> FakeChatServer:
        """Queue a completion.

        A non-streamed request gets a JSON ``chat.completion``; a request with
        ``"stream": true`` gets SSE chunks: one with the role, the reasoning as
        ``delta.reasoning_content`` pieces, the content pieces, the tool calls (a first delta
        per call with ``index``, ``id``, ``type``, the name and empty arguments, then argument
        pieces), one with the ``finish_reason``, then, only if the request set
        ``stream_options.include_usage``, one with ``choices: []`` and the usage, then
        ``data: [DONE]``. With several choices their chunks are interleaved round-robin.

        Args:
            content: The message text. ``None`` sends ``content: null``; so does ``""`` when
                there are tool calls (as the real API does for a tool-call-only reply).
            reasoning: Thinking text, sent as ``message.reasoning_content`` (non-stream) or
                ``delta.reasoning_content`` (stream), as DashScope/Qwen and vLLM do.
            tool_calls: :class:`ToolCallSpec` objects or dicts, either
                ``{"name", "arguments", "id"?}`` or the API's own
                ``{"id"?, "type": "function", "function": {"name", "arguments"}}``.
            finish_reason: Defaults to ``"tool_calls"`` with tool calls, else ``"stop"``.
            usage: ``None`` (default) computes a usage: ``prompt_tokens`` is the
                :func:`estimate_tokens` of the request's message texts (content, tool-call
                names and arguments) plus 3 per message; ``completion_tokens`` the estimate of
                the reply's content, reasoning and tool calls, with the reasoning part also in
                ``completion_tokens_details.reasoning_tokens``. A mapping is merged over the
                computed one (``total_tokens`` is recomputed unless given), so
                ``usage={"prompt_tokens": 9000}`` fakes a long prompt. ``False`` sends no
                usage at all (non-stream ``usage`` omitted, no usage chunk), like servers
                that do not report it.
            choices: Several choices (``n > 1``); replaces ``content``, ``reasoning``,
                ``tool_calls`` and ``finish_reason``. The request's ``n`` is not consulted:
                the reply has exactly the choices scripted.
            chunk_size: Characters per streamed content, reasoning and argument piece.
            status: HTTP status of the reply.
            delay: Seconds to wait before answering (``anyio.sleep`` for async clients), to
                keep a request in flight while others run.

        Returns:
            The server, so calls chain.
        """
        with self._lock:
            item = self._make_reply(
                content,
                reasoning=reasoning,
                tool_calls=tool_calls,
                finish_reason=finish_reason,
                usage=usage,
                choices=choices,
                chunk_size=chunk_size,
                status=status,
                delay=delay,
            )
            self._queue.append(item)
        return self

    def reply_json(self, obj: Any, **kw: Any) -> FakeChatServer:
        """Queue a reply whose content is ``json.dumps(obj)`` (e.g. for ``parse()``).

        Args:
            obj: Anything :func:`json.dumps` accepts.
            **kw: Other :meth:`reply` options.

        Returns:
            The server, so calls chain.
        """
        return self.reply(json.dumps(obj), **kw)

    def reply_raw(
        self, body: str | bytes, *, status: int = 200, content_type: str = "application/json"
    ) -> FakeChatServer:
        """Queue a reply sent byte for byte, e.g. a 200 that is not a chat completion.

        For the replies real proxies and servers send by mistake: an HTML error page,
        ``null``, ``{"choices": []}``, a truncated JSON body. convmem raises
        :class:`~convmem.errors.InvalidResponseError` for them before acting on the reply.

        Args:
            body: The response body.
            status: HTTP status.
            content_type: The ``content-type`` header.

        Returns:
            The server, so calls chain.
        """
        data = body.encode() if isinstance(body, str) else bytes(body)
        headers = {"content-type": content_type}
        return self.respond_with(
            lambda _body: httpx2.Response(status, headers=headers, content=data)
        )

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        type: str | None = None,  # the API's own field name, hence the shadowed builtin
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FakeChatServer:
        """Queue an HTTP error response with an OpenAI-style ``{"error": {...}}`` body.

        The SDK maps the status to its exception: 400 ``BadRequestError``, 401
        ``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``, 5xx
        ``InternalServerError``; ``exc.code``, ``exc.type`` and ``exc.param`` come from the body.

        Args:
            status: HTTP status code.
            message: The error message; a default naming the status when omitted.
            code: ``error.code``, e.g. ``"context_length_exceeded"``, ``"rate_limit_exceeded"``.
            type: ``error.type``; defaults by status (``"invalid_request_error"`` for 4xx,
                ``"requests"`` for 429, ``"server_error"`` for 5xx).
            param: ``error.param``, e.g. ``"messages"``.
            headers: Extra response headers (e.g. ``{"retry-after": "1"}``).

        Returns:
            The server, so calls chain.
        """
        body = _error_body(
            message or f"FakeChatServer: scripted HTTP {status} error",
            status=status,
            code=code,
            type_=type,
            param=param,
        )
        with self._lock:
            self._queue.append(_Error(status, body, dict(headers or {})))
        return self

    def timeout(self) -> FakeChatServer:
        """Queue a read timeout: the transport raises ``httpx2.ReadTimeout``.

        With ``max_retries=0`` the SDK raises ``openai.APITimeoutError``.

        Returns:
            The server, so calls chain.
        """
        with self._lock:
            self._queue.append(_Raise("timeout"))
        return self

    def disconnect(self) -> FakeChatServer:
        """Queue a failed connection: the transport raises ``httpx2.ConnectError``.

        With ``max_retries=0`` the SDK raises ``openai.APIConnectionError``.

        Returns:
            The server, so calls chain.
        """
        with self._lock:
            self._queue.append(_Raise("disconnect"))
        return self

    def cut_stream(
        self, content: str, *, after_chunks: int = 2, error: bool = True, **kw: Any
    ) -> FakeChatServer:
        """Queue a streamed reply whose body stops after ``after_chunks`` SSE chunks.

        The chunks sent are the leading chunks of the same reply made by :meth:`reply` (role
        chunk first), but never a ``finish_reason`` chunk, a usage chunk or ``[DONE]``.

        What the SDK does (``openai`` 3.x):

        - ``error=True``: the body raises ``httpx2.RemoteProtocolError`` (what a dropped
          connection gives), and iterating the SDK stream raises ``openai.APIConnectionError``
          after yielding the chunks that arrived. On a non-streamed request the body read
          fails the same way inside ``create()``, which raises ``openai.APIConnectionError``.
        - ``error=False``: the body just ends. The SDK stream ends quietly as if the reply
          were complete: no exception, no chunk carries a ``finish_reason``. A consumer has to
          notice that itself (convmem raises ``StreamIncompleteError``). A non-streamed request
          gets the same truncated JSON body, which the SDK cannot decode.

        Args:
            content: The reply text (only its first pieces are sent).
            after_chunks: How many SSE chunks are sent before the cut.
            error: Whether the body fails (``True``) or ends silently (``False``).
            **kw: Other :meth:`reply` options (``reasoning``, ``tool_calls``, ``chunk_size``...).

        Returns:
            The server, so calls chain.
        """
        if after_chunks < 0:
            raise UsageError("after_chunks must be >= 0")
        with self._lock:
            item = self._make_reply(content, **kw)
            self._queue.append(replace(item, cut_after=after_chunks, cut_error=error))
        return self

    def respond_with(
        self, fn: Callable[[dict[str, Any]], Any], *, times: int = 1
    ) -> FakeChatServer:
        """Queue a reply computed from the request when it arrives.

        ``fn(request_body)`` may return a ``str`` (the content), a ``dict`` of :meth:`reply`
        keyword arguments (e.g. ``{"content": "hi", "tool_calls": [...]}``), a
        :class:`ChoiceSpec`, or a ready ``httpx2.Response``; it may also raise an
        ``httpx2.TransportError`` (e.g. ``httpx2.ReadTimeout``) to fail the request.
        Useful when concurrent conversations share one server and each must get its own answer.

        Args:
            fn: Called with the parsed request body, outside the server's lock.
            times: How many requests this answers (queued as that many items).

        Returns:
            The server, so calls chain.
        """
        if times < 1:
            raise UsageError("times must be >= 1")
        with self._lock:
            self._queue.extend(_Dynamic(fn) for _ in range(times))
        return self

    # --- reading back -------------------------------------------------------------------------

    @property
    def last_request(self) -> dict[str, Any]:
        """The most recent chat-completions request body.

        Raises:
            AssertionError: No request was made.
        """
        with self._lock:
            if not self.requests:
                raise AssertionError("FakeChatServer: no request was made")
            return self.requests[-1]

    def messages(self, i: int = -1) -> list[dict[str, Any]]:
        """The ``messages`` of request ``i`` (default: the last one)."""
        with self._lock:
            if not self.requests:
                raise AssertionError("FakeChatServer: no request was made")
            messages: list[dict[str, Any]] = self.requests[i]["messages"]
            return messages

    @property
    def pending(self) -> int:
        """How many queued items no request has consumed yet."""
        with self._lock:
            return len(self._queue)

    def assert_all_used(self) -> None:
        """Check that every queued item answered a request.

        Raises:
            AssertionError: Listing the unused items, in queue order.
        """
        with self._lock:
            unused = [item.describe() for item in self._queue]
        if unused:
            listing = "\n".join(f"  {n}. {d}" for n, d in enumerate(unused, 1))
            raise AssertionError(
                f"FakeChatServer: {len(unused)} queued item(s) never used "
                f"({len(self.requests)} request(s) made):\n{listing}"
            )

    # --- clients and transports ---------------------------------------------------------------

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        """The sync ``httpx2.MockTransport`` handler (also usable by an async client)."""
        response, delay = self._handle(request)
        if delay > 0:
            time.sleep(delay)
        return response

    async def async_handler(self, request: httpx2.Request) -> httpx2.Response:
        """The async ``httpx2.MockTransport`` handler; waits ``delay`` without blocking."""
        response, delay = self._handle(request)
        if delay > 0:
            await anyio.sleep(delay)
        return response

    @property
    def transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.Client`` (a new one each time; all share this server)."""
        return httpx2.MockTransport(self.handler)

    @property
    def async_transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.AsyncClient`` (a new one each time)."""
        return httpx2.MockTransport(self.async_handler)

    def client(self, **kw: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` client whose requests go to this server.

        Args:
            **kw: Passed to ``openai.OpenAI``; the defaults are ``api_key="test"``,
                ``base_url="http://fake.test/v1"`` and ``max_retries=0`` (so one SDK call is
                one request; pass ``max_retries`` to test retrying).
        """
        kw.setdefault("api_key", "test")
        kw.setdefault("base_url", "http://fake.test/v1")
        kw.setdefault("max_retries", 0)
        kw.setdefault("http_client", httpx2.Client(transport=self.transport))
        return openai.OpenAI(**kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` client whose requests go to this server.

        Args:
            **kw: Passed to ``openai.AsyncOpenAI``, with the same defaults as :meth:`client`.
        """
        kw.setdefault("api_key", "test")
        kw.setdefault("base_url", "http://fake.test/v1")
        kw.setdefault("max_retries", 0)
        kw.setdefault("http_client", httpx2.AsyncClient(transport=self.async_transport))
        return openai.AsyncOpenAI(**kw)

    # --- internals ----------------------------------------------------------------------------

    def _make_reply(
        self,
        content: str | None = "",
        *,
        reasoning: str | None = None,
        tool_calls: Sequence[ToolCallLike] | None = None,
        finish_reason: str | None = None,
        usage: UsageSpec = None,
        choices: Sequence[ChoiceSpec] | None = None,
        chunk_size: int = 4,
        status: int = 200,
        delay: float = 0.0,
    ) -> _Reply:
        # Called with the lock held: tool-call ids are numbered from a shared counter.
        if chunk_size < 1:
            raise UsageError("chunk_size must be >= 1")
        if choices is not None:
            if not choices:
                raise UsageError("choices must not be empty")
            if content or reasoning is not None or tool_calls or finish_reason is not None:
                raise UsageError(
                    "pass either choices=[...] or content/reasoning/tool_calls/finish_reason"
                )
            specs = list(choices)
        else:
            specs = [ChoiceSpec(content, reasoning, tool_calls, finish_reason)]
        return _Reply(
            choices=tuple(self._make_choice(spec) for spec in specs),
            usage=usage,
            chunk_size=chunk_size,
            status=status,
            delay=delay,
        )

    def _make_choice(self, spec: ChoiceSpec) -> _Choice:
        calls = tuple(self._make_tool_call(tc) for tc in spec.tool_calls or ())
        content = spec.content
        if calls and content == "":
            content = None
        finish = spec.finish_reason or ("tool_calls" if calls else "stop")
        return _Choice(content, spec.reasoning, calls, finish)

    def _make_tool_call(self, tc: ToolCallLike) -> _ToolCall:
        if isinstance(tc, ToolCallSpec):
            name, arguments, call_id = tc.name, tc.arguments, tc.id
        else:
            fn = tc.get("function")
            source = fn if isinstance(fn, Mapping) else tc
            if "name" not in source:
                raise UsageError(f"tool call needs a 'name': {tc!r}")
            name, arguments, call_id = source["name"], source.get("arguments", "{}"), tc.get("id")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        if call_id is None:
            self._counters.tool_call += 1
            call_id = f"call_{self._counters.tool_call}"
        return _ToolCall(str(call_id), str(name), arguments)

    def _from_dynamic(self, result: Any) -> _Reply | httpx2.Response:
        if isinstance(result, httpx2.Response):
            return result
        with self._lock:
            if isinstance(result, str):
                return self._make_reply(result)
            if isinstance(result, ChoiceSpec):
                return self._make_reply(choices=[result])
            if isinstance(result, Mapping):
                return self._make_reply(**result)
        raise TypeError(
            "respond_with: fn must return a str, a dict of reply() options, a ChoiceSpec "
            f"or an httpx2.Response, not {type(result).__name__}"
        )

    def _handle(self, request: httpx2.Request) -> tuple[httpx2.Response, float]:
        path = request.url.path
        body = _json_body(request)
        if request.method != "POST" or not path.endswith(_CHAT_PATH):
            with self._lock:
                self.other_requests.append({"method": request.method, "path": path, "body": body})
            return _error_response(
                404,
                _error_body(
                    f"FakeChatServer: only POST .../chat/completions is faked, "
                    f"not {request.method} {path}",
                    status=404,
                ),
            ), 0.0

        with self._lock:
            self._counters.request += 1
            number = self._counters.request
            self.requests.append(body if isinstance(body, dict) else {"__body__": body})
            problem = _check_request(body, messages=self.validate)
            item = None if problem else (self._queue.popleft() if self._queue else None)
        if problem:
            return _error_response(400, _error_body(problem, status=400, param="messages")), 0.0
        if item is None:
            return _error_response(
                500,
                _error_body(
                    f"FakeChatServer: no reply queued (request #{number} to {_CHAT_PATH})",
                    status=500,
                    code="fake_queue_empty",
                ),
            ), 0.0
        assert isinstance(body, dict)  # _check_request refused anything else

        if isinstance(item, _Dynamic):
            result = self._from_dynamic(item.fn(body))
            if isinstance(result, httpx2.Response):
                return result, 0.0
            item = result
        if isinstance(item, _Raise):
            if item.kind == "timeout":
                raise httpx2.ReadTimeout("FakeChatServer: scripted read timeout", request=request)
            raise httpx2.ConnectError("FakeChatServer: scripted disconnect", request=request)
        if isinstance(item, _Error):
            return _error_response(item.status, item.body, item.headers), 0.0
        return self._render(item, body), item.delay

    def _render(self, item: _Reply, body: dict[str, Any]) -> httpx2.Response:
        with self._lock:
            self._counters.completion += 1
            completion_id = f"chatcmpl-fake-{self._counters.completion}"
        model = body.get("model") or self.model
        usage = _usage(item, body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage")) and usage is not None
            events = _sse_events(item, completion_id, model, usage if include_usage else None)
            if item.cut_after is not None:
                events = events[: min(item.cut_after, _n_content_events(events))]
                stream = _EventStream([_sse(e) for e in events], fail=item.cut_error)
            else:
                stream = _EventStream([*(_sse(e) for e in events), b"data: [DONE]\n\n"])
            return httpx2.Response(
                item.status,
                headers={"content-type": "text/event-stream; charset=utf-8"},
                stream=stream,
            )

        completion: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [_message_choice(i, c) for i, c in enumerate(item.choices)],
        }
        if usage is not None:
            completion["usage"] = usage
        data = json.dumps(completion).encode()
        if item.cut_after is None:
            return httpx2.Response(
                item.status, headers={"content-type": "application/json"}, content=data
            )
        return httpx2.Response(
            item.status,
            headers={"content-type": "application/json"},
            stream=_EventStream([data[: len(data) // 2]], fail=item.cut_error),
        )


# --- rendering helpers ------------------------------------------------------------------------


class _EventStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A response body sent piece by piece, optionally failing as a dropped connection."""

    def __init__(self, pieces: list[bytes], *, fail: bool = False) -> None:
        self._pieces = pieces
        self._fail = fail

    def _error(self) -> httpx2.RemoteProtocolError:
        return httpx2.RemoteProtocolError(
            "FakeChatServer: peer closed connection without sending complete message body "
            "(scripted cut_stream)"
        )

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces
        if self._fail:
            raise self._error()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece
        if self._fail:
            raise self._error()


def _json_body(request: httpx2.Request) -> Any:
    if not request.content:
        return {}
    try:
        return json.loads(request.content)
    except ValueError:
        return request.content.decode("utf-8", "replace")


def _error_body(
    message: str,
    *,
    status: int,
    code: str | None = None,
    type_: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    if type_ is None:
        type_ = (
            "requests"
            if status == 429
            else "server_error"
            if status >= 500
            else ("invalid_request_error")
        )
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def _error_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers=headers)


def _check_request(body: Any, *, messages: bool) -> str | None:
    """What the real API would refuse with HTTP 400, in its own words; None if fine."""
    if not isinstance(body, dict):
        return "FakeChatServer: the request body is not a JSON object"
    if not messages:
        return None
    sent = body.get("messages")
    if not isinstance(sent, list) or not sent:
        return "[] is too short - 'messages'"
    open_ids: list[str] = []
    for i, message in enumerate(sent):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_ids:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceeding message with 'tool_calls'. (messages[{i}], "
                    f"tool_call_id={call_id!r})"
                )
            open_ids.remove(call_id)
            continue
        if open_ids:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_ids)}"
            )
        if role == "assistant":
            open_ids = [str(tc.get("id")) for tc in message.get("tool_calls") or ()]
    if open_ids:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_ids)}"
        )
    return None


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        parts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
    return "".join(parts)


def _usage(item: _Reply, body: dict[str, Any]) -> dict[str, Any] | None:
    if item.usage is False:
        return None
    messages = body.get("messages") or []
    prompt = estimate_tokens("".join(_message_text(m) for m in messages)) + 3 * len(messages)
    reasoning = sum(estimate_tokens(c.reasoning or "") for c in item.choices)
    answer = sum(
        estimate_tokens((c.content or "") + "".join(t.name + t.arguments for t in c.tool_calls))
        for c in item.choices
    )
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": answer + reasoning,
        "total_tokens": prompt + answer + reasoning,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    if item.usage:
        usage.update(item.usage)
        if "total_tokens" not in item.usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _message_choice(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content,
        "refusal": None,
        "annotations": [],
    }
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in choice.tool_calls
        ]
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _choice_deltas(choice: _Choice, size: int) -> list[dict[str, Any]]:
    """One choice's deltas, without the finish chunk."""
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None if choice.content is None else ""}
    ]
    deltas += [{"reasoning_content": p} for p in _pieces(choice.reasoning or "", size)]
    deltas += [{"content": p} for p in _pieces(choice.content or "", size)]
    for j, t in enumerate(choice.tool_calls):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": j,
                        "id": t.id,
                        "type": "function",
                        "function": {"name": t.name, "arguments": ""},
                    }
                ]
            }
        )
        deltas += [
            {"tool_calls": [{"index": j, "function": {"arguments": p}}]}
            for p in _pieces(t.arguments, size)
        ]
    return deltas


def _sse_events(
    item: _Reply, completion_id: str, model: str, usage: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Every chunk of a streamed reply: content chunks first, then finish and usage chunks."""

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            # The real API sends "usage": null on every chunk when include_usage is set.
            event["usage"] = None
        return event

    per_choice = [_choice_deltas(c, item.chunk_size) for c in item.choices]
    events = [
        chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for row in itertools.zip_longest(*per_choice)
        for i, delta in enumerate(row)
        if delta is not None
    ]
    events += [
        chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
        for i, c in enumerate(item.choices)
    ]
    if usage is not None:
        last = chunk([])
        last["usage"] = usage
        events.append(last)
    return events


def _n_content_events(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["choices"] and e["choices"][0]["finish_reason"] is None)


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
