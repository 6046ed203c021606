"""``convmem.wrap``: memory for an unchanged chat loop.

A tutorial's loop keeps a ``messages`` list and sends all of it every time::

    client = convmem.wrap(OpenAI(), strategy=Pipeline(RollingSummary(), Truncate()))
    messages = [{"role": "system", "content": "You are terse."}]
    while True:
        messages.append({"role": "user", "content": input("> ")})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))

The wrapped client is a subclass of ``openai.OpenAI`` (``AsyncOpenAI`` for an async client), a
new object: the caller's client and the ``openai`` module are untouched. Its
``chat.completions.create`` and ``parse`` match the incoming list against the conversation
convmem keeps, store only what is new, and send the context the strategy builds instead of
the whole list; every other argument goes through unchanged, and ``stream=True`` returns the
SDK's own stream type. So the loop's list can grow for ever while each request stays within
the budget, with a :class:`~convmem.plan.ContextPlan`, usage and cost for every call.

Matching, by content (role, text, name, tool calls and tool-call ids; other fields such as
``refusal`` or ``annotations`` are ignored):

* a list that extends the conversation: only the new tail is stored (tool results and any
  messages you added are recorded before the call, the model's reply only once the call
  succeeded);
* a list that edits or shortens it: the conversation **forks** at the last matching turn (a new
  id, ``client.conversation_id`` moves to it; the original is kept, as the append-only history
  requires), and the list's remaining messages are imported into the fork.

The conversation is named by ``conversation_id=`` (with a ``store=``, it resumes across
restarts); ``client.conversation("other-id")`` returns a client for another conversation on the
same memory, never a field in the request body. A failed call stores nothing of the reply and
re-raises the SDK's exception unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import openai
from openai.resources.chat import AsyncChat, AsyncCompletions, Chat, Completions

from .conversation_async import AsyncConversation
from .conversation_core import RawChunk, _Core
from .conversation_sync import Conversation
from .errors import UsageError
from .events import StreamEnd

__all__ = ["AsyncMemoryOpenAI", "MemoryOpenAI", "wrap"]

_C = TypeVar("_C", bound=_Core)


def wrap(
    client: Any,
    *,
    strategy: Any = None,
    store: Any = None,
    conversation_id: str | None = None,
    **options: Any,
) -> Any:
    """A client with memory: see the module docstring.

    Args:
        client: An ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client (any base URL).
        strategy: How each call's context is built (default: keep everything).
        store: A :mod:`convmem.stores` store: conversations resume from it and every committed
            turn is written to it.
        conversation_id: The conversation the loop continues (default: a fresh id).
        **options: Other :class:`~convmem.Conversation` arguments (``context_window``,
            ``counter``, ``reply_reserve``, ``send_reasoning``, ``on_conflict``, ...).

    Returns:
        A :class:`MemoryOpenAI` (or :class:`AsyncMemoryOpenAI`).

    Raises:
        UsageError: ``client`` is not an ``openai`` client, or an option is not a
            ``Conversation`` argument.
    """
    bad = sorted(set(options) - _CONVERSATION_OPTIONS)
    if bad:
        raise UsageError(
            f"wrap() got unknown option(s) {', '.join(bad)}; it takes strategy, store, "
            f"conversation_id and {', '.join(sorted(_CONVERSATION_OPTIONS))}"
        )
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise UsageError(f"conversation_id must be a string, got {type(conversation_id).__name__}")
    if isinstance(client, openai.AsyncOpenAI):
        memory = _Memory(AsyncConversation, strategy, store, options)
        return AsyncMemoryOpenAI._from(client, memory, conversation_id)
    if isinstance(client, openai.OpenAI):
        memory = _Memory(Conversation, strategy, store, options)
        return MemoryOpenAI._from(client, memory, conversation_id)
    raise UsageError(f"wrap() needs an openai.OpenAI or AsyncOpenAI client, got {type(client)}")


_CONVERSATION_OPTIONS = frozenset(
    {
        "context_window",
        "counter",
        "reply_reserve",
        "send_reasoning",
        "max_tool_rounds",
        "on_conflict",
        "job_timeout",
        "save_plan",
    }
)


# -- matching a list against a conversation -------------------------------------------------


def message_key(message: Mapping[str, Any]) -> str:
    """A content hash of a message: what matching compares (see the module docstring)."""
    content = message.get("content")
    if content is None or content == []:
        content = ""
    calls = [
        (
            str(c.get("id", "")),
            str((c.get("function") or {}).get("name", "")),
            str((c.get("function") or {}).get("arguments", "")),
        )
        for c in message.get("tool_calls") or []
    ]
    role = message.get("role")
    if role == "developer":
        role = "system"
    key = [role, content, message.get("name") or "", calls, message.get("tool_call_id") or ""]
    blob = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _plain(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        return dict(dump(exclude_none=True))
    raise UsageError(f"messages must be dicts or SDK message objects, got {type(message).__name__}")


class _Memory:
    """The conversations behind one wrapped client and its copies."""

    def __init__(self, cls: type[Any], strategy: Any, store: Any, options: dict[str, Any]):
        self.cls = cls
        self.strategy = strategy
        self.store = store
        self.options = options
        self.conversations: dict[str, Any] = {}
        self.keys: dict[str, dict[int, list[str]]] = {}  # per conversation: turn id -> hashes
        self.lock = threading.Lock()
        self.forks = 0

    def conversation(self, cid: str, model: str, client: Any) -> Any:
        with self.lock:
            conv = self.conversations.get(cid)
            if conv is not None and conv.model == model:
                return conv
            kwargs = dict(self.options)
            if conv is not None:  # another model from now on: the same history and usage
                kwargs["history"] = conv.history
                kwargs.setdefault("context_window", None)
            conv_new = self.cls(
                client,
                model=model,
                strategy=self.strategy,
                store=self.store,
                conversation_id=cid,
                **kwargs,
            )
            if conv is not None:
                conv_new.usage = conv.usage
            self.conversations[cid] = conv_new
            return conv_new

    def stored_keys(self, cid: str, conv: Any) -> list[str]:
        cache = self.keys.setdefault(cid, {})
        keys = [message_key(conv.system)] if conv.system is not None else []
        for turn in conv.turns:
            hashes = cache.get(turn.id)
            if hashes is None or len(hashes) != len(turn.messages):
                hashes = [message_key(m) for m in turn.messages]
                cache[turn.id] = hashes
            keys.extend(hashes)
        return keys


def _split(conv: Any, keys: list[str], incoming: list[dict[str, Any]]) -> tuple[int, int]:
    """How many of ``incoming`` match the conversation from its start, and how many it has."""
    same = 0
    for a, b in zip(keys, incoming, strict=False):
        if a != message_key(b):
            break
        same += 1
    return same, len(keys)


class _Plan:
    """What one create() does with the incoming list."""

    def __init__(self, conv: Any, prefix: list[dict[str, Any]], user: dict[str, Any] | None):
        self.conv = conv
        self.prefix = prefix  # messages to record before the call (tool results, imports)
        self.user = user  # the new user message, or None to continue the last turn


def _route(client: Any, memory: _Memory, model: str, messages: Sequence[Any]) -> _Plan:
    """Finds (or forks) the conversation ``messages`` continues; validates before any I/O."""
    if not isinstance(model, str) or not model:
        raise UsageError("model= must be a non-empty string")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise UsageError("messages= must be a non-empty list of messages")
    incoming = [_plain(m) for m in messages]
    plain = client._convmem_plain
    cid = client.conversation_id
    conv = memory.conversation(cid, model, plain)
    system = incoming[0] if incoming[0].get("role") in ("system", "developer") else None
    keys = memory.stored_keys(cid, conv)
    same, stored = _split(conv, keys, incoming)
    has_turns = bool(conv.turns)
    if has_turns and same < stored:
        conv = _fork(client, memory, conv, incoming, same, model, plain)
        same, stored = _split(conv, memory.stored_keys(conv.conversation_id, conv), incoming)
    elif (
        not has_turns
        and system is not None
        and (conv.system is None or message_key(conv.system) != message_key(system))
    ):
        conv = _restart(client, memory, conv, system, model, plain)
        same, stored = _split(conv, memory.stored_keys(conv.conversation_id, conv), incoming)
    tail = incoming[same:]
    if not tail:
        raise UsageError(
            "messages= adds nothing to the conversation: append the new user message (or the "
            "tool results) to the list before calling create()"
        )
    if tail[-1].get("role") == "user":
        return _Plan(conv, tail[:-1], tail[-1])
    if tail[-1].get("role") in ("tool", "function"):
        return _Plan(conv, tail, None)
    raise UsageError(
        f"the last message must be a user or tool message, got {tail[-1].get('role')!r}"
    )


def _fork(
    client: Any,
    memory: _Memory,
    conv: Any,
    incoming: list[dict[str, Any]],
    same: int,
    model: str,
    plain: Any,
) -> Any:
    """The list edits the conversation: continue in a fork of its matching whole turns."""
    offset = 1 if conv.system is not None else 0
    kept = -1
    count = offset
    for turn in conv.turns:
        if count + len(turn.messages) > same:
            break
        count += len(turn.messages)
        kept = turn.id
    if conv.system is not None and same == 0:
        kept = -1
    memory.forks += 1
    new_id = f"{conv.conversation_id}~{memory.forks}"
    while new_id in memory.conversations or (
        memory.store is not None and memory.store.head(new_id) is not None
    ):
        memory.forks += 1
        new_id = f"{conv.conversation_id}~{memory.forks}"
    system = incoming[0] if incoming[0].get("role") in ("system", "developer") else None
    if memory.store is not None and kept >= 0 and same > 0:
        memory.store.fork(conv.conversation_id, at_turn=kept, new_id=new_id)
        client.conversation_id = new_id
        new = memory.conversation(new_id, model, plain)
    else:
        client.conversation_id = new_id
        new = _new(memory, new_id, model, plain, system)
        turns = [list(t.messages) for t in conv.turns if t.id <= kept]
        if turns:
            new.extend([m for t in turns for m in t])
    return new


def _restart(client: Any, memory: _Memory, conv: Any, system: Any, model: str, plain: Any) -> Any:
    """An empty conversation whose list brings another system prompt: start it with that one."""
    cid = conv.conversation_id
    with memory.lock:
        memory.conversations.pop(cid, None)
    return _new(memory, cid, model, plain, system)


def _new(memory: _Memory, cid: str, model: str, plain: Any, system: Any) -> Any:
    with memory.lock:
        conv = memory.cls(
            plain,
            model=model,
            system=system,
            strategy=memory.strategy,
            store=memory.store,
            conversation_id=cid,
            **memory.options,
        )
        memory.conversations[cid] = conv
        return conv


# -- the sync client ------------------------------------------------------------------------


def _fresh(cls: type[Any], source: Any) -> Any:
    """An instance of ``cls`` with ``source``'s configuration, its cached resources left out."""
    obj = object.__new__(cls)
    cached = {
        name
        for klass in type(source).__mro__
        for name, value in vars(klass).items()
        if isinstance(value, functools.cached_property)
    }
    obj.__dict__.update({k: v for k, v in source.__dict__.items() if k not in cached})
    return obj


