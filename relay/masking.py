"""Phone numbers as logs, records and pages show them: enough to recognise, not to dial.

``mask_number("+15551234567") == "+1555***4567"``: the country code and area code stay, the
subscriber part goes, the last four digits stay (what a person reads to tell two calls apart).
"""

from __future__ import annotations

MASK = "***"


def mask_number(number: str) -> str:
    """The number with its middle replaced by ``***``; "" stays "" (unknown)."""
    if not number:
        return ""
    digits = sum(c.isdigit() for c in number)
    if number.startswith("+") and digits >= 9:
        return number[:5] + MASK + number[-4:]
    if digits >= 7:  # a number without its country code
        return number[:2] + MASK + number[-4:]
    # A short code, an extension or a client name: only its last two characters.
    return MASK + number[-2:] if len(number) > 2 else MASK
