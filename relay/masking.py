"""Phone numbers as logs, records and pages show them: enough to recognise, not to dial.

``mask_number("+15551234567") == "+1555***4567"``: the country code and area code stay, the
subscriber part goes, the last four digits stay (what a person reads to tell two calls apart).
``mask_numbers`` does it to every E.164 number in a text. The relay masks numbers where it logs
them; ``NumberMask``, a logging filter on the server's handler, is the net for lines the relay
does not write itself (libraries such as twilio's HTTP client), and ``MaskedLog`` masks what
tools log through ``ctx.log``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# A "+" then 7 to 15 digits: every E.164 number, and nothing the relay writes otherwise.
_E164 = re.compile(r"\+[1-9]\d{6,14}")


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


def mask_numbers(text: str) -> str:
    """Every E.164 number in ``text``, masked."""
    if "+" not in text:
        return text
    return _E164.sub(lambda m: mask_number(m.group()), text)


class NumberMask(logging.Filter):
    """Masks phone numbers in every record a handler emits (message and arguments merged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_numbers(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class MaskedLog(logging.LoggerAdapter[Any]):
    """A logger adapter for code the relay does not write (tools): numbers masked in each line."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", mask_numbers(text), **kwargs)


def install(handler: logging.Handler) -> None:
    """Mask numbers in everything ``handler`` writes."""
    if not any(isinstance(f, NumberMask) for f in handler.filters):
        handler.addFilter(NumberMask())
