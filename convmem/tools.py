"""Tool (function) calling: the tool registry, and running the calls a model makes.

``Conversation.send(..., tools=[...])`` takes a mix of OpenAI tool schemas
(``{"type": "function", "function": {...}}``), plain Python callables (sync or async) and
:class:`Tool` objects. :class:`ToolRegistry` turns them into the ``tools=`` list the API wants
and, when the model calls a function convmem knows, runs it and builds the ``tool`` message.
How a function becomes a schema is :mod:`convmem.toolschema`'s job; :func:`function_schema`,
:func:`parse_docstring` and :class:`ToolSchemaWarning` are importable from here as well.

Running a tool never raises for things the *model* got wrong or the *function* did: bad JSON,
arguments that fail validation, an unknown tool name and an exception inside the function all
become a short ``"Error: ..."`` tool message the model can read and recover from.
``KeyboardInterrupt``, ``SystemExit`` and ``asyncio.CancelledError`` always propagate.

This module does no I/O of its own; the only side effects are the user's functions.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
import pydantic_core

from convmem.errors import UsageError
from convmem.messages import repair_text
from convmem.redact import describe_error, redact
from convmem.toolschema import (
    ToolSchemaWarning,
    binder_for,
    build_function_tool,
    check_tool_schema,
    function_schema,
    parse_docstring,
)

__all__ = [
    "Tool",
    "ToolExecution",
    "ToolRegistry",
    "ToolSchemaWarning",
    "function_schema",
    "parse_docstring",
    "result_to_content",
]

_T = TypeVar("_T")

# Error texts go back to the model; an unbounded exception message or validation report
# would cost tokens on every later call that keeps the turn.
_MAX_ERROR_CHARS = 1000


# ---------------------------------------------------------------------------
# Tools


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    call: object = type(fn).__call__  # a callable object may have an async __call__
    if inspect.iscoroutinefunction(fn):
        return True
    return not (inspect.isroutine(fn) or inspect.isclass(fn)) and inspect.iscoroutinefunction(call)


class Tool:
    """A registered tool: the schema sent to the model, and the function that runs it.

    Build one with :meth:`from_function` (schema from the signature) or directly from a
    schema, optionally paired with a function you describe by hand.

    Attributes:
        name: The function name the model calls.
        schema: The ``{"type": "function", ...}`` mapping sent in ``tools=``.
        fn: The Python function, or None for a schema-only tool whose calls the caller
            handles itself.
        is_async: Whether ``fn`` is a coroutine function.
    """

    __slots__ = ("_binder", "fn", "is_async", "name", "schema")

    def __init__(self, schema: Mapping[str, Any], fn: Callable[..., Any] | None = None) -> None:
        """Make a tool from a schema.

        Args:
            schema: An OpenAI tool schema; it is copied.
            fn: The function to run for calls to it. Its arguments are validated against
                its own signature (not against ``schema``); a ``**kwargs`` function gets the
                arguments as they came.

        Raises:
            UsageError: The schema is invalid, or ``fn`` takes ``*args``.
        """
        self.name = check_tool_schema(schema)
        self.schema: dict[str, Any] = copy.deepcopy(dict(schema))
        self.fn = fn
        self.is_async = fn is not None and _is_async_callable(fn)
        self._binder = binder_for(fn, self.name) if fn is not None else None

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        strict: bool = False,
    ) -> Tool:
        """Make a tool from a function; see :func:`function_schema` for the arguments."""
        schema, binder = build_function_tool(fn, name=name, description=description, strict=strict)
        tool = cls(schema)
        tool.fn = fn
        tool.is_async = _is_async_callable(fn)
        tool._binder = binder
        return tool

    @property
    def runnable(self) -> bool:
        """Whether convmem can run this tool's calls (it has a Python function)."""
        return self.fn is not None

    def __repr__(self) -> str:
        kind = "schema-only" if self.fn is None else ("async" if self.is_async else "sync")
        return f"Tool({self.name!r}, {kind})"


# ---------------------------------------------------------------------------
# Running calls


def result_to_content(result: Any) -> str:
    """Turn a tool function's return value into ``tool`` message content.

    A string is sent as is. Everything else is sent as compact JSON: a pydantic model via
    ``model_dump_json()``; dicts, lists, dataclasses, enums, dates and so on via
    ``pydantic_core.to_json``, with ``str()`` for objects JSON cannot represent. ``None``
    becomes ``"null"`` (consistent with the JSON rule, and never an empty message, which
    some servers refuse).
    """
    if isinstance(result, str):
        return result
    if isinstance(result, pydantic.BaseModel):
        return result.model_dump_json()
    return pydantic_core.to_json(result, fallback=str).decode()


@dataclass(frozen=True)
class ToolExecution:
    """What happened when one tool call was run.

    Attributes:
        name: The tool name the model called.
        call_id: The tool call id.
        ok: False when the message content is an ``"Error: ..."`` report.
        duration: Wall-clock seconds, parsing and validation included.
        message: The ``tool`` message to append to the conversation.
        error: The error text (same as the content) when not ok.
    """

    name: str
    call_id: str
    ok: bool
    duration: float
    message: dict[str, Any]
    error: str | None = None


