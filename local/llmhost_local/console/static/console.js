// llmhost's local console. Everything goes through this page's own origin: /api/... is the
// control API (the server signs it), /openai/... the OpenAI-compatible server (the server adds
// the key). Text from the APIs is only ever set as textContent, never parsed as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
const HEADERS = { "X-Llmhost-Console": "1" };
const EXAMPLE_SPEC = {
  name: "my-model",
  model: { kind: "hub", model_id: "HuggingFaceH4/zephyr-7b-beta" },
  hosting: { kind: "dedicated", instance_type: "ml.g5.2xlarge" },
};
const state = {
  selected: null, // the deployment shown in the detail panel
  samples: {}, // name -> [{at, desired, in_service}] sampled by this page (no capacity route)
  capacityRoute: true, // false once GET .../capacity answered that it does not exist
  messages: [], // the chat so far
  trace: null,
};

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || body || {};
    const fields = (error.fields || []).map((f) => `${f.field}: ${f.message}`).join("; ");
    super(`${status}: ${error.message || "request failed"}${fields && !String(error.message).includes(fields) ? ` (${fields})` : ""}`);
    this.status = status;
    this.code = error.code || error.type || null;
  }
}

async function call(method, path, body) {
  const options = { method, headers: { ...HEADERS } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const reply = await fetch(`/api${path}`, options);
  const text = await reply.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!reply.ok) throw new ApiError(reply.status, data);
  return data;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function notice(message) { $("#notice").textContent = message || ""; }
function when(iso) { return iso ? new Date(iso).toLocaleTimeString() : ""; }
function rows(tbody, items) { tbody.replaceChildren(...items); }

// ------------------------------------------------------------------ deployments

async function refreshDeployments() {
  let list;
  try {
    list = (await call("GET", "/v1/deployments")).deployments;
    notice("");
  } catch (error) { notice(`deployments: ${error.message}`); return; }
  rows($("#deployments tbody"), list.map((d) => {
    const row = el("tr", { "data-name": d.name, "data-status": d.status },
      el("td", { text: d.name }), el("td", { class: `status ${d.status}`, text: d.status }),
      el("td", { text: d.hosting }), el("td", { text: d.generation }), el("td", { text: when(d.updated_at) }));
    row.classList.toggle("selected", d.name === state.selected);
    row.addEventListener("click", () => select(d.name));
    return row;
  }));
  setOptions($("#chat-model"), list.filter((d) => d.status !== "DELETED").map((d) => [d.name, `${d.name} (${d.status})`]));
  setOptions($("#traces-model"), [["", "(all)"], ...list.map((d) => [d.name, d.name])]);
}

// Options [value, label] for a select, keeping its choice; untouched if nothing changed
// (so a list the user has open is not redrawn under the pointer).
function setOptions(select, options) {
  const signature = JSON.stringify(options);
  if (select.dataset.options === signature) return;
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => el("option", { value, text })));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
  select.dataset.options = signature;
}

function select(name) {
  state.selected = name;
  for (const row of document.querySelectorAll("#deployments tbody tr")) {
    row.classList.toggle("selected", row.dataset.name === name);
  }
  $("#deployment-panel").hidden = false;
  $("#deployment-name").textContent = name;
  refreshSelected();
}

async function refreshSelected() {
  const name = state.selected;
  if (!name) return;
  let deployment;
  try { deployment = await call("GET", `/v1/deployments/${encodeURIComponent(name)}`); } catch (error) {
    $("#deployment-reason").textContent = error.message;
    return;
  }
  if (name !== state.selected) return;
  $("#deployment-status").textContent = deployment.status;
  $("#deployment-status").className = `status ${deployment.status}`;
  $("#deployment-reason").textContent = deployment.status_reason || "";
  rows($("#history tbody"), [...(deployment.history || [])].reverse().map((h) => el("tr", {},
    el("td", { text: when(h.at) }), el("td", { text: h.event }),
    el("td", { class: `status ${h.status}`, text: h.status }), el("td", { text: h.reason || "" }))));
  await drawCapacity(name, deployment);
}

async function act(action) {
  const name = state.selected;
  if (!name) return;
  if (action === "delete" && !window.confirm(`Delete ${name}? Its endpoint and config go.`)) return;
  try {
    if (action === "delete") await call("DELETE", `/v1/deployments/${encodeURIComponent(name)}`);
    else await call("POST", `/v1/deployments/${encodeURIComponent(name)}/${action}`);
    notice("");
  } catch (error) { notice(`${action} ${name}: ${error.message}`); }
  refreshDeployments();
  refreshSelected();
}