class _MemoryMixin:
    _convmem: _Memory
    conversation_id: str

    @property
    def _convmem_plain(self) -> Any:
        """The same client as a plain ``openai`` one: the calls convmem makes go through it."""
        base = openai.AsyncOpenAI if isinstance(self, openai.AsyncOpenAI) else openai.OpenAI
        plain = self.__dict__.get("_convmem_plain_client")
        if plain is None:
            plain = _fresh(base, self)
            self.__dict__["_convmem_plain_client"] = plain
        return plain

    @property
    def memory(self) -> Any:
        """The :class:`~convmem.Conversation` behind this client's conversation (None before
        its first call)."""
        return self._convmem.conversations.get(self.conversation_id)

    @property
    def last_plan(self) -> Any:
        """What the last call of this conversation sent, and why."""
        conv = self.memory
        return None if conv is None else conv.last_plan

    @property
    def usage(self) -> Any:
        """Tokens (and cost, when the model has a price) of this conversation so far."""
        conv = self.memory
        return None if conv is None else conv.usage

    @classmethod
    def _from(cls, client: Any, memory: _Memory, cid: str | None) -> Any:
        obj = _fresh(cls, client)
        obj._convmem = memory
        obj.conversation_id = cid or uuid.uuid4().hex
        return obj

    def copy(self, **kwargs: Any) -> Any:
        """The SDK's ``copy``/``with_options``, keeping the memory and the conversation."""
        new = super().copy(**kwargs)  # type: ignore[misc]
        new._convmem = self._convmem
        new.conversation_id = self.conversation_id
        return new

    with_options = copy

    def conversation(self, conversation_id: str) -> Any:
        """A client for another conversation on the same memory (and store)."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise UsageError("conversation_id must be a non-empty string")
        other = self.copy()
        other.conversation_id = conversation_id
        return other


class MemoryOpenAI(_MemoryMixin, openai.OpenAI):
    """An ``openai.OpenAI`` whose chat completions remember: made by :func:`wrap`."""

    @functools.cached_property
    def chat(self) -> Chat:
        return _MemoryChat(self)


class _MemoryChat(Chat):
    @functools.cached_property
    def completions(self) -> Completions:
        return _MemoryCompletions(self._client)


class _MemoryCompletions(Completions):
    def _prepare(self, messages: Any, model: Any, params: dict[str, Any]) -> tuple[Any, Any, Any]:
        client: Any = self._client
        plan = _route(client, client._convmem, model, messages)
        tools = params.pop("tools", None)
        if plan.prefix:
            plan.conv.extend(plan.prefix)
        call = plan.conv._begin(plan.user, tools, None, None, params)
        return plan.conv, call, client._convmem_plain.chat.completions

    def create(self, *, messages: Any, model: Any, stream: Any = False, **params: Any) -> Any:
        conv, call, plain = self._prepare(messages, model, params)
        if not stream:
            return conv._run(call, plain.create)
        call.raw = True
        return _SyncStream(conv._stream(call, plain.create), "stream_options" in params)

    def parse(self, *, messages: Any, model: Any, **params: Any) -> Any:
        conv, call, plain = self._prepare(messages, model, params)
        return conv._run(call, plain.parse)


class _SyncStream(openai.Stream[Any]):
    """The SDK's ``Stream`` of ``ChatCompletionChunk``, fed by the conversation's stream.

    When the caller did not ask for ``stream_options``, the usage-only chunk convmem requests
    for its own accounting is not passed on (a loop reading ``chunk.choices[0]`` would break
    on it). Closing it, or leaving it unfinished, commits nothing.
    """

    def __init__(self, events: Iterator[Any], pass_usage: bool) -> None:
        self._events = events
        self._pass_usage = pass_usage
        self._gen = self._chunks()
        self._iterator = self._gen

    def _chunks(self) -> Generator[Any, None, None]:
        try:
            for event in self._events:
                if isinstance(event, RawChunk):
                    chunk = event.chunk
                    if chunk.choices or self._pass_usage:
                        yield chunk
                elif isinstance(event, StreamEnd):
                    return
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()

    def __next__(self) -> Any:
        return self._iterator.__next__()

    def __iter__(self) -> Iterator[Any]:
        yield from self._iterator

    def close(self) -> None:
        self._gen.close()


# -- the async client -----------------------------------------------------------------------


class AsyncMemoryOpenAI(_MemoryMixin, openai.AsyncOpenAI):
    """An ``openai.AsyncOpenAI`` whose chat completions remember: made by :func:`wrap`."""

    @functools.cached_property
    def chat(self) -> AsyncChat:
        return _AsyncMemoryChat(self)


class _AsyncMemoryChat(AsyncChat):
    @functools.cached_property
    def completions(self) -> AsyncCompletions:
        return _AsyncMemoryCompletions(self._client)


class _AsyncMemoryCompletions(AsyncCompletions):
    async def _prepare(
        self, messages: Any, model: Any, params: dict[str, Any]
    ) -> tuple[Any, Any, Any]:
        client: Any = self._client
        plan = _route(client, client._convmem, model, messages)
        tools = params.pop("tools", None)
        if plan.prefix:
            await plan.conv.extend(plan.prefix)
        call = plan.conv._begin(plan.user, tools, None, None, params)
        return plan.conv, call, client._convmem_plain.chat.completions

    async def create(self, *, messages: Any, model: Any, stream: Any = False, **params: Any) -> Any:
        conv, call, plain = await self._prepare(messages, model, params)
        if not stream:
            return await conv._run(call, plain.create)
        call.raw = True
        return _AsyncStream(conv._stream(call, plain.create), "stream_options" in params)

    async def parse(self, *, messages: Any, model: Any, **params: Any) -> Any:
        conv, call, plain = await self._prepare(messages, model, params)
        return await conv._run(call, plain.parse)


class _AsyncStream(openai.AsyncStream[Any]):
    """The SDK's ``AsyncStream`` of chunks, fed by the conversation's stream (see
    :class:`_SyncStream`)."""

    def __init__(self, events: AsyncIterator[Any], pass_usage: bool) -> None:
        self._events = events
        self._pass_usage = pass_usage
        self._gen = self._chunks()
        self._iterator = self._gen

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        try:
            async for event in self._events:
                if isinstance(event, RawChunk):
                    chunk = event.chunk
                    if chunk.choices or self._pass_usage:
                        yield chunk
                elif isinstance(event, StreamEnd):
                    return
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for item in self._iterator:
            yield item

    async def close(self) -> None:
        await self._gen.aclose()
