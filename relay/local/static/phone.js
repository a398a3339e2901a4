// The softphone: calls the relay from the browser, speaking the Twilio Media Streams protocol
// on /phone/media exactly as Twilio's media servers do (connected, start, media, dtmf, mark,
// stop), and honouring what the relay sends back (media, mark, clear, and relay.log events).

import { ULAW_TO_FLOAT } from "./g711.js";

const ACCOUNT_SID = "AC" + "0".repeat(32);
const FRAME_MS = 20;
// Events worth showing in the transcript; the rest only update the counters.
const SHOWN = new Set(["transcript.user", "transcript.agent", "tool.call", "tool.result",
  "barge-in", "reply.interrupted", "dtmf", "agent.ready", "call.end"]);

const CLOSE_MEANINGS = { 1006: "connection lost", 1008: "the relay refused the stream", 1011: "relay or agent error" };

const $ = (id) => document.getElementById(id);
// Counters for the status line (and for anyone inspecting the page); times are ms since the page loaded.
const stats = {
  state: "idle", framesSent: 0, framesReceived: 0, bytesReceived: 0, firstAudioAt: null,
  marksEchoed: 0, marks: [], clears: 0, events: {},
};
window.phoneStats = stats;
let call = null;

function setStatus(text, state) {
  stats.state = state;
  $("status").textContent = text;
  $("status").className = state;
  const busy = state === "connecting" || state === "connected";
  $("call").disabled = busy;
  $("hangup").disabled = !busy;
  for (const key of document.querySelectorAll("#keypad button")) key.disabled = state !== "connected";
}

function show(kind, text) {
  const line = document.createElement("div");
  line.className = "line " + kind.replace(".", "-");
  line.textContent = text;
  const box = $("transcript");
  box.append(line);
  box.scrollTop = box.scrollHeight;
}

function showStats() {
  $("stats").textContent = `frames sent ${stats.framesSent}, received ${stats.framesReceived}; ` +
    `marks echoed ${stats.marksEchoed}; clears ${stats.clears}`;
}

function base64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

function send(c, msg) {
  if (!c.ws || c.ws.readyState !== WebSocket.OPEN) return;
  if (msg.event !== "connected") {
    msg.sequenceNumber = String(++c.sequence);
    msg.streamSid = c.session.stream_sid;
  }
  c.ws.send(JSON.stringify(msg));
}

async function startCall() {
  if (call) return;
  const c = { sequence: 0, chunk: 0, started: false, over: false, endText: "" };
  call = c;
  setStatus("Connecting…", "connecting");
  try {
    const response = await fetch("/phone/session", { method: "POST" });
    if (!response.ok) {
      throw new Error(`the server refused the call (HTTP ${response.status}): ${(await response.text()).trim()}`);
    }
    c.session = await response.json();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("the browser offers no microphone here: open this page over HTTPS, or on localhost");
    }
    try {
      c.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      throw new Error(`no microphone: ${err.name === "NotAllowedError" ? "access was denied" : err.message} (${err.name})`);
    }
    if (c.over) return release(c);
    c.ctx = new AudioContext();
    await c.ctx.audioWorklet.addModule("/phone/worklet.js");
    if (c.over) return release(c);
    c.playback = new AudioWorkletNode(c.ctx, "phone-playback", { numberOfInputs: 0, outputChannelCount: [1] });
    c.playback.port.onmessage = (event) => played(c, event.data);
    c.playback.connect(c.ctx.destination);
    c.capture = new AudioWorkletNode(c.ctx, "phone-capture", { channelCountMode: "explicit", channelCount: 1 });
    c.capture.port.onmessage = (event) => sendMedia(c, event.data);
    c.ctx.createMediaStreamSource(c.mic).connect(c.capture);
    c.capture.connect(c.ctx.destination); // keeps it running; it outputs silence
    await c.ctx.resume();
    if (c.over) return release(c);
    // Behind a TLS-terminating proxy the server may not know the page is https.
    const url = location.protocol === "https:" ? c.session.stream_url.replace(/^ws:/, "wss:") : c.session.stream_url;
    c.ws = new WebSocket(url);
    c.ws.onopen = () => opened(c);
    c.ws.onmessage = (event) => received(c, event.data);
    c.ws.onclose = (event) => closed(c, event);
  } catch (err) {
    end(c, `Call failed: ${err.message}`, "error");
  }
}

