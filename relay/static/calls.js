// The calls page: the live list (server-sent events), recent calls, and one call's view.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const secs = (v) => (v === null || v === undefined) ? "–" : `${Number(v).toFixed(1)} s`;
const ms = (v) => (v === null || v === undefined) ? "–" : `${Math.round(v * 1000)} ms`;
const link = (sid) => el("a", { href: `/calls/${encodeURIComponent(sid)}` }, sid.slice(0, 12) + "…");

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function hangUp(sid, button) {
  button.disabled = true;
  button.textContent = "hanging up…";
  const response = await fetch(`/api/calls/${encodeURIComponent(sid)}/hangup`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Relay-Request": "1" },
    body: "{}",
  });
  if (!response.ok) { button.textContent = `failed (${response.status})`; }
}

function renderLive(calls) {
  const body = $("#live tbody");
  body.replaceChildren();
  if (!calls.length) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no live calls")));
    return;
  }
  for (const call of calls) {
    const button = el("button", { class: "hangup", "data-sid": call.call_sid }, "hang up");
    button.addEventListener("click", () => hangUp(call.call_sid, button));
    const line = call.last_line ? `${call.last_line.role}: ${call.last_line.text}` : "";
    body.append(el("tr", { class: "live-call", "data-sid": call.call_sid },
      el("td", {}, link(call.call_sid)), el("td", {}, call.caller || "unknown"),
      el("td", {}, call.direction), el("td", { class: "num" }, secs(call.duration_seconds)),
      el("td", { class: "activity" }, call.activity), el("td", { class: "last-line" }, line),
      el("td", {}, button)));
  }
}

function renderRecent(calls) {
  const body = $("#recent tbody");
  body.replaceChildren();
  if (!calls.length) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no calls yet")));
    return;
  }
  for (const call of calls) {
    body.append(el("tr", { class: "recent-call", "data-sid": call.call_sid },
      el("td", {}, link(call.call_sid)), el("td", {}, call.caller || "unknown"),
      el("td", {}, (call.started_at || "").replace("T", " ").slice(0, 19)),
      el("td", { class: "num" }, secs(call.duration_seconds)),
      el("td", { class: "outcome" }, call.outcome || ""),
      el("td", { class: "num" }, ms(call.first_audio_seconds)),
      el("td", { class: "num" }, `${ms(call.response_p50_seconds)} / ${ms(call.response_max_seconds)}`)));
  }
}

function listView() {
  $("#list").hidden = false;
  let liveCount = -1;
  const refreshRecent = async () => renderRecent((await getJSON("/api/calls")).recent);
  refreshRecent();
  const events = new EventSource("/api/events");
  events.addEventListener("calls", (event) => {
    const calls = JSON.parse(event.data);
    $("#status").textContent = `${calls.length} live`;
    renderLive(calls);
    if (calls.length !== liveCount) { liveCount = calls.length; refreshRecent(); }
  });
  events.onerror = () => { $("#status").textContent = "reconnecting…"; };
}

// ---------------------------------------------------------------- one call

// Spans of time from the record's events: who spoke when, tools, and the marks heard.
function spans(record) {
  const end = record.duration_seconds || 0;
  const out = { caller: [], agent: [], tools: [], bargeIns: [], heard: [] };
  let callerFrom = null, agentFrom = null;
  const tools = {};
  const closeAgent = (t) => { if (agentFrom !== null) { out.agent.push([agentFrom, t]); agentFrom = null; } };
  for (const e of record.events || []) {
    const t = e.t || 0;
    switch (e.event) {
      case "caller.started": if (callerFrom === null) callerFrom = t; break;
      case "caller.stopped": if (callerFrom !== null) { out.caller.push([callerFrom, t]); callerFrom = null; } break;
      case "barge-in": out.bargeIns.push(t); closeAgent(t); if (callerFrom === null) callerFrom = t; break;
      case "agent.audio": if (agentFrom === null) agentFrom = t; break;
      case "reply.heard": out.heard.push(t); closeAgent(t); break;
      case "reply.interrupted": case "reply.flushed": closeAgent(t); break;
      case "tool.started": tools[e.call_id] = { from: t, name: e.tool }; break;
      case "tool.finished": if (tools[e.call_id]) {
        out.tools.push({ ...tools[e.call_id], to: t, ok: e.ok }); delete tools[e.call_id]; } break;
    }
  }
  if (callerFrom !== null) out.caller.push([callerFrom, end]);
  closeAgent(end);
  for (const open of Object.values(tools)) out.tools.push({ ...open, to: end, ok: null });
  return out;
}

