"""Tool (function) calling: schemas from Python functions, and running the calls a model makes.

``Conversation.send(..., tools=[...])`` takes a mix of OpenAI tool schemas
(``{"type": "function", "function": {...}}``), plain Python callables (sync or async) and
:class:`Tool` objects. :class:`ToolRegistry` turns them into the ``tools=`` list the API wants
and, when the model calls a function convmem knows, runs it and builds the ``tool`` message.

Schemas come from the signature via pydantic, so anything pydantic understands works as a
parameter type (``str``, ``int``, ``float``, ``bool``, ``None``/``Optional``, ``list[X]``,
``dict[str, X]``, ``tuple``, ``Literal``, ``Enum``, ``BaseModel``, ``TypedDict`` from
``typing_extensions``, dataclasses, ``Annotated[X, "description"]``, ``Field(...)``). A
parameter without a type hint accepts any JSON value and gets a schema with no ``"type"``.

Running a tool never raises for things the *model* got wrong or the *function* did: bad JSON,
arguments that fail validation, an unknown tool name and an exception inside the function all
become a short ``"Error: ..."`` tool message the model can read and recover from.
``KeyboardInterrupt``, ``SystemExit`` and ``asyncio.CancelledError`` always propagate.

This module does no I/O of its own; the only side effects are the user's functions.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, get_args, get_origin

import pydantic
import pydantic_core
from pydantic.fields import FieldInfo

from convmem.errors import UsageError

__all__ = [
    "Tool",
    "ToolExecution",
    "ToolRegistry",
    "function_schema",
    "parse_docstring",
    "result_to_content",
]

_T = TypeVar("_T")

#: What the API accepts as a function name.
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")

# Error texts go back to the model; an unbounded exception message or validation report
# would cost tokens on every later call that keeps the turn.
_MAX_ERROR_CHARS = 1000

_EMPTY = inspect.Parameter.empty


# ---------------------------------------------------------------------------
# Docstrings


_ARG_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
)
_SECTIONS = _ARG_SECTIONS | {
    "attributes",
    "example",
    "examples",
    "exceptions",
    "methods",
    "note",
    "notes",
    "other parameters",
    "raises",
    "references",
    "return",
    "returns",
    "see also",
    "todo",
    "warning",
    "warnings",
    "warns",
    "yield",
    "yields",
}
_SECTION_RE = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _unwrap_paragraphs(lines: list[str]) -> str:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into a description and per-parameter descriptions.

    The description is everything before the first section header (``Args:``,
    ``Returns:``, ...), with hard-wrapped lines joined and paragraphs kept. Parameter
    descriptions come from the ``Args:`` section (also ``Arguments:``, ``Parameters:``,
    ``Params:``, ``Keyword Args:``); an entry is ``name: text`` or ``name (type): text``,
    and more-indented lines continue it.

    Args:
        doc: The docstring, or None.

    Returns:
        ``(description, {parameter name: description})``; empty when there is no docstring.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        header = _SECTION_RE.match(line) if indent == 0 else None
        if header and header.group(1).strip().lower() in _SECTIONS:
            section = header.group(1).strip().lower()
            entry_indent, current = None, None
            continue
        if section is None:
            description.append(line)
            continue
        if section not in _ARG_SECTIONS or not line.strip():
            continue
        if entry_indent is None:
            entry_indent = indent
        if indent <= entry_indent:
            match = _ARG_RE.match(line.strip())
            if match:
                current = match.group(1)
                params[current] = match.group(2).strip()
                continue
            current = None
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return _unwrap_paragraphs(description), params


# ---------------------------------------------------------------------------
# Schema post-processing

# Keywords whose value is one subschema / a map of subschemas / a list of subschemas.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")


def _map_subschemas(schema: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Return a copy of ``schema`` with ``fn`` applied to each direct subschema."""
    out = dict(schema)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = fn(out[key])
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {k: fn(v) for k, v in out[key].items()}
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [fn(v) for v in out[key]]
    return out


def _strip_titles(schema: Any) -> Any:
    # pydantic titles every field ("City" for `city`); they only cost tokens. Walking schema
    # nodes (not raw dict keys) keeps a *property* called "title".
    if not isinstance(schema, dict):
        return schema
    out = _map_subschemas(schema, _strip_titles)
    out.pop("title", None)
    return out


def _ref_name(ref: Any) -> str | None:
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return ref[len("#/$defs/") :]
    return None


def _refs_in(schema: Any) -> set[str]:
    found: set[str] = set()

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            name = _ref_name(node.get("$ref"))
            if name is not None:
                found.add(name)
            _map_subschemas(node, visit)
        return node

    visit(schema)
    return found