async function create() {
  const result = $("#create-result");
  let spec;
  try { spec = JSON.parse($("#spec").value); } catch (error) {
    result.textContent = `not JSON: ${error.message}`;
    return;
  }
  try {
    const created = await call("POST", "/v1/deployments", spec);
    result.textContent = `created ${created.name}: ${created.status}`;
    await refreshDeployments();
    select(created.name);
  } catch (error) { result.textContent = error.message; }
}

// ------------------------------------------------------------------ copies over time

async function capacityOf(name, deployment) {
  const from = new Date(Date.now() - 1800e3).toISOString();
  let recorded = null;
  if (state.capacityRoute) {
    try {
      recorded = await call("GET", `/v1/deployments/${encodeURIComponent(name)}/capacity?from=${encodeURIComponent(from)}`);
    } catch (error) {
      if (error.code !== "route_not_found" && error.status !== 405) throw error;
      state.capacityRoute = false;
    }
  }
  if (recorded && recorded.points.length) return recorded;
  // Nothing recorded yet (or no capacity route on this stack): sample the scaling view's
  // copies each time this page polls, and mark its scaling activity and the history.
  const scaling = await call("GET", `/v1/deployments/${encodeURIComponent(name)}/scaling`);
  const samples = (state.samples[name] ||= []);
  samples.push({ at: new Date().toISOString(), desired: scaling.capacity?.desired ?? 0,
    in_service: scaling.capacity?.current ?? 0 });
  if (samples.length > 1800) samples.shift();
  const decisions = recorded ? recorded.decisions : [
    ...(scaling.recent_activity || []).map((a) => ({ at: a.at, reason: `${a.what}: ${a.cause || a.status}` })),
    ...(deployment.history || []).map((h) => ({ at: h.at, reason: `${h.event} → ${h.status}${h.reason ? `: ${h.reason}` : ""}` })),
  ];
  return { points: samples, decisions, sampled: true };
}

async function drawCapacity(name, deployment) {
  let data;
  try { data = await capacityOf(name, deployment); } catch (error) {
    $("#chart-note").textContent = `copies: ${error.message}`;
    return;
  }
  if (name !== state.selected) return;
  drawChart($("#chart"), data.points || [], data.decisions || []);
  $("#chart-note").textContent = data.sampled
    ? "desired (dashed) and in service (solid), sampled while this page is open; marks: scaling activity and history"
    : "desired (dashed) and in service (solid) over the last 30 minutes; marks: scaling decisions (hover for why)";
}

