// hookshim's page (/ui): reads the JSON API of this listener, nothing else. Every value is
// written with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
let cursor = null;
let lastCounts = null; // {at, byUpstream} of the previous /metrics read

function token() {
  return sessionStorage.getItem("hookshim-token") || "";
}

function say(text, ok) {
  $("message").textContent = text;
  $("message").className = ok ? "ok" : "";
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let value;
  try { value = JSON.parse(text); } catch (_) { value = text; }
  if (!resp.ok) {
    const e = (value && value.error) || {};
    const hint = resp.status === 401 ? " (enter the API token above)" : "";
    throw new Error(resp.status + " " + (e.code || "error") + ": " + (e.message || text) + hint);
  }
  return value;
}

function cell(v) {
  if (v === null || v === undefined) return "-";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function row(tbody, values) {
  const tr = document.createElement("tr");
  for (const v of values) {
    const td = document.createElement("td");
    if (v instanceof Node) td.appendChild(v); else td.textContent = cell(v);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function opLink(id) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link op-link";
  b.dataset.id = id;
  b.textContent = id;
  b.addEventListener("click", () => show(id));
  return b;
}

async function loadOps(from) {
  const q = new URLSearchParams();
  for (const f of ["status", "upstream", "delivery"]) if ($(f).value) q.set(f, $(f).value);
  q.set("limit", "50");
  if (from) q.set("cursor", from);
  const page = await api("GET", "/v1/operations?" + q);
  const tbody = $("ops").tBodies[0];
  tbody.textContent = "";
  for (const o of page.operations) {
    const tr = row(tbody, [opLink(o.id), o.upstream, o.operation, o.status, o.delivery.state,
      o.delivery.attempts, o.created_at, o.completed_at]);
    tr.dataset.id = o.id;
  }
  cursor = page.next_cursor;
  $("next").disabled = !cursor;
}

// What happened to one operation, in time order, from its record (as `hookshim ops show`).
function timeline(op) {
  const ev = [];
  const at = (t, what) => { if (t) ev.push([t, what]); };
  at(op.created_at, "registered: " + op.upstream + " " + op.operation);
  at(op.webhook_at, "webhook received");
  const runs = op.poll_log || [];
  for (const r of runs) {
    const found = r.result === "status" ? cell(r.upstream_status)
      : r.result === "not_modified" ? "not modified"
      : r.result === "not_found" ? "not found" : "failed: " + cell(r.error);
    at(r.first_at, r.polls === 1 ? "status read: " + found
      : r.polls + " status reads until " + r.last_at + ": " + found);
  }
  if (op.polls > 0 && runs.length === 0) {
    const when = (op.upstream_body_meta && op.upstream_body_meta.at) || op.completed_at || op.updated_at;
    at(when, op.polls + " status read(s), upstream status " + cell(op.upstream_status) +
      (op.last_poll_error ? ", last error: " + op.last_poll_error : ""));
  }
  for (const e of op.events || []) {
    at(e.body && e.body.timestamp, "event " + e.name + ": callback " + e.delivery.state);
  }
  if (op.completed_at) at(op.completed_at, "ended " + op.status + " (detected via " + cell(op.detected_via) + ")");
  for (const a of op.delivery.history || []) {
    let answer = a.status !== undefined ? "answered " + a.status : "";
    if (a.error) answer += (answer ? ": " : "") + a.error;
    at(a.at, "callback attempt: " + (answer || "no answer") + " (" + a.duration_ms + " ms)");
  }
  at(op.delivery.delivered_at, "callback delivered");
  if (op.delivery.state === "pending") at(op.delivery.next_attempt_at, "next callback attempt due");
  else if (!op.completed_at) at(op.next_poll_at, "next status read due");
  ev.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  return ev;
}

async function show(id) {
  const op = await api("GET", "/v1/operations/" + encodeURIComponent(id));
  $("detail-id").textContent = op.id;
  $("detail-id").className = "";
  const d = $("detail");
  d.textContent = "";
  const t = document.createElement("table");
  const tb = document.createElement("tbody");
  t.appendChild(tb);
  for (const [k, v] of [["status", op.status], ["upstream status", op.upstream_status],
    ["progress", op.progress], ["callback url", op.callback_url], ["deadline", op.deadline_at],
    ["delivery", op.delivery.state], ["attempts", op.delivery.attempts],
    ["last error", op.delivery.last_error], ["metadata", op.metadata]]) {
    const tr = row(tb, [k, v]);
    tr.lastChild.className = "wrap";
  }
  d.appendChild(t);
  const ul = $("timeline");
  ul.textContent = "";
  for (const [when, what] of timeline(op)) {
    const li = document.createElement("li");
    li.textContent = when + "  " + what;
    ul.appendChild(li);
  }
}

// Status requests per upstream from /metrics (no token needed), as a rate between two reads.
async function requestCounts() {
  const resp = await fetch("/metrics");
  const text = await resp.text();
  const counts = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^hookshim_upstream_requests_total\{([^}]*)\} ([0-9.eE+]+)$/);
    if (!m) continue;
    const u = (m[1].match(/upstream="([^"]*)"/) || [])[1];
    if (u) counts[u] = (counts[u] || 0) + Number(m[2]);
  }
  return { at: Date.now(), byUpstream: counts };
}

