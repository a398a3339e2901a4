"""Twilio Media Streams wire format: what Twilio sends us, and builders for what we send back.

Reference: ``shared/spec/twilio-media-streams.md`` §2–3. We may send exactly three messages:
``media``, ``mark`` and ``clear``, always as JSON text frames carrying the ``streamSid``.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class MediaPayload(TypedDict):
    payload: str


class Media(TypedDict):
    event: Literal["media"]
    streamSid: str
    media: MediaPayload


class MarkName(TypedDict):
    name: str


class Mark(TypedDict):
    event: Literal["mark"]
    streamSid: str
    mark: MarkName


class Clear(TypedDict):
    event: Literal["clear"]
    streamSid: str


TwilioOutbound = Media | Mark | Clear


def media(stream_sid: str, payload: str) -> Media:
    """Play base64 μ-law audio to the caller; the payload is passed through untouched."""
    return {"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}


def mark(stream_sid: str, name: str) -> Mark:
    """Ask Twilio to echo ``name`` once everything queued before it has played (or was cleared)."""
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


def clear(stream_sid: str) -> Clear:
    """Drop all audio Twilio has buffered for the caller (barge-in)."""
    return {"event": "clear", "streamSid": stream_sid}
