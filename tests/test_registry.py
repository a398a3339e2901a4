"""relay.tools: schemas from type hints, discovery, and running calls into outcomes."""

from __future__ import annotations

import asyncio
import enum
import logging
import textwrap
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import httpx
import orjson
import pytest

from relay.call_control import end_call
from relay.errors import ToolError
from relay.tools import (
    CallInfo,
    Registry,
    ToolContext,
    ToolOutcome,
    load_tools,
    schema_for,
    tool,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point:
    pass


_NOT_JSON = object()


class RecordingControl:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def end_call(self, reason: str = "") -> None:
        self.ended.append(reason)

    def transfer(self, number: str | None = None) -> str:
        return number or "+15550001111"


@pytest.fixture
async def ctx() -> Any:
    transport = httpx.MockTransport(lambda request: httpx.Response(599))
    async with httpx.AsyncClient(transport=transport) as http:
        log = logging.LoggerAdapter(logging.getLogger("test.tools"), {"call_sid": "CA123"})
        call = CallInfo("CA123", "+15550002222", "+15550003333", "inbound", {"lang": "en"})
        yield ToolContext(call=call, http=http, log=log, control=RecordingControl())


def loads(outcome: ToolOutcome) -> Any:
    assert isinstance(outcome.result, str)
    return orjson.loads(outcome.result)


# --- schemas -------------------------------------------------------------------------------


def test_scalar_types_map_to_json_types() -> None:
    def f(s: str, i: int, x: float, b: bool) -> None:
        """Doc."""

    assert schema_for(f) == {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "x": {"type": "number"},
            "b": {"type": "boolean"},
        },
        "required": ["s", "i", "x", "b"],
        "additionalProperties": False,
    }


def test_literal_and_enum_become_typed_enums() -> None:
    def f(mode: Literal["fast", "slow"], n: Literal[1, 2], color: Color, level: Level,
          flag: Literal[True]) -> None:
        """Doc."""

    assert schema_for(f)["properties"] == {
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "n": {"type": "integer", "enum": [1, 2]},
        "color": {"type": "string", "enum": ["red", "green"]},
        "level": {"type": "integer", "enum": [1, 2]},
        "flag": {"type": "boolean", "enum": [True]},
    }


def test_lists_have_item_schemas() -> None:
    def f(names: list[str], colors: list[Color],
          counts: list[Annotated[int, "a count"]], grid: list[list[float]]) -> None:
        """Doc."""

    assert schema_for(f)["properties"] == {
        "names": {"type": "array", "items": {"type": "string"}},
        "colors": {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}},
        "counts": {"type": "array", "items": {"type": "integer", "description": "a count"}},
        "grid": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    }


def test_optional_and_defaulted_parameters_are_not_required() -> None:
    def f(a: str, b: str | None = None, c: Optional[int] = None, d: int = 3,  # noqa: UP045
          e: Color = Color.GREEN, g: list[int] = [1, 2], h: str | None = None,  # noqa: B006
          k: bool = _NOT_JSON) -> None:  # type: ignore[assignment]
        """Doc."""

    schema = schema_for(f)
    assert schema["required"] == ["a"]
    assert schema["properties"] == {
        "a": {"type": "string"},
        "b": {"type": "string", "default": None},
        "c": {"type": "integer", "default": None},
        "d": {"type": "integer", "default": 3},
        "e": {"type": "string", "enum": ["red", "green"], "default": "green"},
        "g": {"type": "array", "items": {"type": "integer"}, "default": [1, 2]},
        "h": {"type": "string", "default": None},
        "k": {"type": "boolean"},  # default left out: not JSON-serialisable
    }


def test_optional_without_default_is_optional_too() -> None:
    def f(note: str | None) -> None:
        """Doc."""

    assert schema_for(f) == {
        "type": "object",
        "properties": {"note": {"type": "string", "default": None}},
        "additionalProperties": False,
    }


def test_annotated_text_becomes_a_normalised_description() -> None:
    def f(city: Annotated[str, "City name,\n   e.g. Paris"],
          zip_code: Annotated[str | None, 42, "Postal code"] = None,
          unit: Annotated[Literal["c", "f"], "Unit"] = "c") -> None:
        """Doc."""

    assert schema_for(f)["properties"] == {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "zip_code": {"type": "string", "description": "Postal code", "default": None},
        "unit": {"type": "string", "enum": ["c", "f"], "description": "Unit", "default": "c"},
    }


