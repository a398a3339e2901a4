"""Tool registry: typed Python functions become agent tools.

Owns three things and nothing else: turning a function's signature into the agent's flat
tool definition (agent API §3.1.4), checking the agent's arguments against it, and running
one call into a ``ToolOutcome`` whose ``result`` is always JSON text (§3.4). It never
touches a socket; the relay core sends the outcome and decides when.

A tool is a plain sync or async function marked with :func:`tool`. Its name is the
function's name, its description the docstring's first paragraph, its parameters come from
the type hints, and a parameter annotated ``ToolContext`` is injected rather than described.
Hints the registry cannot describe raise ``ToolError`` when the module is imported, so a
broken tool stops the server at start-up instead of failing mid-call.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import hashlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar, overload

import httpx
import orjson

from relay.errors import ToolError

__all__ = ["CallControl", "CallInfo", "Registry", "ToolContext", "ToolOutcome", "load_tools",
           "schema_for", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__agent_tool__"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SUPPORTED = "str, int, float, bool, Literal, Enum, list[T], T | None, Annotated[T, 'text']"


@dataclass(frozen=True, slots=True)
class CallInfo:
    call_sid: str
    caller: str  # the From number, "" if unknown
    called: str  # the To number
    direction: str  # "inbound" | "outbound" | "phone"
    parameters: Mapping[str, str]  # the call's custom <Parameter>s, without the stream token


class CallControl(Protocol):
    """What a tool may do to the live call; both act after the agent's next reply."""

    def end_call(self, reason: str = "") -> None:
        """Hang up once the agent's next reply (the goodbye) has been heard."""

    def transfer(self, number: str | None = None) -> str:
        """Redirect the call to ``number`` (None: TRANSFER_NUMBER) after the agent's next reply.

        Returns the number used. Raises ValueError, with a message the agent can speak, if the
        number is not allowed or none is configured.
        """
        ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    call: CallInfo
    http: httpx.AsyncClient  # shared, owned by the app's lifespan; usable from async tools only
    log: logging.LoggerAdapter[logging.Logger]  # carries the call sid
    control: CallControl


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: str  # JSON text, sent as tool.result.result
    is_error: bool

    @classmethod
    def error(cls, message: str) -> ToolOutcome:
        return cls(orjson.dumps({"error": message}).decode(), True)


class _Invalid(Exception):
    """The agent's arguments do not match a tool's schema."""


@dataclass(frozen=True, slots=True)
class _Type:
    """How one JSON value is checked and turned back into the Python type."""

    json: str  # the JSON Schema "type"
    choices: tuple[Any, ...] = ()  # allowed values; empty means any value of `json`
    enum: type[enum.Enum] | None = None
    items: _Type | None = None

    def convert(self, value: object, path: str) -> object:
        where = f"parameter {path!r}"
        if self.items is not None:
            if not isinstance(value, list):
                raise _Invalid(f"{where} must be an array")
            return [self.items.convert(v, f"{path}[{i}]") for i, v in enumerate(value)]
        ok = {
            "string": isinstance(value, str),
            "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
        }[self.json]
        if not ok and self.json == "integer" and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True  # JSON Schema counts 3.0 as an integer
        if not ok:
            raise _Invalid(f"{where} must be {'an' if self.json[0] == 'i' else 'a'} {self.json}")
        if self.choices and value not in self.choices:
            allowed = ", ".join(orjson.dumps(c).decode() for c in self.choices)
            raise _Invalid(f"{where} must be one of {allowed}")
        return self.enum(value) if self.enum is not None else value


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    type: _Type
    required: bool
    nullable: bool
    default: Any


@dataclass(frozen=True, slots=True)
class _Tool:
    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema
    params: tuple[_Param, ...]
    context: tuple[str, ...]  # parameters that receive the ToolContext

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": copy.deepcopy(self.parameters)}

    def bind(self, arguments: object, ctx: ToolContext) -> dict[str, Any]:
        """Keyword arguments for the function; an absent or null optional value is the default.

        Error messages name parameters, never values: they end up in logs.
        """
        args = _parse(arguments)
        known = {p.name for p in self.params}
        unknown = sorted(str(k) for k in args if k not in known)
        if unknown:
            raise _Invalid(f"unexpected parameter {', '.join(map(repr, unknown))}")
        kwargs: dict[str, Any] = dict.fromkeys(self.context, ctx)
        for p in self.params:
            value = args.get(p.name)
            if p.name not in args and p.required:
                raise _Invalid(f"missing required parameter {p.name!r}")
            if value is None and not p.required:
                kwargs[p.name] = None if p.name in args and p.nullable else p.default
            else:
                kwargs[p.name] = p.type.convert(value, p.name)
        return kwargs


