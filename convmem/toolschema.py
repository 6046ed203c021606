"""Tool schemas from Python functions: the ``tools=`` entry the API wants, built from a signature.

:func:`function_schema` reads a function's signature, type hints and Google-style docstring and
returns the OpenAI tool schema (``{"type": "function", "function": {...}}``); the same pass
builds the validator that later turns a call's JSON arguments back into Python arguments.
Running those calls is :mod:`convmem.tools`' job; the public names of this module are also
importable from there.

Schemas come from the signature via pydantic, so anything pydantic understands works as a
parameter type (``str``, ``int``, ``float``, ``bool``, ``None``/``Optional``, ``list[X]``,
``dict[str, X]``, ``tuple``, ``Literal``, ``Enum``, ``BaseModel``, ``TypedDict`` from
``typing_extensions``, dataclasses, ``Annotated[X, "description"]``, ``Field(...)``). A
parameter without a type hint accepts any JSON value and gets a schema with no ``"type"``; a
function with no description or with unannotated parameters gets a :class:`ToolSchemaWarning`
naming it, because the model would be told next to nothing about it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import pydantic
from pydantic.fields import FieldInfo

from convmem.docstrings import parse_docstring
from convmem.errors import UsageError

__all__ = [
    "ToolSchemaWarning",
    "function_schema",
    "parse_docstring",
]

#: What the API accepts as a function name.
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")

_EMPTY = inspect.Parameter.empty


class ToolSchemaWarning(UserWarning):
    """A tool built from a function tells the model little: no description, or untyped parameters.

    The schema still works (an untyped parameter accepts any JSON value), but a model picks
    and fills tools by their descriptions and types. Silence it for one function by adding a
    docstring and type hints, or with ``warnings.filterwarnings("ignore",
    category=ToolSchemaWarning)``.
    """


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


class ArgumentBinder:
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


def build_function_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    strict: bool,
) -> tuple[dict[str, Any], ArgumentBinder]:
    """The schema of a function tool, and the binder that validates its calls' arguments.

    :func:`function_schema` documents the arguments; :class:`convmem.tools.Tool` keeps both.
    Warns (:class:`ToolSchemaWarning`) when the function leaves the model guessing.
    """
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
    _warn_if_undescribed(fn, tool_name, has_description=bool(text), signature=signature)
    return schema_out, ArgumentBinder(model, params, frozenset(null_means_default))


def _warn_if_undescribed(
    fn: Callable[..., Any], name: str, *, has_description: bool, signature: inspect.Signature
) -> None:
    # A function without docstring or hints still makes a valid schema, which is why the gap
    # went unnoticed: the model sees a bare name and parameters that accept anything.
    untyped = [p.name for p in signature.parameters.values() if p.annotation is _EMPTY]
    problems: list[str] = []
    if not has_description:
        problems.append("no description (add a docstring or pass description=...)")
    if untyped:
        listed = ", ".join(repr(p) for p in untyped)
        problems.append(
            f"no type hint on parameter{'s' if len(untyped) > 1 else ''} {listed} "
            "(the schema accepts any JSON value there)"
        )
    if not problems:
        return
    qualname = _callable_qualname(fn)
    which = f"tool {name!r}" + (f" (function {qualname})" if qualname != name else "")
    warnings.warn(
        f"{which} tells the model little: {'; '.join(problems)}",
        ToolSchemaWarning,
        stacklevel=_caller_stacklevel(),
    )


def _callable_qualname(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or _callable_name(fn)
    return f"{module}.{qualname}" if module and module != "__main__" else str(qualname)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside convmem."""
    level = 1  # 1 would be the caller of warnings.warn, i.e. inside convmem
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


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
    schema, _ = build_function_tool(fn, name=name, description=description, strict=strict)
    return schema


def _check_name(name: Any, *, hint: bool = False) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        fix = "; pass name=... to choose one" if hint else ""
        raise UsageError(
            f"tool name {name!r} is not allowed: names must match ^[a-zA-Z0-9_-]{{1,64}}${fix}"
        )


def check_tool_schema(schema: Any) -> str:
    """Validate a hand-written tool schema mapping and return its function name.

    Raises:
        UsageError: The schema is not a function tool, or says what is missing or wrong.
    """
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


def binder_for(fn: Callable[..., Any], name: str) -> ArgumentBinder:
    """Validation for a function paired with a hand-written schema (``Tool(schema, fn)``).

    Raises:
        UsageError: ``fn`` takes ``*args`` or its signature cannot be read.
    """
    signature = _signature(fn, name)
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        raise UsageError(f"the function for tool {name!r} takes *args; name its parameters")
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return ArgumentBinder(None, ())
    model, params = _arguments_model(signature, name, {})
    return ArgumentBinder(model, params)
