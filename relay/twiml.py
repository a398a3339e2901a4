"""TwiML documents, built with the twilio library (pure: strings in, XML out)."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Connect><Stream>`` to the relay; per-call context travels in ``<Parameter>``s.

    Twilio drops query strings from the stream URL, so nothing rides on it.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def say_and_hang_up(message: str) -> str:
    """A spoken apology for when no agent can take the call."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def dial(number: str) -> str:
    """Hand the call to a human: replaces the running ``<Connect>``, ending the stream."""
    response = VoiceResponse()
    response.dial(number)
    return str(response)
