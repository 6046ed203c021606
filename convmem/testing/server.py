"""The fake chat-completions server: a queue of scripted replies answered at the HTTP transport.

:class:`FakeChatServer` records every request, checks it as the real API would
(:mod:`~convmem.testing.refusals`), takes the next queued item (:mod:`~convmem.testing.specs`)
and renders it as JSON or SSE (:mod:`~convmem.testing.wire`). See :mod:`convmem.testing` for an
example.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx2
import openai

from ..errors import UsageError
from .refusals import check_request
from .specs import (
    Choice,
    ChoiceSpec,
    Dynamic,
    ErrorReply,
    Item,
    Raise,
    Reply,
    ToolCall,
    ToolCallLike,
    ToolCallSpec,
    UsageSpec,
)
from .wire import (
    CREATED,
    EventStream,
    error_body,
    error_response,
    json_body,
    message_choice,
    n_content_events,
    sse,
    sse_events,
    usage_of,
)

_CHAT_PATH = "/chat/completions"


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
        self._queue: deque[Item] = deque()
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
        body = error_body(
            message or f"FakeChatServer: scripted HTTP {status} error",
            status=status,
            code=code,
            type_=type,
            param=param,
        )
        with self._lock:
            self._queue.append(ErrorReply(status, body, dict(headers or {})))
        return self

    def timeout(self) -> FakeChatServer:
        """Queue a read timeout: the transport raises ``httpx2.ReadTimeout``.

        With ``max_retries=0`` the SDK raises ``openai.APITimeoutError``.

        Returns:
            The server, so calls chain.
        """
        with self._lock:
            self._queue.append(Raise("timeout"))
        return self

    def disconnect(self) -> FakeChatServer:
        """Queue a failed connection: the transport raises ``httpx2.ConnectError``.

        With ``max_retries=0`` the SDK raises ``openai.APIConnectionError``.

        Returns:
            The server, so calls chain.
        """
        with self._lock:
            self._queue.append(Raise("disconnect"))
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
            self._queue.extend(Dynamic(fn) for _ in range(times))
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
    ) -> Reply:
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
        return Reply(
            choices=tuple(self._make_choice(spec) for spec in specs),
            usage=usage,
            chunk_size=chunk_size,
            status=status,
            delay=delay,
        )

    def _make_choice(self, spec: ChoiceSpec) -> Choice:
        calls = tuple(self._make_tool_call(tc) for tc in spec.tool_calls or ())
        content = spec.content
        if calls and content == "":
            content = None
        finish = spec.finish_reason or ("tool_calls" if calls else "stop")
        return Choice(content, spec.reasoning, calls, finish)

    def _make_tool_call(self, tc: ToolCallLike) -> ToolCall:
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
        return ToolCall(str(call_id), str(name), arguments)

    def _from_dynamic(self, result: Any) -> Reply | httpx2.Response:
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
        body = json_body(request)
        if request.method != "POST" or not path.endswith(_CHAT_PATH):
            with self._lock:
                self.other_requests.append({"method": request.method, "path": path, "body": body})
            return error_response(
                404,
                error_body(
                    f"FakeChatServer: only POST .../chat/completions is faked, "
                    f"not {request.method} {path}",
                    status=404,
                ),
            ), 0.0

        with self._lock:
            self._counters.request += 1
            number = self._counters.request
            self.requests.append(body if isinstance(body, dict) else {"__body__": body})
            problem = check_request(body, messages=self.validate)
            item = None if problem else (self._queue.popleft() if self._queue else None)
        if problem:
            return error_response(400, error_body(problem, status=400, param="messages")), 0.0
        if item is None:
            return error_response(
                500,
                error_body(
                    f"FakeChatServer: no reply queued (request #{number} to {_CHAT_PATH})",
                    status=500,
                    code="fake_queue_empty",
                ),
            ), 0.0
        assert isinstance(body, dict)  # check_request refused anything else

        if isinstance(item, Dynamic):
            result = self._from_dynamic(item.fn(body))
            if isinstance(result, httpx2.Response):
                return result, 0.0
            item = result
        if isinstance(item, Raise):
            if item.kind == "timeout":
                raise httpx2.ReadTimeout("FakeChatServer: scripted read timeout", request=request)
            raise httpx2.ConnectError("FakeChatServer: scripted disconnect", request=request)
        if isinstance(item, ErrorReply):
            return error_response(item.status, item.body, item.headers), 0.0
        return self._render(item, body), item.delay

    def _render(self, item: Reply, body: dict[str, Any]) -> httpx2.Response:
        with self._lock:
            self._counters.completion += 1
            completion_id = f"chatcmpl-fake-{self._counters.completion}"
        model = body.get("model") or self.model
        usage = usage_of(item, body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage")) and usage is not None
            events = sse_events(item, completion_id, model, usage if include_usage else None)
            if item.cut_after is not None:
                events = events[: min(item.cut_after, n_content_events(events))]
                stream = EventStream([sse(e) for e in events], fail=item.cut_error)
            else:
                stream = EventStream([*(sse(e) for e in events), b"data: [DONE]\n\n"])
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
            "choices": [message_choice(i, c) for i, c in enumerate(item.choices)],
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
            stream=EventStream([data[: len(data) // 2]], fail=item.cut_error),
        )


# --- rendering helpers ------------------------------------------------------------------------


__all__ = ["FakeChatServer"]
