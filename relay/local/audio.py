"""Telephone audio without dependencies: G.711 μ-law, resampling, WAV files, tones and a VAD.

Pure functions on bytes and ``array('h')`` (16-bit signed samples, native order), stdlib only
(``audioop`` left the standard library in Python 3.13). The relay itself never transcodes call
audio; the local agent, the tools that play or record WAV files and the tests do.

G.711 μ-law (ITU-T G.711, the "CCITT" bias-and-segment form): 8 segments of 16 steps, bias 0x84,
clip at 32635, bits inverted on the wire, so silence is 0xFF. Both directions are table lookups:
256 entries to decode, 65536 to encode.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from collections.abc import Iterable
from itertools import accumulate
from os import PathLike
from typing import Literal

RATE = 8000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000  # one Twilio media frame: 160 bytes
SILENCE_BYTE = 0xFF

_BIAS = 0x84
_CLIP = 32635


def _decode_byte(code: int) -> int:
    code = ~code & 0xFF
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if code & 0x80 else magnitude


def _encode_table() -> bytes:
    """Every 16-bit pattern's μ-law byte, built from the 128 runs of equal codes."""
    runs = []
    for code in range(128):  # magnitude order: segment, then step
        exponent, mantissa = code >> 4, code & 0x0F
        lo, hi = (16 + mantissa) << (exponent + 3), (17 + mantissa) << (exponent + 3)
        count = min(hi, _CLIP + _BIAS + 1) - max(lo, _BIAS)
        runs.append(bytes([~code & 0xFF]) * max(0, count))
    runs.append(runs[-1][:1] * (32768 - _CLIP))  # clipped magnitudes up to 32768
    by_magnitude = b"".join(runs)  # index: magnitude 0..32768, positive sign
    negative = by_magnitude[32768:0:-1].translate(bytes(b & 0x7F for b in range(256)))
    return by_magnitude[:32768] + negative  # 0x0000..0x7FFF, then 0x8000 (-32768)..0xFFFF (-1)


_DECODE: tuple[int, ...] = tuple(_decode_byte(c) for c in range(256))
_ABS: tuple[int, ...] = tuple(abs(v) for v in _DECODE)
# Indexed by the sample's 16-bit two's-complement pattern (``sample & 0xFFFF``).
_ENCODE = _encode_table()


def _little_endian(samples: array[int]) -> array[int]:
    if sys.byteorder == "big":
        samples = array(samples.typecode, samples)
        samples.byteswap()
    return samples


def _clamp(value: float) -> int:
    return max(-32768, min(32767, round(value)))


def ulaw_decode(data: bytes) -> array[int]:
    """μ-law bytes to 16-bit samples."""
    return array("h", map(_DECODE.__getitem__, data))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """16-bit samples to μ-law bytes; values outside the 16-bit range are clipped."""
    if not (isinstance(samples, array) and samples.typecode == "h"):
        samples = array("h", map(_clamp, samples))
    unsigned = array("H")
    unsigned.frombytes(samples.tobytes())
    return bytes(map(_ENCODE.__getitem__, unsigned))