def test_no_parameters() -> None:
    def ping() -> str:
        """Doc."""
        return "pong"

    assert schema_for(ping) == {"type": "object", "properties": {}, "additionalProperties": False}


def test_spec_uses_name_and_first_docstring_paragraph() -> None:
    @tool
    def look_up_order(order_id: str) -> None:
        """Look up an order's
           shipping   status. Use it when asked where an order is.

        Developer notes that the agent never sees.
        """

    assert Registry([look_up_order]).specs == [{
        "type": "function",
        "name": "look_up_order",
        "description": "Look up an order's shipping status. Use it when asked where an order is.",
        "parameters": schema_for(look_up_order),
    }]


def test_name_and_description_can_be_given() -> None:
    @tool(name="orders-lookup", description="Find an order.")
    def impl(order_id: str) -> None:
        """Ignored."""

    spec = Registry([impl]).specs[0]
    assert (spec["name"], spec["description"]) == ("orders-lookup", "Find an order.")


def test_decorated_function_stays_callable_and_is_not_registered_globally() -> None:
    @tool
    def double(n: int) -> int:
        """Double a number."""
        return n * 2

    assert double(4) == 8
    assert Registry().names() == []
    assert Registry([double]).names() == ["double"]


def test_plain_functions_are_decorated_on_add() -> None:
    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    registry = Registry()
    registry.add(shout)
    assert registry.names() == ["shout"]
    assert registry.specs[0]["parameters"]["required"] == ["text"]


def test_specs_are_copies() -> None:
    def f(a: list[int]) -> None:
        """Doc."""

    registry = Registry([f])
    registry.specs[0]["parameters"]["properties"]["a"]["items"]["type"] = "string"
    assert registry.specs[0]["parameters"]["properties"]["a"]["items"] == {"type": "integer"}


def _with_hint(hint: Any) -> Any:
    def broken(ok: int, x: int) -> None:
        """Doc."""

    broken.__annotations__ = {"ok": int, "x": hint}
    return broken


@pytest.mark.parametrize("hint", [
    dict, dict[str, int], set[int], tuple[int, ...], Point, Any, list, int | str,
    Optional[int | str], list[int | None], Literal["a", 1], Literal[None], Annotated[bytes, "x"],  # noqa: UP045
])
def test_unsupported_hints_name_tool_and_parameter(hint: Any) -> None:
    with pytest.raises(ToolError, match=r"tool 'broken': parameter 'x': unsupported type"):
        tool(_with_hint(hint))


def test_unsupported_type_is_named() -> None:
    with pytest.raises(ToolError, match=r"unsupported type Point"):
        tool(_with_hint(Point))


def test_missing_annotation_and_variadics_are_rejected() -> None:
    def no_hint(ok: int, x) -> None:  # type: ignore[no-untyped-def]
        """Doc."""

    def star(*x: int) -> None:
        """Doc."""

    def double_star(**x: int) -> None:
        """Doc."""

    for fn in (no_hint, star, double_star):
        with pytest.raises(ToolError, match=rf"tool '{fn.__name__}': parameter 'x': "):
            tool(fn)


def test_docstring_is_required() -> None:
    def silent(a: int) -> None:
        pass

    with pytest.raises(ToolError, match=r"tool 'silent': needs a docstring"):
        tool(silent)


def test_bad_name_is_rejected() -> None:
    def f() -> None:
        """Doc."""

    with pytest.raises(ToolError, match=r"tool 'has space'"):
        tool(name="has space")(f)


def test_context_is_injected_anywhere_and_left_out_of_the_schema() -> None:
    def first(ctx: ToolContext, a: int) -> None:
        """Doc."""

    def middle(a: int, context: ToolContext, b: str = "") -> None:
        """Doc."""

    assert schema_for(first)["properties"] == {"a": {"type": "integer"}}
    assert list(schema_for(middle)["properties"]) == ["a", "b"]


def test_duplicate_names_are_rejected() -> None:
    @tool
    def ping() -> str:
        """Doc."""
        return "pong"

    @tool(name="ping")
    def other() -> str:
        """Doc."""
        return "pong"

    with pytest.raises(ToolError, match=r"tool 'ping' is defined twice"):
        Registry([ping, other])
    registry = Registry([ping])
    with pytest.raises(ToolError, match="defined twice"):
        registry.add(ping)
    assert registry.names() == ["ping"]