function opened(c) {
  send(c, { event: "connected", protocol: "Call", version: "1.0.0" });
  send(c, {
    event: "start",
    start: {
      accountSid: ACCOUNT_SID, streamSid: c.session.stream_sid, callSid: c.session.call_sid,
      tracks: ["inbound"],
      customParameters: { token: c.session.token, caller: "browser", direction: "phone" },
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
    },
  });
  c.started = true;
  setStatus("Connected, waiting for the agent…", "connected");
}

function sendMedia(c, frame) {
  if (!c.started || c.over) return;
  c.chunk++;
  send(c, {
    event: "media",
    media: { track: "inbound", chunk: String(c.chunk), timestamp: String((c.chunk - 1) * FRAME_MS), payload: base64(frame) },
  });
  stats.framesSent++;
  if (stats.framesSent % 25 === 0) showStats();
}

function received(c, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  if (msg.event === "media") {
    const bytes = atob(msg.media.payload);
    const samples = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) samples[i] = ULAW_TO_FLOAT[bytes.charCodeAt(i)];
    c.playback.port.postMessage({ audio: samples }, [samples.buffer]);
    stats.framesReceived++;
    if (stats.firstAudioAt === null) stats.firstAudioAt = Math.round(performance.now());
    stats.bytesReceived += bytes.length;
  } else if (msg.event === "mark") {
    c.playback.port.postMessage({ mark: msg.mark.name });
  } else if (msg.event === "clear") {
    c.playback.port.postMessage({ clear: true });
    stats.clears++;
  } else if (msg.event === "relay.log") {
    stats.events[msg.kind] = (stats.events[msg.kind] || 0) + 1;
    if (msg.kind === "call.end") c.endText = msg.text;
    if (msg.kind === "agent.ready") setStatus("Connected: talk to the agent.", "connected");
    if (SHOWN.has(msg.kind)) show(msg.kind, msg.text);
  }
}

// The playback worklet reached a mark, or a clear discarded marks: echo them as Twilio does.
function played(c, data) {
  const names = data.played !== undefined ? [data.played] : data.cleared || [];
  for (const name of names) {
    send(c, { event: "mark", mark: { name } });
    stats.marksEchoed++;
    stats.marks.push({ name, at: Math.round(performance.now()) });
  }
  showStats();
}

function sendDigit(digit) {
  const c = call;
  if (!c || !c.started || c.over) return;
  send(c, { event: "dtmf", dtmf: { track: "inbound_track", digit } });
}

function closed(c, event) {
  if (c.over) return;
  const reason = event.reason ? `: ${event.reason}` : "";
  const meaning = c.endText || CLOSE_MEANINGS[event.code];
  const why = meaning ? ` (${meaning})` : "";
  const clean = event.code === 1000;
  end(c, `Call ended by the relay, close code ${event.code}${reason}${why}.`, clean ? "ended" : "error");
  followAction(c);
}

// The relay closed the stream: Twilio would now request the <Connect action> URL and play its
// answer. Ask the relay for the same answer, show it, and speak its words as Twilio's <Say> would.
async function followAction(c) {
  try {
    const response = await fetch("/phone/action", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ call_sid: c.session.call_sid, action_token: c.session.action_token }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const next = await response.json();
    stats.next = next;
    show("action", `Next, the caller hears: ${next.describe}.`);
    if (next.says.length && window.speechSynthesis && window.SpeechSynthesisUtterance) {
      for (const text of next.says) speechSynthesis.speak(new SpeechSynthesisUtterance(text));
    }
  } catch (err) {
    show("action", `Could not ask what the caller hears next: ${err.message}`);
  }
}

function hangUp() {
  const c = call;
  if (!c || c.over) return;
  if (c.started) send(c, { event: "stop", stop: { accountSid: ACCOUNT_SID, callSid: c.session.call_sid } });
  end(c, "Call ended: you hung up.", "ended");
}

function end(c, text, state) {
  c.over = true;
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000, "caller hung up");
  release(c);
  if (call === c) call = null;
  setStatus(text, state);
  showStats();
}

function release(c) {
  if (c.mic) for (const track of c.mic.getTracks()) track.stop();
  if (c.ctx) c.ctx.close().catch(() => {});
  c.mic = c.ctx = null;
}

$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
for (const key of document.querySelectorAll("#keypad button")) {
  key.addEventListener("click", () => sendDigit(key.dataset.digit));
}
document.addEventListener("keydown", (event) => {
  if (/^[0-9*#]$/.test(event.key) && !event.repeat) sendDigit(event.key);
});
window.addEventListener("pagehide", hangUp);
setStatus("Ready.", "idle");