def _recursive_defs(defs: Mapping[str, Any]) -> set[str]:
    edges = {name: _refs_in(body) for name, body in defs.items()}
    recursive: set[str] = set()
    for start in defs:
        seen: set[str] = set()
        stack = list(edges[start])
        while stack:
            name = stack.pop()
            if name == start:
                recursive.add(start)
                break
            if name in seen or name not in edges:
                continue
            seen.add(name)
            stack.extend(edges[name])
    return recursive


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``$ref``s with the definitions they point to, except recursive ones.

    Inlined schemas work with every OpenAI-compatible server (several local ones ignore
    ``$defs``). Recursive types cannot be inlined, so their ``$defs`` stay; a reference that
    carries sibling keywords (``{"$ref": ..., "description": ...}``) is unrolled one level,
    because OpenAI's strict mode refuses siblings next to ``$ref``.
    """
    defs: dict[str, Any] = schema.get("$defs", {})
    keep = _recursive_defs(defs)

    def resolve(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = _map_subschemas(node, resolve)
        name = _ref_name(node.get("$ref"))
        if name is None or name not in defs:
            return node
        if name in keep and len(node) == 1:
            return node
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        # Siblings win: a field's description beats the referenced class's docstring.
        target = copy.deepcopy(defs[name]) if name in keep else resolve(defs[name])
        return {**target, **siblings}

    body = {k: v for k, v in schema.items() if k != "$defs"}
    out: dict[str, Any] = resolve(body)
    if keep:
        out["$defs"] = {name: resolve(defs[name]) for name in defs if name in keep}
    return out


def _accepts_null(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    variants = [*schema.get("anyOf", []), *schema.get("oneOf", [])]
    return any(isinstance(v, Mapping) and _accepts_null(v) for v in variants)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kind, "null"]}
    outer: dict[str, Any] = {k: schema[k] for k in ("description", "default") if k in schema}
    inner = {k: v for k, v in schema.items() if k not in outer}
    return {"anyOf": [inner, {"type": "null"}], **outer}


_TYPED = ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")


def _make_strict(schema: Any, path: str) -> Any:
    """Apply OpenAI's strict-mode rules to every object in ``schema``.

    Every object gets ``additionalProperties: false`` and lists all its properties as
    required; ``default: null`` is dropped (the schema is nullable anyway). Schemas strict
    mode cannot express (no type at all, free-form ``dict[str, X]``) raise
    :class:`UsageError` naming where they are.
    """
    if not isinstance(schema, dict):
        return schema
    where = f"parameter {path!r}" if path else "the top level"
    if not any(key in schema for key in _TYPED):
        raise UsageError(
            f"strict mode needs a type for {where}: add a type hint (a parameter without one "
            "accepts any JSON value, which strict mode cannot express) or pass strict=False"
        )
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and schema.get("additionalProperties", False) is not False:
        raise UsageError(
            f"strict mode cannot express a free-form object (dict) at {where}: use a "
            "BaseModel, TypedDict or dataclass with named fields, or pass strict=False"
        )
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _MAP and isinstance(value, dict):
            prefix = "$defs." if key in ("$defs", "definitions") else (f"{path}." if path else "")
            out[key] = {k: _make_strict(v, f"{prefix}{k}") for k, v in value.items()}
        elif key in _LIST and isinstance(value, list):
            out[key] = [_make_strict(v, path) for v in value]
        elif key in _ONE and isinstance(value, dict):
            out[key] = _make_strict(value, f"{path}[]" if key == "items" else path)
        else:
            out[key] = value
    if is_object:
        out["additionalProperties"] = False
        out.setdefault("properties", {})
        out["required"] = list(out["properties"])
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


# ---------------------------------------------------------------------------
# Building a tool from a function


def _callable_name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or inspect.isclass(fn):
        return str(getattr(fn, "__name__", type(fn).__name__))
    return type(fn).__name__


def _callable_doc(fn: Callable[..., Any]) -> str | None:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isroutine(fn) or inspect.isclass(fn)):
        call_doc = inspect.getdoc(type(fn).__call__)
        return call_doc or inspect.getdoc(type(fn))
    return inspect.getdoc(fn)


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    call: object = type(fn).__call__  # a callable object may have an async __call__
    if inspect.iscoroutinefunction(fn):
        return True
    return not (inspect.isroutine(fn) or inspect.isclass(fn)) and inspect.iscoroutinefunction(call)


def _annotation_description(annotation: Any) -> str | None:
    """The description an ``Annotated[...]`` hint carries: a ``Field``'s, else a plain string."""
    if get_origin(annotation) is not Annotated:
        return None
    metadata = get_args(annotation)[1:]
    for item in reversed(metadata):
        if isinstance(item, FieldInfo) and item.description:
            return item.description
    for item in reversed(metadata):
        if isinstance(item, str):
            return item
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class _Param:
    field: str  # the field's name inside the pydantic model (never clashes with BaseModel)
    name: str  # the Python parameter name, which is also the JSON property name
    positional_only: bool