async function loadUpstreams() {
  const [ups, counts] = await Promise.all([api("GET", "/v1/upstreams"), requestCounts()]);
  const prev = lastCounts;
  lastCounts = counts;
  const names = Object.keys(ups.upstreams).sort();
  const sel = $("upstream");
  if (sel.options.length === 1) {
    for (const n of names) { const o = document.createElement("option"); o.textContent = n; sel.appendChild(o); }
  }
  const tbody = $("upstreams").tBodies[0];
  tbody.textContent = "";
  for (const n of names) {
    const u = ups.upstreams[n];
    let rpm = "…";
    if (prev && counts.at > prev.at) {
      const d = (counts.byUpstream[n] || 0) - (prev.byUpstream[n] || 0);
      rpm = (d * 60000 / (counts.at - prev.at)).toFixed(1);
    }
    const cur = u.current_rate_per_second === null ? null : Number(u.current_rate_per_second).toFixed(2);
    const tr = row(tbody, [n, u.rate_per_second, u.burst, cur, rpm, u.target_delay_s, u.requests_saved]);
    tr.dataset.upstream = n;
  }
}

async function redeliver(id, button) {
  button.disabled = true;
  try {
    const op = await api("POST", "/v1/operations/" + encodeURIComponent(id) + "/redeliver", {});
    say("redelivered " + op.id + " to " + op.callback_url, true);
    setTimeout(() => refresh().catch((e) => say(e.message)), 1000);
  } catch (e) {
    button.disabled = false;
    say(e.message);
  }
}

async function loadFailed() {
  const page = await api("GET", "/v1/operations?delivery=failed&limit=100");
  const tbody = $("failed").tBodies[0];
  tbody.textContent = "";
  for (const o of page.operations) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "redeliver";
    b.dataset.id = o.id;
    b.textContent = "Redeliver";
    b.addEventListener("click", () => redeliver(o.id, b));
    const tr = row(tbody, [opLink(o.id), o.upstream, o.status, o.delivery.attempts, o.delivery.last_error, b]);
    tr.dataset.id = o.id;
    tr.children[4].className = "wrap";
  }
}

async function refresh() {
  await Promise.all([loadOps(null), loadUpstreams(), loadFailed()]);
  say("updated " + new Date().toISOString(), true);
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("hookshim-token", $("token").value);
  refresh().catch((e) => say(e.message));
});
$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadOps(null).catch((e) => say(e.message));
});
$("next").addEventListener("click", () => loadOps(cursor).catch((e) => say(e.message)));
setInterval(() => loadUpstreams().catch(() => {}), 10000);
refresh().catch((e) => say(e.message));