function drawChart(svg, points, decisions) {
  const W = 640, H = 180, left = 34, right = 10, top = 10, bottom = 24;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attributes, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const times = [...points, ...decisions].map((p) => Date.parse(p.at)).filter(Number.isFinite);
  const now = Date.now();
  const t0 = times.length ? Math.min(...times) : now - 60e3;
  const t1 = Math.max(now, ...times, t0 + 1000);
  const top_ = Math.max(1, ...points.map((p) => Math.max(p.desired ?? 0, p.in_service ?? 0)));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const y = (v) => H - bottom - (v / top_) * (H - top - bottom);
  const children = [];
  for (let v = 0; v <= top_; v += Math.max(1, Math.ceil(top_ / 4))) {
    children.push(node("line", { class: "axis", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    children.push(node("text", { x: left - 6, y: y(v) + 3, "text-anchor": "end" }, v));
  }
  children.push(node("text", { x: left, y: H - 6 }, new Date(t0).toLocaleTimeString()));
  children.push(node("text", { x: W - right, y: H - 6, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  const step = (key) => {
    const sorted = points.filter((p) => p[key] != null).sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    if (!sorted.length) return "";
    let d = `M${x(Date.parse(sorted[0].at))},${y(sorted[0][key])}`;
    for (const p of sorted.slice(1)) d += `H${x(Date.parse(p.at))}V${y(p[key])}`;
    return `${d}H${x(t1)}`;
  };
  children.push(node("path", { class: "desired", d: step("desired") }));
  children.push(node("path", { class: "in-service", d: step("in_service") }));
  for (const decision of decisions) {
    const t = Date.parse(decision.at);
    if (!Number.isFinite(t)) continue;
    const change = decision.from != null ? `${decision.from} → ${decision.to} ` : "";
    const what = decision.event ? `${decision.event}: ` : "";
    const mark = node("g", { class: "decision-mark" });
    mark.append(node("line", { class: "decision", x1: x(t), x2: x(t), y1: top, y2: H - bottom }),
      node("circle", { class: "decision-dot", cx: x(t), cy: top + 3, r: 3 }),
      node("title", {}, `${new Date(t).toLocaleTimeString()} ${change}${what}${decision.reason || ""}`));
    children.push(mark);
  }
  svg.replaceChildren(...children);
}

// ------------------------------------------------------------------ chat

async function refreshCollections() {
  let names = [];
  try { names = (await call("GET", "/v1/collections")).collections || []; } catch { return; }
  setOptions($("#chat-collection"), [["", "(none)"], ...names.map((n) => [n, n])]);
}

function addMessage(role, text) {
  const message = el("div", { class: `message ${role}`, text });
  $("#conversation").append(message);
  message.scrollIntoView({ block: "end" });
  return message;
}

async function send(event) {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  const model = $("#chat-model").value;
  if (!text || !model) return;
  $("#chat-input").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addMessage("assistant", "");
  answer.dataset.state = "waiting";
  answer.dataset.chunks = "0";
  const body = { model, messages: state.messages, stream: true };
  const collection = $("#chat-collection").value;
  if (collection) body.rag = { collection, k: 4 };
  const headers = { ...HEADERS, "Content-Type": "application/json", Accept: "text/event-stream" };
  if ($("#chat-wait").checked) headers.Prefer = "wait=60";
  $("#chat-send").disabled = true;
  try {
    const reply = await fetch("/openai/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    if (!reply.ok) {
      let data = null;
      try { data = await reply.json(); } catch { /* not JSON */ }
      const retry = reply.headers.get("Retry-After");
      const problem = new ApiError(reply.status, data || { message: reply.statusText });
      throw new Error(problem.message + (retry ? ` (retry after ${retry} s)` : ""));
    }
    await readStream(reply.body, answer);
    state.messages.push({ role: "assistant", content: answer.textContent });
    answer.dataset.state = "done";
    // The reply names its trace (written once the stream ends; absent if not sampled).
    const traceId = reply.headers.get("x-llmhost-trace-id");
    if (traceId) {
      answer.after(el("button", { type: "button", class: "open-trace", text: "trace",
        title: `open trace ${traceId}`, onclick: () => openTrace(traceId) }));
    }
  } catch (error) {
    answer.classList.add("error");
    answer.textContent = String(error.message || error);
    answer.dataset.state = "error";
    state.messages.pop();
  } finally {
    $("#chat-send").disabled = false;
    setTimeout(refreshTraces, 300);
  }
}

// Server-sent events from fetch's body: "data: {...}" blocks separated by a blank line.
async function readStream(stream, answer) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`${chunk.error.code || "error"}: ${chunk.error.message}`);
      const sources = chunk.llmhost && chunk.llmhost.sources;
      if (sources && sources.length) {
        answer.after(el("div", { class: "sources", text: `sources: ${sources.map((s) => `[${s.id}] ${Number(s.score).toFixed(3)}`).join("  ")}` }));
      }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        answer.textContent += delta.content;
        answer.dataset.state = "streaming";
        answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
      }
    }
  }
}

// ------------------------------------------------------------------ traces

async function refreshTraces() {
  let page;
  const query = new URLSearchParams({ limit: "20" });
  if ($("#traces-model").value) query.set("model", $("#traces-model").value);
  if ($("#traces-status").value) query.set("status", $("#traces-status").value);
  try { page = await call("GET", `/v1/traces?${query}`); } catch (error) {
    $("#traces-note").textContent = error.code === "route_not_found"
      ? "this stack records no traces yet (GET /v1/traces is missing)" : `traces: ${error.message}`;
    return;
  }
  $("#traces-note").textContent = page.data.length ? "" : "no traces yet: send a chat";
  rows($("#traces tbody"), page.data.map((t) => {
    const row = el("tr", { "data-id": t.id },
      el("td", { text: when(t.started_at) }), el("td", { text: t.kind }), el("td", { text: t.model || "" }),
      el("td", { class: `status ${t.status}`, text: t.http_status ? `${t.status} ${t.http_status}` : t.status }),
      el("td", { text: t.duration_ms != null ? Math.round(t.duration_ms) : "" }),
      el("td", { text: (t.query || "").slice(0, 80) }));
    row.classList.toggle("selected", t.id === state.trace);
    row.addEventListener("click", () => openTrace(t.id));
    return row;
  }));
}

function promptText(prompt) {
  if (prompt == null) return "(not kept: TraceContent)";
  if (typeof prompt === "string") return prompt;
  return prompt.map((m) => `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n\n");
}

async function openTrace(id) {
  state.trace = id;
  let trace;
  try { trace = await call("GET", `/v1/traces/${encodeURIComponent(id)}`); } catch (error) {
    notice(`trace ${id}: ${error.message}`);
    return;
  }
  for (const row of document.querySelectorAll("#traces tbody tr")) row.classList.toggle("selected", row.dataset.id === id);
  const facts = [
    ["id", trace.id], ["request", trace.request_id], ["kind", trace.kind],
    ["status", `${trace.status} ${trace.http_status ?? ""} ${trace.error_code ?? ""}`],
    ["model", `${trace.model ?? ""} (generation ${trace.generation ?? "?"})${trace.cold ? ", cold" : ""}`],
    ["collection", trace.collection ?? "—"], ["duration", `${trace.duration_ms ?? "?"} ms (first token ${trace.ttft_ms ?? "?"} ms)`],
    ["tokens", `${trace.attributes?.["gen_ai.usage.input_tokens"] ?? "?"} in, ${trace.attributes?.["gen_ai.usage.output_tokens"] ?? "?"} out`],
    ["cost", trace.cost_usd != null ? `$${Number(trace.cost_usd).toFixed(6)}` : "—"], ["content", trace.content],
  ];
  const total = Math.max(1, trace.duration_ms || 1);
  const spans = (trace.spans || []).map((s) => el("tr", {}, el("td", { text: s.name }),
    el("td", { text: `${Number(s.duration_ms).toFixed(1)} ms` }),
    el("td", {}, el("div", { class: "span-bar", style: `margin-left:${(100 * s.start_ms) / total}%;width:${Math.max(0.5, (100 * s.duration_ms) / total)}%` }))));
  const sources = (trace.sources || []).map((s) => el("li", {}, el("b", { text: `[${s.id}] ${Number(s.score).toFixed(3)} ` }), s.text ?? ""));
  const feedback = el("div", { class: "buttons feedback" },
    el("button", { type: "button", text: "👍", onclick: () => rate(id, 1) }),
    el("button", { type: "button", text: "👎", onclick: () => rate(id, 0) }),
    el("span", { class: "note", text: (trace.feedback || []).map((f) => `${f.name}: ${f.score}`).join(", ") }));
  $("#trace").replaceChildren(
    el("h3", { text: `Trace ${trace.id}` }),
    el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    el("h3", { text: "Query" }), el("pre", { class: "trace-query", text: trace.query ?? "—" }),
    el("h3", { text: "Prompt (as sent to the engine)" }), el("pre", { class: "trace-prompt", text: promptText(trace.prompt) }),
    el("h3", { text: "Sources" }), sources.length ? el("ol", { class: "trace-sources" }, ...sources) : el("p", { class: "note", text: "none" }),
    el("h3", { text: "Answer" }), el("pre", { class: "trace-answer", text: trace.answer ?? "(not kept)" }),
    el("h3", { text: "Stages" }), el("table", { class: "trace-spans" }, el("tbody", {}, ...spans)),
    el("h3", { text: "Feedback" }), feedback);
  $("#trace").hidden = false;
}

async function rate(id, score) {
  try { await call("POST", `/v1/traces/${encodeURIComponent(id)}/feedback`, { score }); openTrace(id); } catch (error) {
    notice(`feedback: ${error.message}`);
  }
}

// ------------------------------------------------------------------ start

function every(ms, task) { task(); setInterval(() => { if (!document.hidden) task(); }, ms); }

document.addEventListener("DOMContentLoaded", () => {
  $("#spec").value = JSON.stringify(EXAMPLE_SPEC, null, 2);
  $("#create-button").addEventListener("click", create);
  $("#sleep-button").addEventListener("click", () => act("sleep"));
  $("#wake-button").addEventListener("click", () => act("wake"));
  $("#delete-button").addEventListener("click", () => act("delete"));
  $("#chat-form").addEventListener("submit", send);
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  $("#chat-reset").addEventListener("click", () => { state.messages = []; $("#conversation").replaceChildren(); });
  $("#traces-refresh").addEventListener("click", refreshTraces);
  $("#traces-model").addEventListener("change", refreshTraces);
  $("#traces-status").addEventListener("change", refreshTraces);
  every(2000, refreshDeployments);
  every(2000, refreshSelected);
  every(10000, refreshCollections);
  every(5000, refreshTraces);
});