def to_mono(samples: Iterable[int], channels: int) -> array[int]:
    """Average interleaved channels into one."""
    samples = array("h", samples)
    if channels == 1:
        return samples
    usable = len(samples) - len(samples) % channels
    lanes = [samples[k:usable:channels] for k in range(channels)]
    return array("h", (sum(frame) // channels for frame in zip(*lanes, strict=True)))


def resample(samples: Iterable[int], from_rate: int, to_rate: int, *,
             channels: int = 1) -> array[int]:
    """Mix to mono, then change the rate by linear interpolation.

    Downsampling first averages over about one output period, a cheap low-pass that keeps
    44.1 kHz music from folding into the telephone band.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError("sample rates must be positive")
    mono = to_mono(samples, channels)
    if from_rate == to_rate or not mono:
        return mono
    n = len(mono)
    source: list[float] | array[int] = mono
    width = from_rate // to_rate
    if width > 1:
        sums = [0, *accumulate(mono)]
        half = width // 2
        source = [
            (sums[hi] - sums[lo]) / (hi - lo)
            for lo, hi in ((max(0, i - half), min(n, i - half + width)) for i in range(n))
        ]
    out_len = n * to_rate // from_rate
    step = from_rate / to_rate
    out = array("h", bytes(2 * out_len))
    last = n - 1
    for i in range(out_len):
        pos = i * step
        j = int(pos)
        a = source[j]
        b = source[j + 1] if j < last else a
        out[i] = _clamp(a + (b - a) * (pos - j))
    return out


def read_wav(path: str | PathLike[str]) -> tuple[array[int], int]:
    """Read a PCM WAV file as mono 16-bit samples and its sample rate.

    8-bit (unsigned) and 16/24/32-bit (signed) PCM, any number of channels, any rate.

    Raises:
        ValueError: not a PCM WAV file (for example μ-law or float WAV).
    """
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from exc
    if width == 1:
        samples = array("h", ((b - 128) << 8 for b in raw))
    else:
        top = bytearray(2 * (len(raw) // width))  # keep the two most significant bytes
        top[0::2] = raw[width - 2::width]
        top[1::2] = raw[width - 1::width]
        samples = array("h")
        samples.frombytes(bytes(top))
        samples = _little_endian(samples)
    return to_mono(samples, channels), rate


def read_wav_as_ulaw8k(path: str | PathLike[str]) -> bytes:
    """A WAV file as the μ-law 8 kHz mono bytes a phone call carries.

    Raises:
        ValueError: not a PCM WAV file.
    """
    samples, rate = read_wav(path)
    return ulaw_encode(resample(samples, rate, RATE))


def write_ulaw_wav(path: str | PathLike[str], ulaw: bytes) -> None:
    """Save μ-law call audio as a 16-bit PCM 8 kHz mono WAV, which every player opens."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(_little_endian(ulaw_decode(ulaw)).tobytes())


def duration(ulaw: bytes) -> float:
    """Seconds of μ-law 8 kHz audio."""
    return len(ulaw) / RATE


def silence(ms: int) -> bytes:
    return bytes([SILENCE_BYTE]) * (RATE * ms // 1000)


def tone(freq_hz: float, ms: int, amplitude: float = 0.3, *, overtones: int = 0) -> bytes:
    """A μ-law tone with 5 ms fades (no clicks).

    ``amplitude`` is a fraction of full scale. ``overtones`` adds that many odd harmonics at
    1/k strength, towards a square wave: a buzz that stays audible through the phone band
    even when the fundamental is below 300 Hz.
    """
    n = RATE * ms // 1000
    fade = min(RATE // 200, n // 4) or 1
    ks = [2 * i + 1 for i in range(overtones + 1)]
    norm = sum(1 / k for k in ks)
    w = 2 * math.pi * freq_hz / RATE
    samples = array("h", bytes(2 * n))
    for i in range(n):
        envelope = min(1.0, i / fade, (n - 1 - i) / fade)
        value = sum(math.sin(k * w * i) / k for k in ks) / norm
        samples[i] = _clamp(32767 * amplitude * envelope * value)
    return ulaw_encode(samples)


def frame_energy(ulaw: bytes) -> float:
    """Mean absolute linear amplitude of μ-law audio (0 for silence, ~10000 for loud speech)."""
    if not ulaw:
        return 0.0
    return sum(map(_ABS.__getitem__, ulaw)) / len(ulaw)


VadEvent = Literal["started", "stopped"]


class Vad:
    """Energy voice-activity detector over 20 ms μ-law frames.

    Speech starts after ``start_ms`` of consecutive loud frames (so clicks and short noises
    never count) and stops after ``hangover_ms`` of consecutive quiet ones (so pauses between
    words do not end a turn). Time is the number of frames fed: no clock.
    """

    def __init__(self, *, threshold: float = 300.0, start_ms: int = 80,
                 hangover_ms: int = 600) -> None:
        self.threshold = threshold
        self.start_frames = max(1, start_ms // FRAME_MS)
        self.stop_frames = max(1, hangover_ms // FRAME_MS)
        self.speaking = False
        self.loud = False  # the last frame's verdict
        self._run = 0

    def reset(self) -> None:
        """Back to silence, as if the caller had stopped (ends an overlong turn)."""
        self.speaking, self.loud, self._run = False, False, 0

    def frame(self, ulaw: bytes) -> VadEvent | None:
        """Feed one frame; return the event it caused, if any."""
        self.loud = frame_energy(ulaw) >= self.threshold
        if self.speaking:
            self._run = 0 if self.loud else self._run + 1
            if self._run >= self.stop_frames:
                self.speaking, self._run = False, 0
                return "stopped"
        else:
            self._run = self._run + 1 if self.loud else 0
            if self._run >= self.start_frames:
                self.speaking, self._run = True, 0
                return "started"
        return None
