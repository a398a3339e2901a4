"""Authentication of Twilio webhooks, media-stream upgrades and per-call stream tokens.

Signatures are twilio's own ``RequestValidator`` over the URL Twilio was given (built from
``PUBLIC_URL``), never the URL the request arrived on: behind ngrok or a proxy the two differ.

A stream token is an HMAC minted when the TwiML is served and checked when the stream's
``start`` arrives. It binds the call SID, a purpose and an expiry time, so any instance holding
the same secret verifies it without shared state, and a token minted for one call (or for the
browser phone) opens no other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from twilio.request_validator import RequestValidator


def is_from_twilio(auth_token: str, url: str, params: Mapping[str, object], signature: str) -> bool:
    """True when ``signature`` is Twilio's signature of ``url`` and ``params``."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def twilio_signature(auth_token: str, url: str, params: Mapping[str, object]) -> str:
    """The ``X-Twilio-Signature`` Twilio would send (used by the simulator and tests)."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


class StreamTokens:
    """Mints and verifies per-call stream tokens: ``<expiry>.<mac>``."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"relay-stream-token:" + secret.encode()).digest()

    def _mac(self, call_sid: str, purpose: str, expires: int) -> str:
        msg = f"{purpose}|{call_sid}|{expires}".encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def mint(self, call_sid: str, *, now: float, ttl: float, purpose: str = "twilio") -> str:
        expires = int(now + ttl)
        return f"{expires}.{self._mac(call_sid, purpose, expires)}"

    @staticmethod
    def expiry(token: str) -> int | None:
        """When ``token`` expires (Unix time), or None for a malformed token."""
        expires_text = token.partition(".")[0]
        return int(expires_text) if expires_text.isdigit() else None

    def verify(self, token: str, call_sid: str, *, now: float, purpose: str = "twilio") -> bool:
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit() or not mac:
            return False
        expires = int(expires_text)
        if expires < now:
            return False
        return hmac.compare_digest(mac, self._mac(call_sid, purpose, expires))
