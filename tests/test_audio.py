"""relay.local.audio: G.711 μ-law, resampling, WAV files, tones, frame energy and the VAD."""

from __future__ import annotations

import math
import wave
from array import array
from pathlib import Path

import pytest

from relay.local import audio
from relay.local.audio import FRAME_BYTES, Vad


def test_known_code_points() -> None:
    assert audio.ulaw_encode([0]) == b"\xff"
    assert list(audio.ulaw_decode(b"\xff\x7f")) == [0, 0]
    assert list(audio.ulaw_decode(b"\x80\x00")) == [32124, -32124]  # the loudest codes
    assert audio.ulaw_encode([32767, -32768, 40000, -40000]) == b"\x80\x00\x80\x00"
    assert audio.silence(20) == b"\xff" * FRAME_BYTES


def test_every_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    back = audio.ulaw_encode(audio.ulaw_decode(codes))
    # 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF.
    assert back == codes.replace(b"\x7f", b"\xff")


def test_round_trip_within_g711_error_bounds() -> None:
    samples = array("h", range(-32635, 32636, 7))
    decoded = audio.ulaw_decode(audio.ulaw_encode(samples))
    for x, y in zip(samples, decoded, strict=True):
        # Half a quantisation step: 4 in the first segment, doubling in each of the 8.
        assert abs(x - y) <= (abs(x) + 0x84) / 32, (x, y)
        assert x * y >= 0  # never flips sign


def test_encode_accepts_plain_ints_and_arrays_alike() -> None:
    values = [-1000, -1, 0, 1, 1000, 12345]
    assert audio.ulaw_encode(values) == audio.ulaw_encode(array("h", values))


@pytest.mark.parametrize(("src", "dst", "n", "expected"), [
    (8000, 8000, 160, 160),
    (16000, 8000, 16000, 8000),
    (8000, 16000, 8000, 16000),
    (44100, 8000, 44100, 8000),
    (48000, 8000, 4800, 800),
    (22050, 8000, 0, 0),
])
def test_resample_lengths(src: int, dst: int, n: int, expected: int) -> None:
    assert len(audio.resample([100] * n, src, dst)) == expected


def test_resample_keeps_a_tone_and_its_level() -> None:
    rate = 16000
    src = [round(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate)]
    out = audio.resample(src, rate, 8000)
    peak = max(abs(s) for s in out)
    assert 7000 < peak <= 8000
    crossings = sum(1 for a, b in zip(out, out[1:], strict=False) if a < 0 <= b)
    assert 438 <= crossings <= 442  # still 440 Hz


def test_resample_mixes_stereo_to_mono() -> None:
    interleaved = [1000, 3000] * 100
    assert list(audio.resample(interleaved, 8000, 8000, channels=2)) == [2000] * 100


def _write_wav(path: Path, rate: int, channels: int, width: int, seconds: float) -> None:
    n = int(rate * seconds)
    samples = [round(10000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(n)]
    if width == 1:
        frames = bytes(((s >> 8) + 128) for s in samples for _ in range(channels))
    else:  # 16-bit, or 24-bit with a low byte that reading must drop
        frames = b"".join((s * 256 ** (width - 2)).to_bytes(width, "little", signed=True)
                          * channels for s in samples)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)


@pytest.mark.parametrize(("rate", "channels", "width"), [
    (8000, 1, 2), (16000, 1, 2), (44100, 1, 2), (44100, 2, 2), (16000, 2, 2), (8000, 1, 1),
    (48000, 2, 3),
])
def test_read_wav_any_common_format(tmp_path: Path, rate: int, channels: int,
                                    width: int) -> None:
    path = tmp_path / "in.wav"
    _write_wav(path, rate, channels, width, 0.5)
    samples, got_rate = audio.read_wav(path)
    assert got_rate == rate
    assert len(samples) == rate // 2
    assert 9000 < max(samples) <= 10100

    ulaw = audio.read_wav_as_ulaw8k(path)
    assert len(ulaw) == 4000  # 0.5 s at 8 kHz
    assert audio.frame_energy(ulaw) > 5000


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    ulaw = audio.tone(440, 300) + audio.silence(100)
    path = tmp_path / "out.wav"
    audio.write_ulaw_wav(path, ulaw)
    with wave.open(str(path), "rb") as wav:  # a plain 16-bit PCM file any player opens
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
    assert audio.read_wav_as_ulaw8k(path) == ulaw


def test_read_wav_rejects_what_is_not_wav(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        audio.read_wav(path)


def test_tones_are_loud_and_silence_is_not() -> None:
    beep = audio.tone(440, 200)
    assert len(beep) == 1600
    assert audio.duration(beep) == 0.2
    assert audio.frame_energy(beep) > 100 * (audio.frame_energy(audio.silence(200)) + 1)
    assert audio.frame_energy(audio.silence(200)) == 0.0
    assert audio.frame_energy(b"") == 0.0
    buzz = audio.tone(160, 200, overtones=5)
    assert audio.frame_energy(buzz) > 3000
    assert audio.tone(440, 100)[:1] == b"\xff"  # fades in from silence: no click


def _frames(chunk: bytes) -> list[bytes]:
    return [chunk[i:i + FRAME_BYTES] for i in range(0, len(chunk), FRAME_BYTES)]


def _events(vad: Vad, chunk: bytes) -> list[tuple[int, str]]:
    """(frame index, event) for each event the frames of ``chunk`` cause."""
    return [(i, e) for i, f in enumerate(_frames(chunk)) if (e := vad.frame(f)) is not None]


def test_vad_start_and_stop_timing() -> None:
    vad = Vad(threshold=300, start_ms=80, hangover_ms=600)
    speech = audio.tone(300, 1000)
    assert _events(vad, audio.silence(200)) == []
    assert _events(vad, speech) == [(3, "started")]  # the 4th loud frame: 80 ms
    assert vad.speaking
    assert _events(vad, audio.silence(1000)) == [(29, "stopped")]  # 600 ms of quiet
    assert not vad.speaking


def test_vad_ignores_speech_shorter_than_the_minimum() -> None:
    vad = Vad(start_ms=80)
    blips = (audio.tone(500, 60) + audio.silence(20)) * 10
    assert _events(vad, blips) == []
    assert not vad.speaking


def test_vad_pauses_shorter_than_the_hangover_do_not_end_speech() -> None:
    vad = Vad(hangover_ms=600)
    words = (audio.tone(300, 300) + audio.silence(400)) * 3
    assert [e for _, e in _events(vad, words)] == ["started"]
    assert [e for _, e in _events(vad, audio.silence(600))] == ["stopped"]


def test_vad_threshold_separates_quiet_noise_from_speech() -> None:
    vad = Vad(threshold=300)
    hum = audio.tone(100, 500, amplitude=0.005)
    assert audio.frame_energy(hum) < 300
    assert _events(vad, hum) == []


def test_vad_reset_returns_to_silence() -> None:
    vad = Vad(start_ms=80)
    assert [e for _, e in _events(vad, audio.tone(300, 200))] == ["started"]
    vad.reset()
    assert not vad.speaking
    assert [e for _, e in _events(vad, audio.tone(300, 100))] == ["started"]
