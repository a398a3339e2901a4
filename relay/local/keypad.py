"""Which tool each phone key calls on the local agent, and example arguments for it.

The local agent has no language model, so a caller chooses a tool with the keypad. The relay
reports a key as ``reply.create`` with instructions like "The caller pressed the key 5 on their
phone keypad."; the agent reads the key back out of that sentence.

The mapping is built from whatever tools the session declares:

* ``1``: a clock tool (``current_time``, ``get_current_time``, ``get_time``) if there is one,
  else the first tool without required parameters.
* ``2``: the first tool with "random" in its name, asked for a number from 1 to 6.
* ``3``–``9``: the other tools, in the session's order.
* ``0``: ``end_call`` (or ``hang_up``/``hangup``), which ends the call after the answer tone.

Call-control tools (hanging up, transfers) never sit on 1–9, so testing every key cannot
transfer a call. Arguments come from each tool's JSON schema (``example_arguments``): defaults,
enums and examples first, then an example quoted in the property's description ("e.g. Paris").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_KEY = re.compile(r"\bpress(?:ed|es)?\s+(?:the\s+)?(?:key\s+)?([0-9*#])(?![0-9])", re.IGNORECASE)
_CLOCKS = ("current_time", "get_current_time", "get_time")
_HANG_UPS = ("end_call", "hang_up", "hangup")
_CONTROL = re.compile(r"end_call|hang_?up|transfer", re.IGNORECASE)
_LOW = re.compile(r"^(min|minimum|low|lower|from|start)(_\w+)?$", re.IGNORECASE)
_HIGH = re.compile(r"^(max|maximum|high|upper|to|end)(_\w+)?$", re.IGNORECASE)
_SAMPLE = re.compile(r"""'([^']{1,40})'|"([^"]{1,40})"|\be\.g\.,?\s*([^\s,;)]+)""")
DICE = (1, 6)


@dataclass(frozen=True, slots=True)
class KeyTool:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Keypad:
    keys: dict[str, KeyTool] = field(default_factory=dict)

    @classmethod
    def from_tools(cls, tools: Iterable[Mapping[str, Any]]) -> Keypad:
        """Assign keys to the session's tools (see the module docstring for the rule)."""
        specs = [t for t in tools if isinstance(t.get("name"), str) and t["name"]]
        plain = [t for t in specs if not _CONTROL.search(t["name"])]
        keys: dict[str, Mapping[str, Any]] = {}
        clock = next((t for t in plain if t["name"] in _CLOCKS), None)
        first = clock or next((t for t in plain if not _required(t)), None)
        if first is not None:
            keys["1"] = first
        dice = next((t for t in plain if "random" in t["name"].lower()), None)
        if dice is not None:
            keys["2"] = dice
        taken = {t["name"] for t in keys.values()}
        rest = [t for t in plain if t["name"] not in taken]
        keys.update({str(digit): t for digit, t in zip(range(3, 10), rest, strict=False)})
        hang_up = next((t for t in specs if t["name"] in _HANG_UPS), None)
        if hang_up is not None:
            keys["0"] = hang_up
        return cls({k: KeyTool(t["name"], example_arguments(t.get("parameters"))) for k, t in
                    sorted(keys.items())})

    def describe(self) -> str:
        """``1=current_time 2=random_number …`` for the log."""
        return " ".join(f"{key}={tool.name}" for key, tool in self.keys.items()) or "none"


def pressed_key(instructions: object) -> str | None:
    """The key a ``reply.create`` reports ("… pressed the key 5 …"), if any."""
    if not isinstance(instructions, str):
        return None
    match = _KEY.search(instructions)
    return match.group(1) if match else None


def example_arguments(schema: object) -> dict[str, Any]:
    """Plausible arguments for a JSON schema: every required property, plus any range bounds.

    A ``min``/``max`` pair becomes 1 and 6 (a die), kept inside the schema's own limits.
    """
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = _names(schema.get("required"))
    arguments: dict[str, Any] = {}
    for name, prop in properties.items():
        prop = prop if isinstance(prop, Mapping) else {}
        if _LOW.match(name) and _numeric(prop):
            arguments[name] = _within(DICE[0], prop)
        elif _HIGH.match(name) and _numeric(prop):
            arguments[name] = _within(DICE[1], prop)
        elif name in required:
            arguments[name] = _example(prop)
    return arguments


def _required(tool: Mapping[str, Any]) -> list[str]:
    params = tool.get("parameters")
    return _names(params.get("required")) if isinstance(params, Mapping) else []


def _names(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _numeric(prop: Mapping[str, Any]) -> bool:
    return prop.get("type") in ("integer", "number")


def _within(value: int, prop: Mapping[str, Any]) -> int | float:
    low, high = prop.get("minimum"), prop.get("maximum")
    if isinstance(low, int | float) and value < low:
        return low
    if isinstance(high, int | float) and value > high:
        return high
    return value


def _example(prop: Mapping[str, Any]) -> Any:
    if "default" in prop:
        return prop["default"]
    if "const" in prop:
        return prop["const"]
    for key in ("enum", "examples"):
        values = prop.get(key)
        if isinstance(values, list) and values:
            return values[0]
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind in ("integer", "number"):
        return _within(1, prop)
    if kind == "string":
        sample = _SAMPLE.search(str(prop.get("description", "")))
        return next(g for g in sample.groups() if g) if sample else "test"
    return {"boolean": True, "array": [], "object": {}, "null": None}.get(str(kind), "test")
