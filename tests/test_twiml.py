"""TwiML documents: parse the XML the builders produce."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from relay import twiml


def tags(document: str) -> list[str]:
    return [node.tag for node in ET.fromstring(document)]


def test_fallback_says_the_message_then_hangs_up_or_dials() -> None:
    root = ET.fromstring(twiml.fallback("Sorry we missed you.", None))
    assert [node.tag for node in root] == ["Say", "Hangup"]
    assert root[0].text == "Sorry we missed you."
    root = ET.fromstring(twiml.fallback("One moment.", "+15550009999"))
    assert [(node.tag, node.text) for node in root] == [
        ("Say", "One moment."), ("Dial", "+15550009999")]


def test_fallback_without_a_message_says_nothing() -> None:
    assert tags(twiml.fallback("", None)) == ["Hangup"] == tags(twiml.hang_up())


def test_connect_stream_carries_the_parameters() -> None:
    root = ET.fromstring(twiml.connect_stream("wss://relay.example/media", {"token": "t"}))
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://relay.example/media"
    assert [(p.get("name"), p.get("value")) for p in stream] == [("token", "t")]


def test_dial_hands_the_call_to_the_number() -> None:
    root = ET.fromstring(twiml.dial("+15550009999"))
    assert [(node.tag, node.text) for node in root] == [("Dial", "+15550009999")]