function timeline(record) {
  const width = 900, left = 60, right = 20, rowH = 26, top = 10;
  const total = Math.max(record.duration_seconds || 0, 1);
  const x = (t) => left + (Math.max(0, Math.min(t, total)) / total) * (width - left - right);
  const s = spans(record);
  const rows = ["caller", "agent", "tools"];
  const height = top + rows.length * rowH + 30;
  const svg = el("svg:svg", { id: "timeline", width, height, viewBox: `0 0 ${width} ${height}`,
                              role: "img", "aria-label": "call timeline" });
  rows.forEach((name, i) => svg.append(el("svg:text", { x: 4, y: top + i * rowH + 17 }, name)));
  const bar = (cls, row, from, to, fill, title) => {
    const r = el("svg:rect", { class: cls, x: x(from), y: top + row * rowH + 4,
      width: Math.max(2, x(to) - x(from)), height: rowH - 8, fill, rx: 3 });
    r.append(el("svg:title", {}, title));
    svg.append(r);
  };
  for (const [a, b] of s.caller) bar("caller", 0, a, b, "#4f8bd6", `caller ${a.toFixed(1)}–${b.toFixed(1)} s`);
  for (const [a, b] of s.agent) bar("agent", 1, a, b, "#47a873", `agent ${a.toFixed(1)}–${b.toFixed(1)} s`);
  for (const t of s.tools) {
    bar("tool", 2, t.from, t.to, t.ok === false ? "#d65f4f" : "#d6a64f",
        `${t.name}: ${((t.to - t.from) * 1000).toFixed(0)} ms${t.ok === false ? " (error)" : ""}`);
    svg.append(el("svg:text", { x: x(t.to) + 3, y: top + 2 * rowH + 17 }, t.name));
  }
  for (const t of s.bargeIns) {
    const line = el("svg:line", { class: "barge-in", x1: x(t), x2: x(t), y1: top, y2: top + 2 * rowH,
                                  stroke: "#c33", "stroke-width": 2, "stroke-dasharray": "3 2" });
    line.append(el("svg:title", {}, `barge-in at ${t.toFixed(1)} s`));
    svg.append(line);
  }
  for (const t of s.heard) {
    const dot = el("svg:circle", { class: "heard", cx: x(t), cy: top + rowH + rowH / 2, r: 4, fill: "#1d6b43" });
    dot.append(el("svg:title", {}, `reply heard at ${t.toFixed(1)} s`));
    svg.append(dot);
  }
  const axisY = top + rows.length * rowH + 14;
  const step = total > 120 ? 30 : total > 30 ? 10 : total > 8 ? 2 : 1;
  for (let t = 0; t <= total; t += step) {
    svg.append(el("svg:text", { x: x(t) - 4, y: axisY }, `${t}s`));
  }
  return svg;
}

function renderCall(record) {
  $("#call-title").textContent = `${record.call_sid} (${record.live ? "live" : record.outcome})`;
  $("#call-summary").textContent = [
    `${record.direction} from ${record.caller || "unknown"} to ${record.called || "unknown"}`,
    `duration ${secs(record.duration_seconds)}`, `first audio ${ms(record.first_audio_seconds)}`,
    `response p50 ${ms(record.response_p50_seconds)}, max ${ms(record.response_max_seconds)}`,
    `barge-ins ${record.barge_ins}`, record.end_reason ? `ended: ${record.end_reason}` : "",
  ].filter(Boolean).join(" · ");
  $("#timeline-box").replaceChildren(timeline(record));
  const transcript = $("#transcript");
  transcript.replaceChildren();
  for (const turn of record.transcript || []) {
    transcript.append(el("div", { class: `turn ${turn.role}${turn.interrupted ? " interrupted" : ""}` },
      el("span", { class: "at" }, secs(turn.offset_seconds)), el("span", { class: "who" }, turn.role),
      el("span", { class: "text" }, turn.text), turn.interrupted ? " (interrupted)" : ""));
  }
  if (!(record.transcript || []).length) transcript.append(el("p", { class: "empty" }, "nothing said yet"));
  const tools = $("#tools");
  tools.replaceChildren();
  for (const t of record.tool_calls || []) {
    tools.append(el("div", { class: "tool-call" }, `${secs(t.offset_seconds)} ${t.name}(${t.argument_keys.join(", ")}) `,
      `${ms(t.duration_seconds)}${t.error ? ` error: ${t.error}` : ""}`));
  }
  if (!(record.tool_calls || []).length) tools.append(el("p", { class: "empty" }, "none"));
}

async function callView(sid) {
  $("#call").hidden = false;
  let record;
  try {
    record = await getJSON(`/api/calls/${encodeURIComponent(sid)}`);
  } catch (error) {
    $("#status").textContent = String(error.message || error);
    return;
  }
  renderCall(record);
  if (!record.live) return;
  $("#status").textContent = "live";
  // A live call: its record as it grows, until it ends.
  const events = new EventSource(`/api/events?call=${encodeURIComponent(sid)}`);
  events.addEventListener("call", (event) => {
    const update = JSON.parse(event.data);
    if (update) renderCall(update);
    $("#status").textContent = update && update.live ? "live" : "";
  });
  events.addEventListener("end", () => events.close());
}

const match = location.pathname.match(/^\/calls\/([^/]+)$/);
if (match) callView(decodeURIComponent(match[1])); else listView();
