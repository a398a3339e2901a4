// G.711 μ-law, the telephone codec of Twilio Media Streams (same tables as relay/audio.py).

const BIAS = 0x84;
const CLIP = 32635;

/** A 16-bit linear sample (-32768..32767) as one μ-law byte. */
export function ulawEncode(sample) {
  let s = sample;
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** One μ-law byte as a 16-bit linear sample. */
export function ulawDecode(byte) {
  const code = ~byte & 0xff;
  const exponent = (code >> 4) & 0x07;
  const mantissa = code & 0x0f;
  const magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
  return code & 0x80 ? -magnitude : magnitude;
}

/** Every μ-law byte as a Web Audio sample (-1..1). */
export const ULAW_TO_FLOAT = Float32Array.from({ length: 256 }, (_, b) => ulawDecode(b) / 32768);