def _shorten(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_report(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


def _as_mapping(tool_call: Any) -> Mapping[str, Any]:
    if isinstance(tool_call, Mapping):
        return tool_call
    dump = getattr(tool_call, "model_dump", None)  # an SDK ChatCompletionMessageToolCall
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    raise UsageError(f"a tool call must be a mapping, got {type(tool_call).__name__}")


@dataclass
class _Prepared:
    """A parsed call: either ready to run, or already answered with an error."""

    name: str
    call_id: str
    started: float
    tool: Tool | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None
    error: str | None = None


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _run_awaitable_sync(awaitable: Awaitable[_T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    # This thread already runs a loop (a notebook, or sync code called from async code) and
    # asyncio.run refuses to nest: give the coroutine its own loop in a worker thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convmem-tool") as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


class ToolRegistry:
    """The tools of a conversation: their schemas, and how to run the calls the model makes.

    Attributes:
        schemas: The tool schemas to send as ``tools=`` (do not mutate them).
    """

    def __init__(self, tools: Sequence[Tool] = ()) -> None:
        """Make a registry of :class:`Tool` objects; see :meth:`from_tools` for the usual way.

        Raises:
            UsageError: Two tools share a name.
        """
        self._tools: dict[str, Tool] = {}
        for index, tool in enumerate(tools):
            if tool.name in self._tools:
                raise UsageError(f"duplicate tool name {tool.name!r} (tool {index})")
            self._tools[tool.name] = tool
        self.schemas: list[dict[str, Any]] = [tool.schema for tool in self._tools.values()]

    @classmethod
    def from_tools(
        cls,
        tools: Sequence[Callable[..., Any] | Mapping[str, Any] | Tool] | ToolRegistry | None,
    ) -> ToolRegistry:
        """Make a registry from what a user passes as ``tools=``.

        Args:
            tools: Callables (their schema is built with :func:`function_schema`), OpenAI
                tool schemas (schema-only: the caller runs those calls), :class:`Tool`
                objects, a registry (returned as is), or None for no tools.

        Raises:
            UsageError: Duplicate names, an invalid schema (the message says what is
                missing), a name the API refuses, or a function that cannot be described.
        """
        if tools is None:
            return cls()
        if isinstance(tools, ToolRegistry):
            return tools
        if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
            raise UsageError("tools must be a list of functions, tool schemas or Tool objects")
        built: list[Tool] = []
        for item in tools:
            if isinstance(item, Tool):
                built.append(item)
            elif isinstance(item, Mapping):
                built.append(Tool(item))
            elif callable(item):
                built.append(Tool.from_function(item))
            else:
                raise UsageError(
                    f"a tool must be a function, a tool schema or a Tool, got {type(item).__name__}"
                )
        return cls(built)

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools.values())!r})"

    def can_run_all(self, tool_calls: Sequence[Mapping[str, Any]]) -> bool:
        """Whether convmem can answer every call itself.

        True unless a call names a schema-only tool or is not a function call. A call to a
        tool that does not exist counts as answerable: it gets an ``"Error: no tool named
        ..."`` message so the model can correct itself, which the caller could not do better.
        """
        for raw in tool_calls:
            call = _as_mapping(raw)
            if call.get("type", "function") != "function":
                return False
            function = call.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            tool = self._tools.get(name) if isinstance(name, str) else None
            if tool is not None and tool.fn is None:
                return False
        return True

    # -- parsing, shared by the sync and async paths --------------------------------------

    def _prepare(self, raw: Any) -> _Prepared:
        started = time.perf_counter()
        call = _as_mapping(raw)
        call_id = call.get("id")
        if not isinstance(call_id, str):
            raise UsageError(f"tool call has no string id: {dict(call)!r}")
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return _Prepared("", call_id, started, error="Error: the tool call names no function")
        name: str = function["name"]
        tool = self._tools.get(name)
        if tool is None:
            return _Prepared(name, call_id, started, error=f"Error: no tool named {name!r}")
        if tool.fn is None or tool._binder is None:
            raise UsageError(
                f"tool {name!r} has no Python function; the caller must answer its calls "
                "(check can_run_all first)"
            )
        arguments = function.get("arguments")
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            # Some models send "" for a function without parameters.
            parsed: Any = {}
        elif isinstance(arguments, str):
            try:
                parsed = json.loads(arguments)
            except json.JSONDecodeError as exc:
                return _Prepared(
                    name,
                    call_id,
                    started,
                    error=(
                        f"Error: arguments are not valid JSON ({exc.msg}: line {exc.lineno} "
                        f"column {exc.colno}). Send the call again with valid JSON."
                    ),
                )
        else:
            parsed = arguments
        if not isinstance(parsed, Mapping):
            return _Prepared(
                name,
                call_id,
                started,
                error=(
                    f"Error: arguments for {name} must be a JSON object, "
                    f"got {type(parsed).__name__}"
                ),
            )
        try:
            args, kwargs = tool._binder.bind(dict(parsed))
        except pydantic.ValidationError as exc:
            report = _validation_report(exc)
            return _Prepared(
                name,
                call_id,
                started,
                error=_shorten(f"Error: invalid arguments for {name}: {report}"),
            )
        except Exception as exc:  # a user validator failing in an unexpected way
            return _Prepared(
                name,
                call_id,
                started,
                error=_shorten(f"Error: invalid arguments for {name}: {describe_error(exc)}"),
            )
        return _Prepared(name, call_id, started, tool=tool, args=tuple(args), kwargs=kwargs)

    @staticmethod
    def _finish(
        prep: _Prepared, outcome: Any = None, exc: Exception | None = None
    ) -> ToolExecution:
        error = prep.error
        if error is None and exc is not None:
            detail = redact(str(exc).strip())  # an API error in a tool can echo its key
            raised = f"{prep.name} raised {type(exc).__name__}"
            error = _shorten(f"Error: {raised}: {detail}" if detail else f"Error: {raised}")
        content = error
        if content is None:
            try:
                content = result_to_content(outcome)
            except Exception as conv_exc:
                content = error = _shorten(
                    f"Error: could not turn the result of {prep.name} into text: "
                    f"{type(conv_exc).__name__}: {conv_exc}"
                )
        # A lone surrogate (e.g. from a "\\udc80" escape in the arguments) cannot be sent as
        # UTF-8: repaired to U+FFFD here, as everything the history keeps is.
        content = repair_text(content)
        message = {"role": "tool", "tool_call_id": prep.call_id, "content": content}
        return ToolExecution(
            name=prep.name,
            call_id=prep.call_id,
            ok=error is None,
            duration=time.perf_counter() - prep.started,
            message=message,
            error=error,
        )

    # -- sync ----------------------------------------------------------------------------

    def execute_sync(self, tool_call: Mapping[str, Any]) -> ToolExecution:
        """Run one call and return the full record; see :meth:`run_sync`."""
        prep = self._prepare(tool_call)
        if prep.tool is None or prep.tool.fn is None:
            return self._finish(prep)
        try:
            outcome = prep.tool.fn(*prep.args, **(prep.kwargs or {}))
            if inspect.isawaitable(outcome):
                outcome = _run_awaitable_sync(outcome)
        except Exception as exc:
            return self._finish(prep, exc=exc)
        return self._finish(prep, outcome)

    def run_sync(self, tool_call: Mapping[str, Any]) -> dict[str, Any]:
        """Run one tool call and return its ``tool`` message.

        A sync function is called directly. An async one runs with ``asyncio.run``, or, when
        this thread already runs an event loop (notebooks), with ``asyncio.run`` in a worker
        thread; such a function must not use objects tied to the outer loop.

        Args:
            tool_call: An OpenAI-format tool call:
                ``{"id", "type": "function", "function": {"name", "arguments"}}``.

        Returns:
            ``{"role": "tool", "tool_call_id": ..., "content": ...}``; the content is an
            ``"Error: ..."`` report when the call could not be run or the function raised.

        Raises:
            UsageError: The call has no id, or names a schema-only tool.
        """
        return self.execute_sync(tool_call).message

    def execute_all_sync(self, tool_calls: Sequence[Mapping[str, Any]]) -> list[ToolExecution]:
        """Run calls one after another; see :meth:`run_all_sync`."""
        return [self.execute_sync(call) for call in tool_calls]

    def run_all_sync(self, tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run calls one after another and return their ``tool`` messages, in order."""
        return [ex.message for ex in self.execute_all_sync(tool_calls)]

    # -- async ---------------------------------------------------------------------------

    async def execute_async(self, tool_call: Mapping[str, Any]) -> ToolExecution:
        """Run one call and return the full record; see :meth:`run_async`."""
        prep = self._prepare(tool_call)
        if prep.tool is None or prep.tool.fn is None:
            return self._finish(prep)
        fn, args, kwargs = prep.tool.fn, prep.args, prep.kwargs or {}
        try:
            if prep.tool.is_async:
                outcome = await fn(*args, **kwargs)
            else:
                outcome = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception as exc:
            return self._finish(prep, exc=exc)
        return self._finish(prep, outcome)

    async def run_async(self, tool_call: Mapping[str, Any]) -> dict[str, Any]:
        """Run one tool call and return its ``tool`` message.

        An async function is awaited; a sync one runs in a thread (``asyncio.to_thread``) so
        it does not block the loop. Errors are reported as in :meth:`run_sync`.
        """
        return (await self.execute_async(tool_call)).message

    async def execute_all_async(
        self, tool_calls: Sequence[Mapping[str, Any]]
    ) -> list[ToolExecution]:
        """Run calls concurrently; see :meth:`run_all_async`."""
        tasks = [asyncio.ensure_future(self.execute_async(call)) for call in tool_calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # Only cancellation or an interrupt gets here (tool errors become messages):
            # don't leave the sibling calls running unobserved.
            for task in tasks:
                task.cancel()
            raise

    async def run_all_async(self, tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run calls concurrently and return their ``tool`` messages in the order of the calls.

        Async functions run concurrently on the loop; sync functions run in threads, so
        they should be thread-safe when the model calls them in parallel.
        """
        return [ex.message for ex in await self.execute_all_async(tool_calls)]
