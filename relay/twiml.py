"""TwiML documents, built with the twilio library (pure: strings in, XML out)."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_stream(stream_url: str, parameters: Mapping[str, str],
                   action: str | None = None) -> str:
    """``<Connect action><Stream>`` to the relay; per-call context travels in ``<Parameter>``s.

    Twilio drops query strings from the stream URL, so nothing rides on it. When the relay
    closes the stream, ``<Connect>`` ends and Twilio requests ``action`` (POST) for what the
    caller hears next: a hang-up, a ``<Dial>`` or the fallback.
    """
    response = VoiceResponse()
    connect = Connect(action=action, method="POST") if action else Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def fallback(message: str, number: str | None) -> str:
    """``<Say>`` the message (none when empty), then ``<Dial>`` to ``number``, or ``<Hangup/>``.

    The apology when no agent can take the call; with no number, also what an answering
    machine is left by an outbound call.
    """
    response = VoiceResponse()
    if message:
        response.say(message)
    if number:
        response.dial(number)
    else:
        response.hangup()
    return str(response)


def dial(number: str) -> str:
    """Hand the call to a human (as the ``<Connect action>`` answer, or through REST)."""
    response = VoiceResponse()
    response.dial(number)
    return str(response)