# --- discovery -----------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Any:
    """A fresh tools folder (not a package, not on sys.path); yields (path, write(file, src))."""
    root = tmp_path / "my tools"
    root.mkdir()

    def write(file: str, source: str) -> None:
        (root / file).write_text(textwrap.dedent(source))

    yield root, write


def test_load_tools_registers_decorated_functions_of_every_file(
        folder: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root, write = folder
    write("alpha.py", """
        from relay.tools import tool

        @tool
        def hello(who: str) -> str:
            '''Say hello.'''
            return "hello " + who

        def helper() -> None:
            '''Not a tool.'''

        greet = hello  # an alias is still one tool
    """)
    write("beta.py", """
        from relay.tools import tool
        from relay.call_control import end_call  # imported, not defined here

        @tool
        async def bye() -> str:
            '''Say goodbye.'''
            return "bye"
    """)
    write("_private.py", "raise RuntimeError('private modules are skipped')\n")
    write("notes.txt", "not python")
    monkeypatch.chdir(tmp_path)  # the working directory plays no part

    assert load_tools(root).names() == ["hello", "bye"]

    write("gamma.py", """
        from relay.tools import tool

        @tool
        def added_later(n: int) -> int:
            '''Added after the first load.'''
            return n
    """)
    registry = load_tools(str(root))
    assert registry.names() == ["hello", "bye", "added_later"]
    assert [s["description"] for s in registry.specs][-1] == "Added after the first load."


def test_load_tools_adds_to_a_given_registry_and_refuses_duplicates(folder: Any) -> None:
    root, write = folder
    write("mine.py", """
        from relay.tools import tool

        @tool
        def end_call() -> str:
            '''A second tool with a built-in's name.'''
            return "no"
    """)
    with pytest.raises(ToolError, match="'end_call' is defined twice"):
        load_tools(root, Registry([end_call]))


def test_two_folders_with_the_same_file_names_do_not_clash(tmp_path: Path) -> None:
    for name, tool_name in (("a", "first"), ("b", "second")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clock.py").write_text(textwrap.dedent(f"""
            from relay.tools import tool

            @tool
            def {tool_name}() -> str:
                '''Doc.'''
                return "{tool_name}"
        """))
    assert load_tools(tmp_path / "a").names() == ["first"]
    assert load_tools(tmp_path / "b").names() == ["second"]


def test_load_tools_reports_a_broken_tool(folder: Any) -> None:
    root, write = folder
    write("bad.py", """
        from relay.tools import tool

        @tool
        def lookup(filters: dict) -> None:
            '''Doc.'''
    """)
    with pytest.raises(ToolError, match=r"tool 'lookup': parameter 'filters'"):
        load_tools(root)


def test_load_tools_reports_a_file_that_fails_to_import(folder: Any) -> None:
    root, write = folder
    write("broken.py", "import no_such_module_here\n")
    with pytest.raises(ToolError, match=r"broken.py: failed to import: ModuleNotFoundError"):
        load_tools(root)


def test_load_tools_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        load_tools(tmp_path / "missing")


# --- calls ---------------------------------------------------------------------------------


@tool
def echo(ctx: ToolContext, text: str, times: int = 1, ratio: float = 1.0,
         color: Color = Color.RED, tags: list[Level] = [],  # noqa: B006
         note: str | None = "default note", loud: bool = False) -> dict[str, Any]:
    """Echo the arguments back with their Python types."""
    return {"text": text * times, "ratio": ratio, "color": repr(color),
            "tags": [repr(t) for t in tags], "note": note, "loud": loud, "sid": ctx.call.call_sid}


ECHO = Registry([echo])


@pytest.mark.anyio
@pytest.mark.parametrize("arguments", [
    {"text": "hi", "times": 2},
    '{"text": "hi", "times": 2}',
])
async def test_object_and_json_string_arguments(ctx: ToolContext, arguments: object) -> None:
    outcome = await ECHO.call("echo", arguments, ctx, timeout=1)
    assert outcome.is_error is False
    assert loads(outcome) == {"text": "hihi", "ratio": 1.0, "color": "<Color.RED: 'red'>",
                              "tags": [], "note": "default note", "loud": False, "sid": "CA123"}


@pytest.mark.anyio
@pytest.mark.parametrize("arguments", [None, "", "  ", "null"])
async def test_empty_arguments_mean_no_arguments(ctx: ToolContext, arguments: object) -> None:
    def ping() -> str:
        """Doc."""
        return "pong"

    outcome = await Registry([ping]).call("ping", arguments, ctx, timeout=1)
    assert outcome == ToolOutcome('"pong"', False)


@pytest.mark.anyio
async def test_values_are_converted_back_to_python_types(ctx: ToolContext) -> None:
    outcome = await ECHO.call("echo", {"text": "a", "times": 3.0, "ratio": 2, "color": "green",
                                       "tags": [2, 1], "note": None, "loud": True}, ctx, timeout=1)
    assert loads(outcome) == {"text": "aaa", "ratio": 2, "color": "<Color.GREEN: 'green'>",
                              "tags": ["<Level.HIGH: 2>", "<Level.LOW: 1>"], "note": None,
                              "loud": True, "sid": "CA123"}


@pytest.mark.anyio
async def test_null_for_a_non_nullable_optional_means_its_default(ctx: ToolContext) -> None:
    outcome = await ECHO.call("echo", {"text": "a", "times": None, "color": None}, ctx, timeout=1)
    assert (loads(outcome)["text"], loads(outcome)["color"]) == ("a", "<Color.RED: 'red'>")


@pytest.mark.anyio
@pytest.mark.parametrize(("arguments", "problem"), [
    ({}, "missing required parameter 'text'"),
    ({"times": 2}, "missing required parameter 'text'"),
    ({"text": None}, "parameter 'text' must be a string"),
    ({"text": "a", "extra": 1, "ctx": 2}, "unexpected parameter 'ctx', 'extra'"),
    ({"text": 5}, "parameter 'text' must be a string"),
    ({"text": "a", "times": True}, "parameter 'times' must be an integer"),
    ({"text": "a", "times": "2"}, "parameter 'times' must be an integer"),
    ({"text": "a", "times": 2.5}, "parameter 'times' must be an integer"),
    ({"text": "a", "ratio": "1.5"}, "parameter 'ratio' must be a number"),
    ({"text": "a", "ratio": False}, "parameter 'ratio' must be a number"),
    ({"text": "a", "loud": 1}, "parameter 'loud' must be a boolean"),
    ({"text": "a", "color": "blue"}, 'parameter \'color\' must be one of "red", "green"'),
    ({"text": "a", "tags": 1}, "parameter 'tags' must be an array"),
    ({"text": "a", "tags": [1, 3]}, "parameter 'tags[1]' must be one of 1, 2"),
    ({"text": "a", "tags": [True]}, "parameter 'tags[0]' must be an integer"),
    ([1, 2], "the arguments must be a JSON object"),
    ("[1, 2]", "the arguments must be a JSON object"),
    ("{not json", "the arguments are not valid JSON"),
    (42, "the arguments must be a JSON object"),
])
async def test_invalid_arguments_are_error_outcomes(
    ctx: ToolContext, arguments: object, problem: str
) -> None:
    outcome = await ECHO.call("echo", arguments, ctx, timeout=1)
    assert outcome.is_error is True
    assert loads(outcome) == {"error": f"Invalid arguments for echo: {problem}."}


@pytest.mark.anyio
async def test_unknown_tool(ctx: ToolContext) -> None:
    outcome = await ECHO.call("nope", {}, ctx, timeout=1)
    assert outcome.is_error is True
    assert loads(outcome) == {"error": "There is no tool called 'nope'."}


@pytest.mark.anyio
async def test_sync_tools_run_in_a_thread_async_tools_on_the_loop(ctx: ToolContext) -> None:
    def sync_thread() -> int:
        """Doc."""
        return threading.get_ident()

    async def async_thread() -> int:
        """Doc."""
        return threading.get_ident()

    registry = Registry([sync_thread, async_thread])
    here = threading.get_ident()
    assert loads(await registry.call("sync_thread", None, ctx, timeout=1)) != here
    assert loads(await registry.call("async_thread", None, ctx, timeout=1)) == here


@pytest.mark.anyio
async def test_results_are_always_json_text(ctx: ToolContext) -> None:
    def text() -> str:
        """Doc."""
        return 'say "hi"'

    def nothing() -> None:
        """Doc."""

    def numbers() -> dict[int, float]:
        """Doc."""
        return {1: 0.5}

    registry = Registry([text, nothing, numbers])
    assert await registry.call("text", None, ctx, timeout=1) == ToolOutcome('"say \\"hi\\""', False)
    assert await registry.call("nothing", None, ctx, timeout=1) == ToolOutcome("null", False)
    assert await registry.call("numbers", None, ctx, timeout=1) == ToolOutcome('{"1":0.5}', False)


@pytest.mark.anyio
async def test_non_serialisable_result_is_an_error(ctx: ToolContext) -> None:
    def opaque() -> object:
        """Doc."""
        return Point()

    outcome = await Registry([opaque]).call("opaque", None, ctx, timeout=1)
    assert outcome.is_error is True
    assert loads(outcome) == {"error": "opaque returned something unusable."}


@pytest.mark.anyio
async def test_exception_is_an_error_outcome_without_details(
    ctx: ToolContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash() -> None:
        """Doc."""
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.INFO, logger="test.tools"):
        outcome = await Registry([crash]).call("crash", None, ctx, timeout=1)
    assert outcome.is_error is True
    assert loads(outcome) == {"error": "crash failed unexpectedly."}
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


@pytest.mark.anyio
async def test_value_error_message_is_for_the_agent(ctx: ToolContext) -> None:
    def picky(n: int) -> int:
        """Doc."""
        raise ValueError("Only even numbers, please.")

    outcome = await Registry([picky]).call("picky", {"n": 3}, ctx, timeout=1)
    assert outcome == ToolOutcome('{"error":"Only even numbers, please."}', True)


@pytest.mark.anyio
async def test_own_timeout_error_is_a_failure_not_a_timeout(ctx: ToolContext) -> None:
    async def flaky() -> None:
        """Doc."""
        raise TimeoutError

    outcome = await Registry([flaky]).call("flaky", None, ctx, timeout=5)
    assert loads(outcome) == {"error": "flaky failed unexpectedly."}


@pytest.mark.anyio
async def test_async_timeout_is_an_error_within_the_bound(ctx: ToolContext) -> None:
    async def slow() -> None:
        """Doc."""
        await asyncio.sleep(10)

    started = time.monotonic()
    outcome = await Registry([slow]).call("slow", None, ctx, timeout=0.05)
    assert time.monotonic() - started < 0.5
    assert outcome == ToolOutcome('{"error":"slow took too long and was stopped."}', True)


@pytest.mark.anyio
async def test_sync_timeout_is_an_error_within_the_bound(ctx: ToolContext) -> None:
    release = threading.Event()

    def stuck() -> None:
        """Doc."""
        release.wait(5)

    started = time.monotonic()
    try:
        outcome = await Registry([stuck]).call("stuck", None, ctx, timeout=0.05)
    finally:
        release.set()
    assert time.monotonic() - started < 0.5
    assert outcome.is_error is True
    assert loads(outcome) == {"error": "stuck took too long and was stopped."}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_cancellation_propagates(ctx: ToolContext, kind: str) -> None:
    running, release = threading.Event(), threading.Event()

    async def waits_async() -> None:
        """Doc."""
        running.set()
        await asyncio.sleep(10)

    def waits_sync() -> None:
        """Doc."""
        running.set()
        release.wait(5)

    registry = Registry([waits_async, waits_sync])
    task = asyncio.create_task(registry.call(f"waits_{kind}", None, ctx, timeout=5))
    try:
        assert await asyncio.to_thread(running.wait, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
    assert task.cancelled()


@pytest.mark.anyio
async def test_logs_name_and_duration_but_no_argument_values(
    ctx: ToolContext, caplog: pytest.LogCaptureFixture
) -> None:
    def lookup(account: str) -> str:
        """Doc."""
        if account == "bad-4111":
            raise ValueError(f"No account {account}.")
        return "ok"

    registry = Registry([lookup])
    with caplog.at_level(logging.INFO, logger="test.tools"):
        await registry.call("lookup", {"account": "ok-4111"}, ctx, timeout=1)
        await registry.call("lookup", {"account": "bad-4111"}, ctx, timeout=1)
        await registry.call("lookup", {"account": 4111}, ctx, timeout=1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "tool lookup finished in" in messages[0] and messages[0].endswith(" ms")
    assert "tool lookup refused after" in messages[1]
    assert "must be a string" in messages[2]
    assert not [m for m in messages if "4111" in m]