def _parse(arguments: object) -> Mapping[Any, Any]:
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise _Invalid("the arguments are not valid JSON") from None
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return arguments
    raise _Invalid("the arguments must be a JSON object")


def _describe(hint: Any, where: str, *, top: bool) -> tuple[dict[str, Any], _Type, bool]:
    """JSON Schema, checker and nullability of one hint; ToolError outside ``_SUPPORTED``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        schema, kind, nullable = _describe(args[0], where, top=top)
        text = next((m for m in args[1:] if isinstance(m, str)), None)
        return ({**schema, "description": " ".join(text.split())} if text else schema,
                kind, nullable)
    if top and origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        schema, kind, _ = _describe(next(a for a in args if a is not type(None)), where, top=False)
        return schema, kind, True
    if isinstance(hint, type) and hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}, _Type(_JSON_TYPES[hint]), False
    values: tuple[Any, ...] = ()
    if origin is Literal:
        values = args
    elif inspect.isclass(hint) and issubclass(hint, enum.Enum):
        values = tuple(member.value for member in hint)
    if values:
        kinds = {_JSON_TYPES.get(type(v)) for v in values}
        if len(kinds) == 1 and (json := kinds.pop()) is not None:
            enum_cls = hint if origin is not Literal else None
            return {"type": json, "enum": list(values)}, _Type(json, values, enum_cls), False
    if origin is list and len(args) == 1:
        items, kind, _ = _describe(args[0], where, top=False)
        return {"type": "array", "items": items}, _Type("array", items=kind), False
    name = hint.__qualname__ if inspect.isclass(hint) else repr(hint).replace("typing.", "")
    raise ToolError(f"{where}: unsupported type {name} (supported: {_SUPPORTED})")


def _first_paragraph(doc: str | None) -> str:
    return " ".join(re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0].split())


def _jsonable(value: Any) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return False, None


def _build(fn: Callable[..., Any], name: str | None, description: str | None) -> _Tool:
    name = name or str(getattr(fn, "__name__", ""))
    if not _NAME.fullmatch(name):
        raise ToolError(f"tool {name!r}: a name must be 1-64 letters, digits, '_' or '-'")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ToolError(f"tool {name!r}: generators are not supported; return a value")
    description = description.strip() if description else _first_paragraph(inspect.getdoc(fn))
    if not description:
        raise ToolError(f"tool {name!r}: needs a docstring (the agent reads it to decide when "
                        "to call the tool)")
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, SyntaxError, TypeError, ValueError) as exc:
        raise ToolError(f"tool {name!r}: cannot read its type hints: {exc}") from exc
    params: list[_Param] = []
    context: list[str] = []
    properties: dict[str, Any] = {}
    for p in signature.parameters.values():
        where = f"tool {name!r}: parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ToolError(f"{where}: unsupported kind of parameter ({p.kind.description})")
        if p.name not in hints:
            raise ToolError(f"{where}: missing type annotation")
        if hints[p.name] is ToolContext:
            context.append(p.name)
            continue
        schema, kind, nullable = _describe(hints[p.name], where, top=True)
        has_default = p.default is not p.empty
        default = p.default if has_default else None
        if has_default or nullable:
            serialisable, value = _jsonable(default)
            if serialisable:
                schema["default"] = value
        properties[p.name] = schema
        params.append(_Param(p.name, kind, not (has_default or nullable), nullable, default))
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    required = [p.name for p in params if p.required]
    if required:
        parameters["required"] = required
    parameters["additionalProperties"] = False
    return _Tool(fn, name, description, parameters, tuple(params), tuple(context))


def _definition(fn: Callable[..., Any]) -> _Tool:
    found = getattr(fn, _MARK, None)
    if isinstance(found, _Tool):
        return found if found.fn is fn else _build(fn, found.name, found.description)
    return _build(fn, None, None)


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...
def tool(
    fn: F | None = None, /, *, name: str | None = None, description: str | None = None
) -> F | Callable[[F], F]:
    """Mark a function as a tool, as ``@tool`` or ``@tool(name=..., description=...)``.

    The function is returned unchanged, so it stays directly callable.

    Raises:
        ToolError: naming the tool and parameter, for a hint the registry cannot describe.
    """

    def mark(f: F) -> F:
        setattr(f, _MARK, _build(f, name, description))
        return f

    return mark if fn is None else mark(fn)


def schema_for(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of ``fn``'s parameters, as the agent sees it."""
    return copy.deepcopy(_definition(fn).parameters)


