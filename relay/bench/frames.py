"""Numbered μ-law test frames: each 20 ms payload says which call and frame it is.

A frame is 160 bytes: a 9-byte id (magic byte, call index, frame number, run tag) then 151
bytes of a μ-law 440 Hz tone whose phase depends on the frame number. The id is a multiple of
three bytes long, so the base64 of a frame is the base64 of its id followed by the base64 of its
tone: both halves are precomputed or cheap, and an echoed payload is checked byte for byte by
rebuilding the expected string from the id it carries.
"""

from __future__ import annotations

import base64
import math
import struct

FRAME_BYTES = 160
MAGIC = 0xB7
ID = struct.Struct(">BHIH")
ID_B64_CHARS = 12
VARIANTS = 64
TONE_HZ = 440.0
SAMPLE_RATE = 8000


def lin2ulaw(sample: int) -> int:
    """G.711 μ-law encoding of one 16-bit linear sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _tone(variant: int) -> bytes:
    n = FRAME_BYTES - ID.size
    start = variant * n
    return bytes(
        lin2ulaw(int(8000 * math.sin(2 * math.pi * TONE_HZ * (start + i) / SAMPLE_RATE)))
        for i in range(n)
    )


TONES_B64: tuple[bytes, ...] = tuple(base64.b64encode(_tone(v)) for v in range(VARIANTS))
TONES_STR: tuple[str, ...] = tuple(t.decode() for t in TONES_B64)
_pack = ID.pack
_unpack = ID.unpack
_b64encode = base64.b64encode
_b64decode = base64.b64decode


def payload(call: int, seq: int, run_tag: int) -> bytes:
    """The base64 payload (ASCII bytes) of frame ``seq`` of call ``call``."""
    return _b64encode(_pack(MAGIC, call, seq, run_tag)) + TONES_B64[seq % VARIANTS]


def identify(text: str, run_tag: int) -> tuple[int, int] | None:
    """``(call, seq)`` of an echoed payload, or None unless it is exactly what was sent."""
    try:
        magic, call, seq, tag = _unpack(_b64decode(text[:ID_B64_CHARS]))
    except (ValueError, struct.error):
        return None
    if magic != MAGIC or tag != run_tag or text[ID_B64_CHARS:] != TONES_STR[seq % VARIANTS]:
        return None
    return call, seq
