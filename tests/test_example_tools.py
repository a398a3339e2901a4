"""The example tools in tools/, run through load_tools() and Registry.call like the relay does."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from app import TOOLS_DIR
from relay.call_control import end_call, transfer_call
from relay.tools import CallInfo, Registry, ToolContext, ToolOutcome, load_tools


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeControl:
    """Records what tools ask of the call; allows transfers to a fixed set of numbers."""

    default = "+15550001111"
    allowed = {"+15550001111", "+15550002222"}

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.transfers: list[str | None] = []

    def end_call(self, reason: str = "") -> None:
        self.ended.append(reason)

    def transfer(self, number: str | None = None) -> str:
        used = number or self.default
        if used not in self.allowed:
            raise ValueError("I can't transfer calls to that number.")
        self.transfers.append(number)
        return used


GEOCODING = {
    "results": [
        {"name": "Springfield", "latitude": 37.21533, "longitude": -93.29824,
         "country_code": "US", "country": "United States", "admin1": "Missouri"},
        {"name": "Springfield", "latitude": 39.80172, "longitude": -89.64371,
         "country_code": "US", "country": "United States", "admin1": "Illinois"},
    ],
    "generationtime_ms": 0.8,
}
FORECAST = {
    "latitude": 39.8, "longitude": -89.64, "timezone": "America/Chicago",
    "current": {"time": "2026-11-22T10:00", "interval": 900, "temperature_2m": 41.3,
                "apparent_temperature": 35.6, "weather_code": 61, "wind_speed_10m": 12.4},
    "daily": {"time": ["2026-11-22"], "temperature_2m_max": [45.2],
              "temperature_2m_min": [33.8], "precipitation_probability_max": [70]},
}


class OpenMeteo:
    """A fake of the two Open-Meteo endpoints, behind httpx.MockTransport."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.geocoding: dict[str, Any] = GEOCODING
        self.fail: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            return self.fail(request)
        if request.url.host == "geocoding-api.open-meteo.com" and request.url.path == "/v1/search":
            return httpx.Response(200, json=self.geocoding)
        if request.url.host == "api.open-meteo.com" and request.url.path == "/v1/forecast":
            return httpx.Response(200, json=FORECAST)
        return httpx.Response(404, json={"error": True, "reason": "not found"})


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_tools(TOOLS_DIR, Registry([end_call, transfer_call]))


@pytest.fixture
def weather() -> OpenMeteo:
    return OpenMeteo()


@pytest.fixture
async def ctx(weather: OpenMeteo) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(weather)) as http:
        log = logging.LoggerAdapter(logging.getLogger("test.tools"), {"call_sid": "CA1"})
        call = CallInfo("CA1", "+15550009999", "+15550008888", "inbound", {})
        yield ToolContext(call=call, http=http, log=log, control=FakeControl())


async def run(registry: Registry, ctx: ToolContext, name: str, args: object) -> Any:
    outcome = await registry.call(name, args, ctx, timeout=2)
    assert outcome.is_error is False, outcome.result
    return orjson.loads(outcome.result)


async def error(registry: Registry, ctx: ToolContext, name: str, args: object) -> str:
    outcome = await registry.call(name, args, ctx, timeout=2)
    assert outcome.is_error is True
    message: str = orjson.loads(outcome.result)["error"]
    return message


def test_load_tools_finds_every_example_with_valid_specs(registry: Registry) -> None:
    assert sorted(registry.names()) == [
        "current_time", "end_call", "generate_random_number", "get_weather", "transfer_call"]
    for spec in registry.specs:
        assert set(spec) == {"type", "name", "description", "parameters"}
        assert spec["type"] == "function"
        assert spec["name"] in registry.names()
        assert len(spec["description"]) > 20 and "\n" not in spec["description"]
        parameters = spec["parameters"]
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        assert isinstance(parameters["properties"], dict)
        assert "ctx" not in parameters["properties"]
        assert set(parameters.get("required", [])) <= set(parameters["properties"])
        assert all(p.get("description") or "enum" in p for p in parameters["properties"].values())
        orjson.dumps(spec)  # the specs go to the agent as JSON


# --- clock ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_current_time_defaults_to_utc(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "current_time", {})
    now = datetime.fromisoformat(result["iso"])
    assert result["timezone"] == "UTC" and result["utc_offset"] == "+0000"
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
    assert result["date"] == now.date().isoformat() and result["time"] == now.strftime("%H:%M")
    assert result["weekday"] == now.strftime("%A")


@pytest.mark.anyio
async def test_current_time_in_a_named_zone(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "current_time", {"timezone": "Asia/Tokyo"})
    now = datetime.fromisoformat(result["iso"])
    assert (result["timezone"], result["utc_offset"]) == ("Asia/Tokyo", "+0900")
    assert now.utcoffset() == timedelta(hours=9)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.anyio
async def test_current_time_forgives_case(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "current_time", {"timezone": "america/new_york"})
    assert result["timezone"] == "America/New_York"


@pytest.mark.anyio
@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime"])
async def test_current_time_unknown_zone(registry: Registry, ctx: ToolContext, zone: str) -> None:
    message = await error(registry, ctx, "current_time", {"timezone": zone})
    assert message.startswith(f"Unknown timezone {zone!r}.") and "Europe/London" in message


