// The softphone's audio thread: the microphone to 20 ms μ-law frames at 8 kHz, and the
// agent's 8 kHz audio to the speakers, with marks reported once the audio before them played.

import { ulawEncode } from "./g711.js";

const RATE = 8000;
const FRAME_BYTES = 160; // 20 ms at 8 kHz, one Twilio media frame

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per 8 kHz sample
    this.phase = 0;
    this.sum = 0;
    this.count = 0;
    this.frame = new Uint8Array(FRAME_BYTES);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let x = 0;
      for (const channel of channels) x += channel[i];
      // Averaging over each output period: a cheap low-pass before decimating.
      this.sum += x / channels.length;
      this.count++;
      this.phase++;
      if (this.phase < this.step) continue;
      this.phase -= this.step;
      const value = Math.max(-1, Math.min(1, this.sum / this.count));
      this.sum = 0;
      this.count = 0;
      this.frame[this.filled++] = ulawEncode(Math.round(value * 32767));
      if (this.filled === FRAME_BYTES) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Uint8Array(FRAME_BYTES);
        this.filled = 0;
      }
    }
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = RATE / sampleRate; // 8 kHz samples per output sample
    this.queue = []; // Float32Array chunks at 8 kHz and { mark } entries, in arrival order
    this.chunk = null;
    this.index = 0;
    this.phase = 0;
    this.prev = 0;
    this.next = 0;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(msg) {
    if (msg.audio) {
      this.queue.push(msg.audio);
    } else if (msg.mark !== undefined) {
      this.queue.push({ mark: msg.mark });
    } else if (msg.clear) {
      const marks = this.queue.filter((item) => !(item instanceof Float32Array)).map((item) => item.mark);
      this.queue = [];
      this.chunk = null;
      this.port.postMessage({ cleared: marks });
    }
  }

  /** The next 8 kHz sample, or null when nothing is queued; reports the marks it passes
   * (when idle, it is still called every 8 kHz period, so a mark returns at once). */
  pull() {
    for (;;) {
      if (this.chunk !== null && this.index < this.chunk.length) return this.chunk[this.index++];
      this.chunk = null;
      const head = this.queue.shift();
      if (head === undefined) return null;
      if (head instanceof Float32Array) {
        this.chunk = head;
        this.index = 0;
      } else {
        this.port.postMessage({ played: head.mark });
      }
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      // Linear interpolation from 8 kHz up to the context's rate.
      out[i] = this.prev + (this.next - this.prev) * this.phase;
      this.phase += this.step;
      while (this.phase >= 1) {
        this.phase -= 1;
        this.prev = this.next;
        this.next = this.pull() ?? 0;
      }
    }
    return true;
  }
}

registerProcessor("phone-capture", Capture);
registerProcessor("phone-playback", Playback);
