"""Redaction of transcripts, and the masking of phone numbers."""

from __future__ import annotations

import pytest

from relay.masking import mask_number
from relay.redaction import REDACTED, luhn_valid, redact


@pytest.mark.parametrize("spoken", [
    "my card is 4111111111111111 thanks",
    "my card is 4111 1111 1111 1111 thanks",
    "my card is 4111-1111-1111-1111 thanks",
    "my card is 4111, 1111, 1111, 1111 thanks",
    "my card is 4111. 1111. 1111. 1111 thanks",
    "my card is 3782 822463 10005 thanks",  # American Express, 15 digits
])
def test_card_numbers_are_redacted_however_they_are_written(spoken: str) -> None:
    assert redact(spoken) == f"my card is {REDACTED} thanks"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_grouped_digits_failing_luhn_are_kept_when_the_groups_are_short() -> None:
    # Dotted or comma-separated groups are a card only if the checksum says so.
    assert redact("4111. 1111. 1111. 1112") == "4111. 1111. 1111. 1112"


@pytest.mark.parametrize(("spoken", "expected"), [
    ("account 12345678", f"account {REDACTED}"),
    ("call me on 555 123 4567", f"call me on {REDACTED}"),
    ("call me on 555-123-4567 please", f"call me on {REDACTED} please"),
    ("my number is 1 2 3 4 5 6 7", f"my number is {REDACTED}"),
    ("born 19 07 1984", f"born {REDACTED}"),
])
def test_runs_of_seven_or_more_digits_are_redacted(spoken: str, expected: str) -> None:
    assert redact(spoken) == expected


@pytest.mark.parametrize("spoken", [
    "write to jane.doe+shop@example.co.uk",
    "write to JANE@EXAMPLE.COM",
])
def test_email_addresses_are_redacted(spoken: str) -> None:
    assert redact(spoken) == f"write to {REDACTED}"


@pytest.mark.parametrize("spoken", [
    "see you at 10:30 tomorrow",
    "it costs $19.99, or 24.50 with delivery",
    "order 42 and order 1234",
    "2 tickets for 3 people in 2025",
    "between 9 and 5, 7 days a week",
    "room 101, floor 3",
    "",
    "no numbers at all",
])
def test_times_prices_and_short_numbers_survive(spoken: str) -> None:
    assert redact(spoken) == spoken


def test_a_transcript_mixing_both() -> None:
    text = "Order 42 at 10:30, card 4111 1111 1111 1111, mail bob@example.org"
    assert redact(text) == f"Order 42 at 10:30, card {REDACTED}, mail {REDACTED}"


@pytest.mark.parametrize(("number", "masked"), [
    ("+15551234567", "+1555***4567"),
    ("+447700900123", "+4477***0123"),
    ("5551234567", "55***4567"),
    ("client:alice", "***ce"),
    ("911", "***11"),
    ("", ""),
])
def test_phone_numbers_are_masked(number: str, masked: str) -> None:
    assert mask_number(number) == masked
