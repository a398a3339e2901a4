"""What is removed from transcripts before they reach a record or a log line.

Speech-to-text writes what the caller said, and callers say card numbers, account numbers,
phone numbers and e-mail addresses. ``redact`` replaces each with ``[redacted]``:

* card numbers: 13 to 19 digits that pass the Luhn check, also in groups separated by
  spaces, dashes, dots or commas, as speech-to-text writes a number read out in groups
  (``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111, 1111, 1111, 1111``);
* any other run of 7 or more digits, together or separated by single spaces or dashes
  (account, phone and social security numbers, dates of birth written as digits);
* e-mail addresses (``name@example.com``).

What survives, so a transcript stays readable: times (``10:30``), prices (``$19.99``), short
numbers (``order 42``, ``2 tickets``) and years standing alone. Numbers spoken as words
(``four one one one``) are not recognised: speech-to-text writes digits for them.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# Digit groups joined by the separators speech-to-text puts between spoken groups.
_GROUPED = re.compile(r"\d+(?:(?:[.,] ?|[ -])\d+)+|\d{13,19}")
# Digits together or separated by one space or dash.
_RUN = re.compile(r"\d(?:[ -]?\d)*")
MIN_RUN = 7


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (every card number passes it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    text = match.group()
    digits = "".join(c for c in text if c.isdigit())
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return REDACTED
    return text


def _run(match: re.Match[str]) -> str:
    text = match.group()
    return REDACTED if sum(c.isdigit() for c in text) >= MIN_RUN else text


def redact(text: str) -> str:
    """``text`` with card numbers, long digit runs and e-mail addresses as ``[redacted]``."""
    if not text:
        return text
    text = _EMAIL.sub(REDACTED, text)
    if not any(c.isdigit() for c in text):
        return text
    text = _GROUPED.sub(_card, text)
    return _RUN.sub(_run, text)
