"""Example tool: the current date and time in any IANA timezone (stdlib ``zoneinfo``)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from relay.tools import tool


@tool
def current_time(
    timezone: Annotated[str, "IANA timezone, e.g. Europe/London or America/New_York"] = "UTC",
) -> dict[str, str]:
    """Get the current date and time in a timezone. Use it whenever the caller asks what time
    it is, today's date or the day of the week, here or in another city; pass the IANA
    timezone of the place they mention."""
    zone = _zone(timezone)
    now = datetime.now(zone)
    return {
        "timezone": "UTC" if zone is UTC else str(zone),
        "date": now.date().isoformat(),
        "weekday": now.strftime("%A"),
        "time": now.strftime("%H:%M"),
        "utc_offset": now.strftime("%z"),
        "iso": now.isoformat(timespec="seconds"),
    }


def _zone(name: str) -> tzinfo:
    """The zone for ``name``; case-insensitive, since spoken requests rarely match exactly.

    Raises:
        ValueError: with a message the agent can act on.
    """
    key = name.strip()
    if key.upper() in ("UTC", "GMT", "Z"):
        return UTC  # works even where the system has no tz database
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    if (match := _zones_by_lower_name().get(key.lower())) is not None:
        return ZoneInfo(match)
    raise ValueError(f"Unknown timezone {name!r}. Use an IANA name such as Europe/London, "
                     "America/New_York or Asia/Tokyo.")


@functools.cache
def _zones_by_lower_name() -> dict[str, str]:
    return {zone.lower(): zone for zone in available_timezones()}