class Registry:
    """The tools of one server: their specs for ``session.update`` and a way to run them."""

    def __init__(self, tools: Iterable[Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, _Tool] = {}
        for fn in tools:
            self.add(fn)

    def add(self, fn: Callable[..., Any]) -> None:
        """Register a function, marked with ``@tool`` or not.

        Raises:
            ToolError: if the function cannot be described or its name is taken.
        """
        definition = _definition(fn)
        if (taken := self._tools.get(definition.name)) is not None:
            raise ToolError(f"tool {definition.name!r} is defined twice: in "
                            f"{taken.fn.__module__} and {getattr(fn, '__module__', '?')}")
        self._tools[definition.name] = definition

    @property
    def specs(self) -> list[dict[str, Any]]:
        """Agent tool definitions (§3.1.4), in registration order; fresh copies."""
        return [t.spec() for t in self._tools.values()]

    def names(self) -> list[str]:
        return list(self._tools)

    async def call(self, name: str, arguments: object, ctx: ToolContext, *,
                   timeout: float) -> ToolOutcome:  # noqa: ASYNC109 (the tool's own deadline)
        """Run one tool call. Every failure becomes an error outcome the agent can talk around.

        Only cancellation escapes: it is the call ending, and must reach the call's TaskGroup.
        """
        definition = self._tools.get(name)
        if definition is None:
            ctx.log.warning("agent called unknown tool %r", name)
            return ToolOutcome.error(f"There is no tool called {name!r}.")
        try:
            kwargs = definition.bind(arguments, ctx)
        except _Invalid as exc:
            ctx.log.warning("tool %s: invalid arguments: %s", name, exc)
            return ToolOutcome.error(f"Invalid arguments for {name}: {exc}.")
        started = time.monotonic()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if inspect.iscoroutinefunction(definition.fn):
                    value = await definition.fn(**kwargs)
                else:  # a thread keeps blocking code off the event loop
                    value = await asyncio.to_thread(definition.fn, **kwargs)
        except ValueError as exc:  # raised on purpose, with a message meant for the agent
            ctx.log.info("tool %s refused after %.0f ms", name, _ms(started))
            ctx.log.debug("tool %s refused: %s", name, exc)
            return ToolOutcome.error(str(exc) or f"{name} could not do that.")
        except Exception:  # tools are user code: the second and last error boundary
            if deadline.expired():
                ctx.log.warning("tool %s timed out after %.1f s", name, timeout)
                return ToolOutcome.error(f"{name} took too long and was stopped.")
            ctx.log.exception("tool %s failed after %.0f ms", name, _ms(started))
            return ToolOutcome.error(f"{name} failed unexpectedly.")
        try:
            result = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            ctx.log.warning("tool %s returned a %s, which is not JSON", name, type(value).__name__)
            return ToolOutcome.error(f"{name} returned something unusable.")
        ctx.log.info("tool %s finished in %.0f ms", name, _ms(started))
        return ToolOutcome(result, False)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def load_tools(directory: str | os.PathLike[str], registry: Registry | None = None) -> Registry:
    """Import every ``*.py`` file of ``directory`` and register the ``@tool`` functions there.

    The folder is loaded by path, never from ``sys.path``, so which tools load does not depend
    on the working directory, and the folder is not a package (it needs no ``__init__.py``).
    Files whose name starts with ``_`` are skipped; files load in name order, so the agent
    sees the tools in a stable order. Tools are added to ``registry`` when one is given (the
    built-in call control comes first). Raises ToolError for a missing folder, a file that
    fails to import, a bad tool or a duplicate name.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ToolError(f"tools folder {str(folder)!r} does not exist (set TOOLS_DIR)")
    registry = registry if registry is not None else Registry()
    seen: set[int] = set()
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _import_file(path)
        for obj in list(vars(module).values()):
            if (callable(obj) and isinstance(getattr(obj, _MARK, None), _Tool)
                    and getattr(obj, "__module__", None) == module.__name__
                    and id(obj) not in seen):
                seen.add(id(obj))
                registry.add(obj)
    return registry


def _import_file(path: Path) -> types.ModuleType:
    """Import one tool file under a name of its own, so two folders' ``clock.py`` never clash."""
    digest = hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:8]
    name = f"relay_tools_{digest}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ToolError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and type hints look the module up by name
    try:
        spec.loader.exec_module(module)
    except ToolError:
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise ToolError(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    return module