# --- random number -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_random_number_stays_in_range(registry: Registry, ctx: ToolContext) -> None:
    seen = set()
    for _ in range(60):
        result = await run(registry, ctx, "generate_random_number", {"minimum": 1, "maximum": 3})
        assert (result["minimum"], result["maximum"]) == (1, 3)
        seen.add(result["result"])
    assert seen == {1, 2, 3}


@pytest.mark.anyio
async def test_random_number_bounds_may_be_equal_or_reversed(
    registry: Registry, ctx: ToolContext
) -> None:
    result = await run(registry, ctx, "generate_random_number", '{"minimum": 9, "maximum": 9.0}')
    assert result == {"result": 9, "minimum": 9, "maximum": 9}
    result = await run(registry, ctx, "generate_random_number", {"minimum": 10, "maximum": 5})
    assert 5 <= result["result"] <= 10 and (result["minimum"], result["maximum"]) == (5, 10)


@pytest.mark.anyio
async def test_random_number_needs_integers(registry: Registry, ctx: ToolContext) -> None:
    message = await error(registry, ctx, "generate_random_number", {"minimum": 1})
    assert "missing required parameter 'maximum'" in message
    message = await error(registry, ctx, "generate_random_number", {"minimum": 1, "maximum": 2.5})
    assert "parameter 'maximum' must be an integer" in message


# --- weather -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_weather_geocodes_then_forecasts(
    registry: Registry, ctx: ToolContext, weather: OpenMeteo
) -> None:
    result = await run(registry, ctx, "get_weather",
                       {"location": "Springfield, Illinois", "units": "fahrenheit"})
    assert result == {
        "place": "Springfield, Illinois, United States",
        "conditions": "light rain",
        "temperature": 41, "feels_like": 36, "high": 45, "low": 34,
        "chance_of_rain_percent": 70, "wind_speed": 12,
        "units": {"temperature": "°F", "wind_speed": "mph"},
    }
    geocode, forecast = weather.requests
    assert geocode.url.params["name"] == "Springfield"
    assert forecast.url.params["latitude"] == "39.80172"
    assert forecast.url.params["longitude"] == "-89.64371"
    assert forecast.url.params["temperature_unit"] == "fahrenheit"
    assert forecast.url.params["wind_speed_unit"] == "mph"


@pytest.mark.anyio
async def test_weather_defaults_to_celsius_and_the_first_match(
    registry: Registry, ctx: ToolContext, weather: OpenMeteo
) -> None:
    result = await run(registry, ctx, "get_weather", {"location": "Springfield"})
    assert result["place"] == "Springfield, Missouri, United States"
    assert result["units"] == {"temperature": "°C", "wind_speed": "km/h"}
    forecast = weather.requests[1]
    assert (forecast.url.params["temperature_unit"], forecast.url.params["wind_speed_unit"]) == (
        "celsius", "kmh")


@pytest.mark.anyio
async def test_weather_unknown_place(
    registry: Registry, ctx: ToolContext, weather: OpenMeteo
) -> None:
    weather.geocoding = {"generationtime_ms": 0.5}  # Open-Meteo omits "results" when none match
    message = await error(registry, ctx, "get_weather", {"location": "Atlantis"})
    assert message == "No place called 'Atlantis' was found. Ask the caller for a nearby city."
    assert len(weather.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("failure", [
    lambda request: httpx.Response(502, text="bad gateway"),
    lambda request: httpx.Response(200, text="<html>not json</html>"),
])
async def test_weather_service_failure_is_speakable(
    registry: Registry, ctx: ToolContext, weather: OpenMeteo,
    failure: Callable[[httpx.Request], httpx.Response],
) -> None:
    weather.fail = failure
    message = await error(registry, ctx, "get_weather", {"location": "Paris"})
    assert message == "The weather service is not answering right now."


@pytest.mark.anyio
async def test_weather_connection_failure_is_speakable(
    registry: Registry, ctx: ToolContext, weather: OpenMeteo
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    weather.fail = refuse
    message = await error(registry, ctx, "get_weather", {"location": "Paris"})
    assert message == "The weather service is not answering right now."


# --- call control --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_end_call_asks_the_call_to_end(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "end_call", {"reason": "caller said goodbye"})
    assert result["status"] == "ending" and "goodbye" in result["instructions"]
    await run(registry, ctx, "end_call", None)
    assert isinstance(ctx.control, FakeControl)
    assert ctx.control.ended == ["caller said goodbye", ""]


@pytest.mark.anyio
async def test_transfer_to_the_default_number(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "transfer_call", {})
    assert result == {"status": "transferring", "to": "+15550001111",
                      "instructions": "Tell the caller you are transferring them now."}
    assert isinstance(ctx.control, FakeControl) and ctx.control.transfers == [None]


@pytest.mark.anyio
async def test_transfer_to_a_named_number(registry: Registry, ctx: ToolContext) -> None:
    result = await run(registry, ctx, "transfer_call", {"number": "+15550002222"})
    assert result["to"] == "+15550002222"
    assert isinstance(ctx.control, FakeControl) and ctx.control.transfers == ["+15550002222"]


@pytest.mark.anyio
async def test_refused_transfer_is_a_speakable_error(registry: Registry, ctx: ToolContext) -> None:
    outcome = await registry.call("transfer_call", {"number": "+19005550000"}, ctx, timeout=2)
    assert outcome == ToolOutcome('{"error":"I can\'t transfer calls to that number."}', True)
    assert isinstance(ctx.control, FakeControl) and ctx.control.transfers == []