class _Binder:
    """Validates a call's JSON arguments against a signature and binds them to it."""

    def __init__(
        self,
        model: type[pydantic.BaseModel] | None,
        params: Sequence[_Param],
        null_means_default: frozenset[str] = frozenset(),
    ) -> None:
        self.model = model
        self.params = tuple(params)
        self.null_means_default = null_means_default

    def bind(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Return ``(args, kwargs)``; raises ``pydantic.ValidationError`` on bad arguments."""
        if self.model is None:
            # A hand-written schema over a ``**kwargs`` function: nothing to validate against.
            return [], dict(arguments)
        # Strict mode made optional parameters required-but-nullable; null asks for the default.
        arguments = {
            k: v for k, v in arguments.items() if not (v is None and k in self.null_means_default)
        }
        validated = self.model.model_validate(arguments)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self.params:
            # getattr, not model_dump: a BaseModel parameter must arrive as a model instance.
            value = getattr(validated, param.field)
            if param.positional_only:
                args.append(value)
            else:
                kwargs[param.name] = value
        return args, kwargs


def _signature(fn: Callable[..., Any], name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn, eval_str=True)
    except NameError as exc:
        raise UsageError(
            f"cannot resolve the type hints of tool {name!r} ({exc}); define the types "
            "at module level so they can be found"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot read the signature of tool {name!r}: {exc}") from exc


def _arguments_model(
    signature: inspect.Signature, name: str, doc_params: Mapping[str, str]
) -> tuple[type[pydantic.BaseModel], list[_Param]]:
    """A pydantic model of the parameters; fields are aliased so no name clashes with BaseModel."""
    fields: dict[str, Any] = {}
    params: list[_Param] = []
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise UsageError(
                f"tool {name!r} takes {star}{param.name}: a tool's parameters must be named "
                "so the model can be told about them; list them explicitly"
            )
        annotation = Any if param.annotation is _EMPTY else param.annotation
        desc = _annotation_description(annotation) or doc_params.get(param.name)
        extra = pydantic.Field(alias=param.name, description=desc)
        default = ... if param.default is _EMPTY else param.default
        field = f"p{index}"
        fields[field] = (Annotated[annotation, extra], default)
        params.append(_Param(field, param.name, param.kind is param.POSITIONAL_ONLY))
    try:
        model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{name}_arguments",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
    except pydantic.PydanticUserError as exc:
        raise UsageError(
            f"cannot use the parameters of tool {name!r}{_blame(signature)}: {_first_line(exc)}"
        ) from exc
    return model, params


def _build(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    strict: bool,
) -> tuple[dict[str, Any], _Binder]:
    if not callable(fn):
        raise UsageError(f"a tool must be a callable or a tool schema, got {type(fn).__name__}")
    tool_name = name if name is not None else _callable_name(fn)
    _check_name(tool_name, hint=name is None)
    signature = _signature(fn, tool_name)
    doc_description, doc_params = parse_docstring(_callable_doc(fn))
    model, params = _arguments_model(signature, tool_name, doc_params)
    try:
        raw = model.model_json_schema()
    except pydantic.PydanticUserError as exc:
        raise UsageError(
            f"cannot make a JSON schema for tool {tool_name!r}{_blame(signature)}: "
            f"{_first_line(exc)}"
        ) from exc

    parameters = _inline_defs(_strip_titles(raw))
    parameters.pop("description", None)
    parameters.setdefault("properties", {})
    null_means_default: set[str] = set()
    if strict:
        optional = set(parameters["properties"]) - set(parameters.get("required", []))
        for prop in optional:
            schema = parameters["properties"][prop]
            if not _accepts_null(schema):
                parameters["properties"][prop] = _nullable(schema)
                null_means_default.add(prop)
        parameters = _make_strict(parameters, "")
    function: dict[str, Any] = {"name": tool_name}
    text = description if description is not None else doc_description
    if text:
        function["description"] = text
    function["parameters"] = parameters
    if strict:
        function["strict"] = True
    schema_out = {"type": "function", "function": function}
    return schema_out, _Binder(model, params, frozenset(null_means_default))


def _blame(signature: inspect.Signature) -> str:
    """Name the first parameter pydantic cannot handle, for the error message."""
    for param in signature.parameters.values():
        if param.annotation is _EMPTY:
            continue
        try:
            pydantic.TypeAdapter(param.annotation).json_schema()
        except pydantic.PydanticUserError:
            return f" (parameter {param.name!r}: {param.annotation!r})"
        except Exception:  # only looking for a culprit to name
            continue
    return ""


def function_schema(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Build the OpenAI tool schema for a Python function.

    The parameters schema comes from the signature and type hints (through pydantic, so
    nested models, dataclasses, enums and ``Literal`` work); parameters with defaults are
    not required. Descriptions come from ``Annotated[X, "text"]`` or ``Field(description=...)``,
    else from the docstring's ``Args:`` section; the tool's description is the docstring text
    before its first section. Nested definitions are inlined, except recursive types, which
    keep ``$defs``. Unknown argument names are refused (``additionalProperties: false``).
    A parameter without a type hint accepts any JSON value (its schema has no ``"type"``).

    Args:
        fn: The function (sync or async), a ``functools.partial``, or a callable object.
        name: The tool name; defaults to the function's ``__name__``.
        description: Overrides the docstring description.
        strict: Follow OpenAI's strict rules: every object closed and every property
            required; parameters with defaults become nullable, and null means "use the
            default" when the tool runs. Sets ``"strict": true`` on the function.

    Returns:
        ``{"type": "function", "function": {"name", "description", "parameters"}}``
        (``description`` is left out when there is none).

    Raises:
        UsageError: ``*args``/``**kwargs`` in the signature, a name the API refuses, a type
            pydantic cannot describe, or (strict) a type strict mode cannot express.
    """
    schema, _ = _build(fn, name=name, description=description, strict=strict)
    return schema


def _check_name(name: Any, *, hint: bool = False) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        fix = "; pass name=... to choose one" if hint else ""
        raise UsageError(
            f"tool name {name!r} is not allowed: names must match ^[a-zA-Z0-9_-]{{1,64}}${fix}"
        )


def _check_schema(schema: Any) -> str:
    """Validate a tool schema mapping and return its function name."""
    if not isinstance(schema, Mapping):
        raise UsageError(f"a tool schema must be a mapping, got {type(schema).__name__}")
    if "type" not in schema and "name" in schema:
        raise UsageError(
            f"tool schema for {schema.get('name')!r} is a bare function definition: wrap it "
            'as {"type": "function", "function": {...}}'
        )
    if schema.get("type") != "function":
        raise UsageError(
            f'tool schema needs "type": "function" (got {schema.get("type")!r}); '
            "only function tools are supported"
        )
    function = schema.get("function")
    if not isinstance(function, Mapping):
        raise UsageError('tool schema is missing "function" (a mapping with "name")')
    if "name" not in function:
        raise UsageError('tool schema is missing "function.name"')
    _check_name(function["name"])
    if "description" in function and not isinstance(function["description"], str):
        raise UsageError(f'"function.description" of tool {function["name"]!r} must be a string')
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise UsageError(
            f'"function.parameters" of tool {function["name"]!r} must be a JSON schema object'
        )
    return str(function["name"])


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
        self.name = _check_schema(schema)
        self.schema: dict[str, Any] = copy.deepcopy(dict(schema))
        self.fn = fn
        self.is_async = fn is not None and _is_async_callable(fn)
        self._binder = _binder_for(fn, self.name) if fn is not None else None

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
        schema, binder = _build(fn, name=name, description=description, strict=strict)
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


def _binder_for(fn: Callable[..., Any], name: str) -> _Binder:
    """Validation for a function paired with a hand-written schema."""
    signature = _signature(fn, name)
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        raise UsageError(f"the function for tool {name!r} takes *args; name its parameters")
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return _Binder(None, ())
    model, params = _arguments_model(signature, name, {})
    return _Binder(model, params)


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
                error=_shorten(f"Error: invalid arguments for {name}: {type(exc).__name__}: {exc}"),
            )
        return _Prepared(name, call_id, started, tool=tool, args=tuple(args), kwargs=kwargs)

    @staticmethod
    def _finish(
        prep: _Prepared, outcome: Any = None, exc: Exception | None = None
    ) -> ToolExecution:
        error = prep.error
        if error is None and exc is not None:
            detail = str(exc).strip()
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
