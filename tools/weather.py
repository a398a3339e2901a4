"""Example tool: current weather from Open-Meteo (free, no key) through the shared HTTP client.

Shows the pattern for tools that call an HTTP API: I/O only through ``ctx.http`` (so tests
can swap the transport), failures turned into a sentence the agent can say, and a small
result with just what a spoken answer needs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx

from relay.tools import ToolContext, tool

GEOCODING_URL = "https://geocoding-api.open-meteo.com/v1/search"
FORECAST_URL = "https://api.open-meteo.com/v1/forecast"

# WMO weather interpretation codes, as documented by Open-Meteo.
_CONDITIONS = {
    0: "clear sky", 1: "mainly clear", 2: "partly cloudy", 3: "overcast",
    45: "fog", 48: "freezing fog",
    51: "light drizzle", 53: "drizzle", 55: "heavy drizzle",
    56: "freezing drizzle", 57: "heavy freezing drizzle",
    61: "light rain", 63: "rain", 65: "heavy rain", 66: "freezing rain", 67: "heavy freezing rain",
    71: "light snow", 73: "snow", 75: "heavy snow", 77: "snow grains",
    80: "light rain showers", 81: "rain showers", 82: "violent rain showers",
    85: "snow showers", 86: "heavy snow showers",
    95: "thunderstorm", 96: "thunderstorm with hail", 99: "thunderstorm with heavy hail",
}


@tool
async def get_weather(
    ctx: ToolContext,
    location: Annotated[str, "Place name, optionally with region or country: 'Paris', "
                             "'Springfield, Illinois'"],
    units: Annotated[Literal["celsius", "fahrenheit"], "fahrenheit for callers in the "
                     "United States unless they ask otherwise"] = "celsius",
) -> dict[str, Any]:
    """Get the current weather and today's forecast for a place. Use it whenever the caller
    asks about the weather, temperature, rain or wind somewhere."""
    place = await _find_place(ctx, location)
    forecast = await _get_json(ctx, FORECAST_URL, {
        "latitude": place["latitude"],
        "longitude": place["longitude"],
        "current": "temperature_2m,apparent_temperature,weather_code,wind_speed_10m",
        "daily": "temperature_2m_max,temperature_2m_min,precipitation_probability_max",
        "temperature_unit": units,
        "wind_speed_unit": "mph" if units == "fahrenheit" else "kmh",
        "timezone": "auto",
        "forecast_days": 1,
    })
    now, today = forecast["current"], forecast["daily"]
    return {
        "place": ", ".join(p for p in (place["name"], place.get("admin1"), place.get("country"))
                           if p),
        "conditions": _CONDITIONS.get(now["weather_code"], "unknown conditions"),
        "temperature": round(now["temperature_2m"]),
        "feels_like": round(now["apparent_temperature"]),
        "high": round(today["temperature_2m_max"][0]),
        "low": round(today["temperature_2m_min"][0]),
        "chance_of_rain_percent": today["precipitation_probability_max"][0],
        "wind_speed": round(now["wind_speed_10m"]),
        "units": {"temperature": "°F" if units == "fahrenheit" else "°C",
                  "wind_speed": "mph" if units == "fahrenheit" else "km/h"},
    }


async def _find_place(ctx: ToolContext, location: str) -> dict[str, Any]:
    """The best geocoding match. Open-Meteo searches names only, so "Springfield, Illinois"
    searches "Springfield" and prefers a result whose region or country matches "Illinois"."""
    name, _, qualifier = (part.strip() for part in location.partition(","))
    if name:
        found = await _get_json(ctx, GEOCODING_URL,
                                {"name": name, "count": 10, "language": "en", "format": "json"})
        results: list[dict[str, Any]] = found.get("results") or []
        if qualifier:
            wanted, fields = qualifier.casefold(), ("admin1", "country", "country_code")
            results.sort(key=lambda r: not any(wanted in str(r.get(f, "")).casefold()
                                               for f in fields))
        if results:
            return results[0]
    raise ValueError(f"No place called {location!r} was found. Ask the caller for a nearby city.")


async def _get_json(ctx: ToolContext, url: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await ctx.http.get(url, params=params)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else "-"
        ctx.log.warning("weather service failed: %s (status %s)", type(exc).__name__, status)
        raise ValueError("The weather service is not answering right now.") from exc
    return data
