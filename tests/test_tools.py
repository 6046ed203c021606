"""Tests for convmem.tools: schemas from functions, registry validation, running calls."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import json
import threading
import warnings
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from convmem.errors import UsageError
from convmem.tools import (
    Tool,
    ToolExecution,
    ToolRegistry,
    ToolSchemaWarning,
    function_schema,
    parse_docstring,
    result_to_content,
)

# Most fixtures here are terse on purpose; the warning for them is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::convmem.tools.ToolSchemaWarning")

# --- fixtures: types and functions at module level (annotations are strings here) ----------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Location(BaseModel):
    """A point on Earth."""

    lat: float
    lon: float = 0.0


class Node(BaseModel):
    value: int
    children: list[Node] = []


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Window:
    start: int
    end: int


class Titled(BaseModel):
    title: str


def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
    """Get the current weather
    for a city.

    Args:
        city: The city
            name.
        unit (str): Temperature unit.

    Returns:
        A sentence.
    """
    return f"{city}:{unit}"


def no_params() -> str:
    """Say hi."""
    return "hi"


def call(name: str, arguments: Any = "{}", call_id: str = "call_1") -> dict[str, Any]:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def params_of(fn: Any, **kwargs: Any) -> dict[str, Any]:
    schema = function_schema(fn, **kwargs)
    params: dict[str, Any] = schema["function"]["parameters"]
    return params


# --- schemas -------------------------------------------------------------------------------


def test_simple_schema_exact() -> None:
    assert function_schema(get_weather) == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city name."},
                    "unit": {
                        "type": "string",
                        "enum": ["c", "f"],
                        "default": "c",
                        "description": "Temperature unit.",
                    },
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }


def test_strict_schema_exact() -> None:
    def search(query: str, limit: int = 5, lang: str | None = None) -> list[str]:
        return []

    assert function_schema(search, strict=True) == {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    # Optional parameters become required-but-nullable.
                    "limit": {"type": ["integer", "null"], "default": 5},
                    # Already nullable: left as is, minus the null default.
                    "lang": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["query", "limit", "lang"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }


def test_no_parameters() -> None:
    assert function_schema(no_params) == {
        "type": "function",
        "function": {
            "name": "no_params",
            "description": "Say hi.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
    strict = params_of(no_params, strict=True)
    assert strict == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }


def test_overrides_and_no_description() -> None:
    def f(x: int) -> int:
        return x

    schema = function_schema(f, name="double-it", description="Doubles.")
    assert schema["function"]["name"] == "double-it"
    assert schema["function"]["description"] == "Doubles."
    assert "description" not in function_schema(f)["function"]


def test_container_and_scalar_types() -> None:
    def f(
        a: list[int],
        b: dict[str, float],
        c: tuple[int, str],
        d: bool,
        e: None,
        g: int | None = None,
        h: Literal["only"] = "only",
    ) -> None:
        pass

    props = params_of(f)["properties"]
    assert props["a"] == {"type": "array", "items": {"type": "integer"}}
    assert props["b"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["c"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["d"] == {"type": "boolean"}
    assert props["e"] == {"type": "null"}
    assert props["g"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["h"] == {"const": "only", "type": "string", "default": "only"}
    assert params_of(f)["required"] == ["a", "b", "c", "d", "e"]


def test_nested_types_are_inlined_without_titles() -> None:
    def f(loc: Location, color: Color, point: Point, window: Window) -> None:
        pass

    params = params_of(f)
    assert "$defs" not in params
    assert "$ref" not in json.dumps(params)
    assert "title" not in json.dumps(params)
    props = params["properties"]
    assert props["loc"] == {
        "type": "object",
        "description": "A point on Earth.",
        "properties": {"lat": {"type": "number"}, "lon": {"type": "number", "default": 0.0}},
        "required": ["lat"],
    }
    assert props["color"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["point"]["properties"] == {"x": {"type": "integer"}, "y": {"type": "integer"}}
    assert props["window"]["required"] == ["start", "end"]


def test_recursive_model_keeps_defs() -> None:
    def f(tree: Node) -> None:
        pass

    params = params_of(f)
    assert params["properties"]["tree"] == {"$ref": "#/$defs/Node"}
    node = params["$defs"]["Node"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert "title" not in node


def test_recursive_ref_with_description_is_unrolled_one_level() -> None:
    def f(tree: Annotated[Node, "the tree"]) -> None:
        pass

    prop = params_of(f)["properties"]["tree"]
    assert "$ref" not in prop
    assert prop["description"] == "the tree"
    assert prop["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}


def test_property_called_title_survives() -> None:
    def f(item: Titled, title: str) -> None:
        pass

    props = params_of(f)["properties"]
    assert props["title"] == {"type": "string"}
    assert props["item"]["properties"] == {"title": {"type": "string"}}


def test_description_sources_and_precedence() -> None:
    def f(
        a: Annotated[int, "from annotated"],
        b: Annotated[int, Field(description="from field")],
        c: int = Field(3, description="from default field"),
        d: int = 0,
    ) -> None:
        """Summary.

        Args:
            a: from docstring (loses).
            d: from docstring.
        """

    props = params_of(f)["properties"]
    assert props["a"]["description"] == "from annotated"
    assert props["b"]["description"] == "from field"
    assert props["c"] == {"type": "integer", "default": 3, "description": "from default field"}
    assert props["d"]["description"] == "from docstring."


def test_undescribed_function_warns_naming_it() -> None:
    def lookup(query, limit=3):  # type: ignore[no-untyped-def]
        return query

    with pytest.warns(ToolSchemaWarning) as caught:
        schema = function_schema(lookup)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "tool 'lookup'" in text
    assert "test_undescribed_function_warns_naming_it.<locals>.lookup" in text
    assert "no description" in text
    assert "parameters 'query', 'limit'" in text
    # The warning points at the line that asked for the schema, not into convmem.
    assert caught[0].filename == __file__
    # The schema is still made: the warning is advice, not a refusal.
    assert schema["function"]["parameters"]["properties"]["query"] == {}


def test_warning_names_only_what_is_missing() -> None:
    def typed(x: int) -> int:
        return x

    def documented(x):  # type: ignore[no-untyped-def]
        """Echo."""
        return x

    with pytest.warns(ToolSchemaWarning, match=r"'typed'.*no description") as caught:
        ToolRegistry.from_tools([typed])
    assert "type hint" not in str(caught[0].message)
    assert caught[0].filename == __file__
    with pytest.warns(ToolSchemaWarning, match=r"no type hint on parameter 'x'") as caught:
        Tool.from_function(documented)
    assert "no description" not in str(caught[0].message)


def test_described_function_does_not_warn() -> None:
    def f(x: int) -> int:
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        function_schema(get_weather)
        function_schema(no_params)
        function_schema(f, description="Doubles.")  # description= stands in for a docstring
        ToolRegistry.from_tools([get_weather, {"type": "function", "function": {"name": "x"}}])


def test_schema_generation_lives_in_toolschema() -> None:
    import convmem.docstrings
    import convmem.toolschema

    assert function_schema is convmem.toolschema.function_schema
    assert ToolSchemaWarning is convmem.toolschema.ToolSchemaWarning
    assert parse_docstring is convmem.docstrings.parse_docstring


def test_missing_type_hint_is_any() -> None:
    def f(x, y: int = 1):  # type: ignore[no-untyped-def]
        return x

    props = params_of(f)["properties"]
    assert props["x"] == {}
    assert props["y"] == {"type": "integer", "default": 1}


def test_strict_rejects_what_it_cannot_express() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def free_form(x: dict[str, int]) -> None:
        pass

    def free_form_any(x: list[dict[str, Any]]) -> None:
        pass

    with pytest.raises(UsageError, match="strict mode needs a type for parameter 'x'"):
        function_schema(untyped, strict=True)
    with pytest.raises(UsageError, match="free-form object"):
        function_schema(free_form, strict=True)
    with pytest.raises(UsageError, match=r"free-form object \(dict\) at parameter 'x\[\]'"):
        function_schema(free_form_any, strict=True)


def test_strict_applies_to_nested_objects() -> None:
    def f(loc: Location, points: list[Point]) -> None:
        pass

    props = params_of(f, strict=True)["properties"]
    assert props["loc"]["additionalProperties"] is False
    assert props["loc"]["required"] == ["lat", "lon"]
    assert props["points"]["items"]["additionalProperties"] is False


def test_var_args_rejected() -> None:
    def f(*args: int) -> None:
        pass

    def g(a: int, **kwargs: int) -> None:
        pass

    with pytest.raises(UsageError, match=r"\*args"):
        function_schema(f)
    with pytest.raises(UsageError, match=r"\*\*kwargs"):
        function_schema(g)


def test_bad_names() -> None:
    with pytest.raises(UsageError, match="pass name="):
        function_schema(lambda x: x)
    assert function_schema(lambda x: x, name="ident")["function"]["name"] == "ident"
    with pytest.raises(UsageError, match="not allowed"):
        function_schema(get_weather, name="x" * 65)
    with pytest.raises(UsageError, match="not allowed"):
        function_schema(get_weather, name="has space")


class Opaque:
    pass


def test_unsupported_type_is_a_usage_error() -> None:
    def f(a: int, thing: Opaque) -> None:
        pass

    with pytest.raises(UsageError, match="parameter 'thing'"):
        function_schema(f)


def test_unresolvable_hint_is_a_usage_error() -> None:
    class Local:  # invisible to string annotations (this file uses __future__ annotations)
        pass

    def f(thing: Local) -> None:
        pass

    with pytest.raises(UsageError, match="cannot resolve the type hints of tool 'f'"):
        function_schema(f)


def test_partial_callable_object_and_async() -> None:
    async def fetch(url: str, retries: int = 2) -> str:
        """Fetch a page."""
        return url

    class Adder:
        """Adds numbers."""

        def __call__(self, a: int, b: int) -> int:
            return a + b

    class AsyncAdder:
        async def __call__(self, a: int) -> int:
            return a

    sync_fetch_schema = function_schema(fetch)
    assert sync_fetch_schema["function"]["description"] == "Fetch a page."
    assert Tool.from_function(fetch).is_async
    assert not Tool.from_function(get_weather).is_async
    assert Tool.from_function(AsyncAdder()).is_async

    adder = function_schema(Adder())
    assert adder["function"]["name"] == "Adder"
    assert adder["function"]["description"] == "Adds numbers."
    assert adder["function"]["parameters"]["required"] == ["a", "b"]

    part = function_schema(functools.partial(get_weather, unit="f"))
    assert part["function"]["name"] == "get_weather"
    assert part["function"]["description"] == "Get the current weather for a city."


# --- docstrings ----------------------------------------------------------------------------


def test_parse_docstring() -> None:
    doc = """Summary line.

    More detail
    wrapped.

    Args:
        alpha (int): First
            continued.
        beta: Second.
        *rest: Rest.

    Returns:
        beta: not a parameter.
    """
    description, params = parse_docstring(doc)
    assert description == "Summary line.\n\nMore detail wrapped."
    assert params == {"alpha": "First continued.", "beta": "Second.", "rest": "Rest."}
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("Parameters:\n    x: y") == ("", {"x": "y"})


# --- registry ------------------------------------------------------------------------------

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def test_registry_from_mixed_tools() -> None:
    tool = Tool.from_function(no_params, name="hello")
    registry = ToolRegistry.from_tools([get_weather, WEATHER_SCHEMA, tool])
    assert [s["function"]["name"] for s in registry.schemas] == ["get_weather", "lookup", "hello"]
    assert registry.schemas[1] == WEATHER_SCHEMA
    assert registry.schemas[1] is not WEATHER_SCHEMA  # copied
    assert registry.get("lookup") is not None and registry.get("lookup").fn is None  # type: ignore[union-attr]
    assert registry.get("hello") is tool
    assert registry.get("nope") is None
    assert len(registry) == 3 and "lookup" in registry
    assert len(ToolRegistry.from_tools(None)) == 0
    assert ToolRegistry.from_tools(registry) is registry


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([get_weather, get_weather], "duplicate tool name 'get_weather'"),
        ([get_weather, {**WEATHER_SCHEMA, "function": {"name": "get_weather"}}], "duplicate"),
        ([{"type": "function"}], 'missing "function"'),
        ([{"type": "function", "function": {"description": "x"}}], 'missing "function.name"'),
        ([{"type": "retrieval"}], '"type": "function"'),
        ([{"name": "f", "parameters": {}}], "bare function definition"),
        ([{"type": "function", "function": {"name": "a b"}}], "not allowed"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON schema"),
        ([{"type": "function", "function": {"name": "f", "description": 3}}], "description"),
        ([42], "got int"),
        ("get_weather", "must be a list"),
    ],
)
def test_registry_validation(tools: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ToolRegistry.from_tools(tools)


def test_can_run_all() -> None:
    registry = ToolRegistry.from_tools([get_weather, WEATHER_SCHEMA])
    assert registry.can_run_all([call("get_weather")])
    assert registry.can_run_all([])
    # A made-up name is answered with an error message, so convmem can still handle it.
    assert registry.can_run_all([call("get_weather"), call("invented")])
    assert not registry.can_run_all([call("get_weather"), call("lookup")])
    assert not registry.can_run_all([{"id": "c", "type": "custom", "custom": {"name": "x"}}])


def test_running_a_schema_only_tool_is_a_usage_error() -> None:
    registry = ToolRegistry.from_tools([WEATHER_SCHEMA])
    with pytest.raises(UsageError, match="can_run_all"):
        registry.run_sync(call("lookup", {"q": "x"}))


# --- running calls -------------------------------------------------------------------------


def test_run_sync_basic_and_coercion() -> None:
    received: dict[str, Any] = {}

    def locate(loc: Location, color: Color, times: int, window: Window) -> str:
        received.update(loc=loc, color=color, times=times, window=window)
        return "ok"

    registry = ToolRegistry.from_tools([locate])
    args = {"loc": {"lat": "1.5"}, "color": "blue", "times": "3", "window": {"start": 1, "end": 2}}
    message = registry.run_sync(call("locate", args, call_id="call_9"))
    assert message == {"role": "tool", "tool_call_id": "call_9", "content": "ok"}
    assert received["loc"] == Location(lat=1.5)
    assert received["color"] is Color.BLUE
    assert received["times"] == 3
    assert received["window"] == Window(1, 2)


def test_defaults_and_positional_only() -> None:
    def f(a: int, /, b: int = 10, *, c: str = "x") -> str:
        return f"{a}-{b}-{c}"

    registry = ToolRegistry.from_tools([f])
    assert registry.run_sync(call("f", {"a": 1}))["content"] == "1-10-x"
    assert registry.run_sync(call("f", {"a": 1, "b": 2, "c": "y"}))["content"] == "1-2-y"


def test_strict_null_means_default() -> None:
    def f(a: int, b: int = 10, c: int | None = 7) -> str:
        return f"{a}-{b}-{c}"

    registry = ToolRegistry([Tool.from_function(f, strict=True)])
    # b was made nullable by strict mode, so null asks for its default; c accepts None itself.
    assert registry.run_sync(call("f", {"a": 1, "b": None, "c": None}))["content"] == "1-10-None"


def test_parameter_names_that_shadow_basemodel_attributes() -> None:
    def f(json: str, schema: int, model_config: bool = False) -> str:
        return f"{json}{schema}{model_config}"

    registry = ToolRegistry.from_tools([f])
    assert registry.run_sync(call("f", {"json": "a", "schema": 2}))["content"] == "a2False"


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("plain text", "plain text"),
        (None, "null"),
        (3, "3"),
        ({"a": [1, 2], "b": "é"}, '{"a":[1,2],"b":"é"}'),
        ([Window(1, 2)], '[{"start":1,"end":2}]'),
        (Location(lat=1.0), '{"lat":1.0,"lon":0.0}'),
        ({"c": Color.RED}, '{"c":"red"}'),
    ],
)
def test_result_to_content(value: Any, content: str) -> None:
    assert result_to_content(value) == content


def test_result_fallback_str() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    assert result_to_content({"t": Thing()}) == '{"t":"a thing"}'


def test_bad_json_arguments() -> None:
    registry = ToolRegistry.from_tools([get_weather])
    message = registry.run_sync(call("get_weather", '{"city" "Paris"}'))
    assert message["content"] == (
        "Error: arguments are not valid JSON (Expecting ':' delimiter: line 1 column 9). "
        "Send the call again with valid JSON."
    )
    assert registry.run_sync(call("get_weather", "[1]"))["content"] == (
        "Error: arguments for get_weather must be a JSON object, got list"
    )


def test_empty_arguments_for_a_function_without_parameters() -> None:
    registry = ToolRegistry.from_tools([no_params])
    assert registry.run_sync(call("no_params", ""))["content"] == "hi"


def test_invalid_arguments() -> None:
    registry = ToolRegistry.from_tools([get_weather])
    content = registry.run_sync(call("get_weather", {"unit": "k", "citty": "Paris"}))["content"]
    assert content.startswith("Error: invalid arguments for get_weather: ")
    assert "city: Field required" in content
    assert "unit: Input should be 'c' or 'f'" in content
    assert "citty: Extra inputs are not permitted" in content


def test_raising_tool_is_reported_briefly() -> None:
    def explode(n: int) -> None:
        raise ValueError(f"bad n {n}")

    def silent() -> None:
        raise RuntimeError

    registry = ToolRegistry.from_tools([explode, silent])
    assert registry.run_sync(call("explode", {"n": 2}))["content"] == (
        "Error: explode raised ValueError: bad n 2"
    )
    assert registry.run_sync(call("silent"))["content"] == "Error: silent raised RuntimeError"


def test_long_error_is_shortened() -> None:
    def verbose() -> None:
        raise ValueError("x" * 5000)

    content = ToolRegistry.from_tools([verbose]).run_sync(call("verbose"))["content"]
    assert len(content) <= 1000 and content.endswith("...")


def test_unknown_tool() -> None:
    registry = ToolRegistry.from_tools([get_weather])
    assert registry.run_sync(call("x")) == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Error: no tool named 'x'",
    }


def test_call_without_id_is_a_usage_error() -> None:
    registry = ToolRegistry.from_tools([get_weather])
    with pytest.raises(UsageError, match="no string id"):
        registry.run_sync({"type": "function", "function": {"name": "get_weather"}})


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_interrupts_propagate_sync(exc_type: type[BaseException]) -> None:
    def stop() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        ToolRegistry.from_tools([stop]).run_sync(call("stop"))


async def test_cancellation_propagates_async() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await ToolRegistry.from_tools([cancelled]).run_async(call("cancelled"))


def test_interrupt_propagates_from_thread() -> None:
    # Sync test with its own loop: a KeyboardInterrupt escaping a task stops the loop itself,
    # which under pytest-asyncio would stop the whole test session.
    def stop() -> None:
        raise KeyboardInterrupt

    registry = ToolRegistry.from_tools([stop])
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(registry.run_all_async([call("stop")]))


def test_execution_record() -> None:
    def fails() -> None:
        raise ValueError("no")

    registry = ToolRegistry.from_tools([get_weather, fails])
    good = registry.execute_sync(call("get_weather", {"city": "Oslo"}, call_id="a"))
    bad = registry.execute_sync(call("fails", call_id="b"))
    assert isinstance(good, ToolExecution)
    assert (good.name, good.call_id, good.ok, good.error) == ("get_weather", "a", True, None)
    assert good.message["content"] == "Oslo:c" and good.duration >= 0
    assert (bad.ok, bad.error) == (False, "Error: fails raised ValueError: no")


def test_sdk_tool_call_objects_are_accepted() -> None:
    from openai.types.chat import ChatCompletionMessageToolCall

    sdk_call = ChatCompletionMessageToolCall.model_validate(call("get_weather", {"city": "Rome"}))
    assert ToolRegistry.from_tools([get_weather]).run_sync(sdk_call)["content"] == "Rome:c"  # type: ignore[arg-type]


def test_tool_from_schema_with_kwargs_function() -> None:
    def handler(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    registry = ToolRegistry([Tool(WEATHER_SCHEMA, handler)])
    assert registry.schemas == [WEATHER_SCHEMA]
    assert registry.run_sync(call("lookup", {"q": "x"}))["content"] == '{"q":"x"}'


def test_tool_from_schema_validates_against_the_function() -> None:
    def lookup(q: int) -> int:
        return q * 2

    registry = ToolRegistry([Tool(WEATHER_SCHEMA, lookup)])
    assert registry.run_sync(call("lookup", {"q": "21"}))["content"] == "42"
    assert "invalid arguments" in registry.run_sync(call("lookup", {"q": "x"}))["content"]


# --- sync and async running ----------------------------------------------------------------


async def add_async(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def test_sync_registry_runs_async_fn_without_a_loop() -> None:
    registry = ToolRegistry.from_tools([add_async])
    assert registry.run_sync(call("add_async", {"a": 1, "b": 2}))["content"] == "3"


async def test_sync_registry_runs_async_fn_inside_a_running_loop() -> None:
    # What a notebook does: sync code called while this thread's loop is running.
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def where(a: int) -> int:
        seen.append(threading.get_ident())
        await asyncio.sleep(0)
        return a

    registry = ToolRegistry.from_tools([where])
    assert registry.run_all_sync([call("where", {"a": 5})])[0]["content"] == "5"
    assert seen and seen[0] != loop_thread


async def test_async_runs_sync_fn_in_a_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def blocking(a: int) -> int:
        seen.append(threading.get_ident())
        return a

    registry = ToolRegistry.from_tools([blocking])
    assert (await registry.run_async(call("blocking", {"a": 1})))["content"] == "1"
    assert seen and seen[0] != loop_thread


async def test_parallel_calls_run_concurrently_and_keep_order() -> None:
    events: list[str] = []
    released = asyncio.Event()

    async def waiter(tag: str) -> str:
        events.append(f"start {tag}")
        # Only the setter call releases this: run one after the other, it would never finish.
        await released.wait()
        events.append(f"end {tag}")
        return tag

    async def setter(tag: str) -> str:
        events.append(f"start {tag}")
        await asyncio.sleep(0)
        released.set()
        events.append(f"end {tag}")
        return tag

    def sync_tool(tag: str) -> str:
        return tag

    registry = ToolRegistry.from_tools([waiter, setter, sync_tool])
    calls = [
        call("waiter", {"tag": "w"}, call_id="1"),
        call("sync_tool", {"tag": "s"}, call_id="2"),
        call("nope", call_id="3"),
        call("setter", {"tag": "x"}, call_id="4"),
    ]
    # The timeout only keeps a broken (sequential) implementation from hanging the suite.
    messages = await asyncio.wait_for(registry.run_all_async(calls), timeout=10)
    assert [m["tool_call_id"] for m in messages] == ["1", "2", "3", "4"]
    assert [m["content"] for m in messages] == ["w", "s", "Error: no tool named 'nope'", "x"]
    assert events == ["start w", "start x", "end x", "end w"]


async def test_async_error_handling_matches_sync() -> None:
    async def explode() -> None:
        raise ValueError("boom")

    registry = ToolRegistry.from_tools([explode, get_weather])
    messages = await registry.run_all_async(
        [call("explode", call_id="a"), call("get_weather", "{bad", call_id="b")]
    )
    assert messages[0]["content"] == "Error: explode raised ValueError: boom"
    assert messages[1]["content"].startswith("Error: arguments are not valid JSON")
    sync_messages = registry.run_all_sync(
        [call("explode", call_id="a"), call("get_weather", "{bad", call_id="b")]
    )
    assert sync_messages == messages


async def test_cancelling_run_all_cancels_running_calls() -> None:
    started = asyncio.Event()
    cancelled: list[str] = []

    async def slow(tag: str) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise
        return tag

    registry = ToolRegistry.from_tools([slow])
    task = asyncio.ensure_future(
        registry.run_all_async([call("slow", {"tag": "a"}), call("slow", {"tag": "b"})])
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["a", "b"]
