// The risk console page: renders the state the server pushes (server-sent events) and posts
// the operator's actions. Every rule is checked again on the server; this file only helps.
"use strict";

const $ = (id) => document.getElementById(id);
let me = null;
let state = null;
// timings for the benchmark (benches/console_latency.py): wall ms of the last confirm click
// and of the first render showing each command id
window.ksaTimings = { clickWallMs: null, shownWallMs: {} };
const wallMs = () => performance.timeOrigin + performance.now();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function flash(text, ok) {
  const f = $("flash");
  f.textContent = text;
  f.className = "flash " + (ok ? "good" : "bad");
}

function clearErrors(prefix) {
  document.querySelectorAll(`[id^="${prefix}"][id$="-error"]`).forEach((e) => (e.textContent = ""));
}

async function post(url, fields) {
  const body = new URLSearchParams({ ...fields, csrf: me.csrf });
  const r = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body,
  });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { ok: false, error: `HTTP ${r.status}` }; }
  data.status = r.status;
  return data;
}

function showErrors(prefix, data) {
  const errs = data.errors || {};
  let shown = false;
  for (const [field, msg] of Object.entries(errs)) {
    const e = $(`${prefix}-${field}-error`);
    if (e) { e.textContent = msg; shown = true; }
  }
  flash(shown ? "Please correct the marked fields." : (data.error || "refused"), false);
}

function haltScope() {
  const level = $("halt-level").value;
  const v = $("halt-value").value.trim();
  if (level === "firm") return "firm";
  if (level === "custom") return v;
  return `${level}=${v}`;
}

function fmtNs(ns) {
  if (ns === undefined || ns === null) return "-";
  if (ns < 1e3) return `${ns} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
  return `${(ns / 1e6).toFixed(2)} ms`;
}

function fmtTime(ns) {
  return new Date(ns / 1e6).toISOString().slice(11, 23);
}

function render(s) {
  state = s;
  const shownAt = wallMs();
  const banner = $("banner");
  if (s.error && !s.latched) {
    banner.textContent = s.error;
    banner.className = "banner halted";
  } else if (s.latched.length) {
    banner.textContent = "LATCHED: " + s.latched.map((l) => `${l.scope} ${l.state} (command ${l.command_id})`).join(", ");
    banner.className = "banner " + (s.latched.some((l) => l.state === "HALTED") ? "halted" : "reducing");
  } else {
    banner.textContent = "No scope latched by the control plane: trading allowed";
    banner.className = "banner";
  }
  if (s.error && s.latched) {
    banner.textContent = `ERROR: ${s.error}. ${banner.textContent}`;
    banner.className = "banner halted";
  }
  for (const l of s.latched || []) {
    if (!(l.command_id in window.ksaTimings.shownWallMs)) window.ksaTimings.shownWallMs[l.command_id] = shownAt;
  }
  $("directory").textContent = s.directory ? `(${s.directory})` : "";

  const ptb = $("procs").tBodies[0];
  ptb.replaceChildren();
  for (const p of s.processes || []) {
    const states = el("td");
    const entries = Object.entries(p.states);
    if (!entries.length) states.append("all ACTIVE");
    for (const [sc, st] of entries) states.append(el("span", { class: `state-${st}` }, `${sc} ${st}`), " ");
    ptb.append(el("tr", { class: p.stale ? "stale" : "", "data-pid": p.pid },
      el("td", {}, p.host), el("td", {}, p.pid), el("td", {}, p.name), states,
      el("td", {}, p.last_command_id),
      el("td", { class: "hb", "data-ns": p.heartbeat_ns || 0, "data-stale": p.stale ? "1" : "" })));
  }

  const tb = $("pending").tBodies[0];
  tb.replaceChildren();
  for (const r of s.pending || []) {
    const actions = el("td");
    if (r.state === "pending") {
      const left = Math.max(0, Math.round(r.expires_wall - Date.now() / 1000));
      actions.append(`expires in ${left} s `);
      if (me && me.role === "risk") {
        const a = el("button", { id: `approve-${r.id}` }, "Approve");
        a.onclick = () => approve(r.id);
        const c = el("button", { id: `cancel-${r.id}` }, "Cancel");
        c.onclick = () => cancel(r.id);
        actions.append(a, " ", c);
      }
    } else if (r.approved_by) {
      actions.append(`approved by ${r.approved_by}. ${r.detail}`);
    } else {
      actions.append(r.detail);
    }
    tb.append(el("tr", { id: `pending-${r.id}`, class: `req-${r.state}` },
      el("td", {}, r.id), el("td", {}, r.scope), el("td", {}, r.requested_by), el("td", {}, r.reason),
      el("td", { class: "req-state" }, r.state), actions));
  }

  const tl = $("timeline");
  tl.replaceChildren();
  for (const e of (s.timeline || []).slice().reverse()) {
    const who = [e.operator, e.second_operator].filter(Boolean).join(" + ");
    let what = e.text || "";
    if (e.source === "journal") {
      what = `${e.kind} ${e.scope}` + (e.refused ? ` REFUSED: ${e.refused}` : "") +
        (e.reason ? ` - ${e.reason}` : "") + (e.host ? ` (from ${e.host})` : "");
    }
    tl.append(el("li", { class: `src-${e.source}` },
      el("span", { class: "t" }, fmtTime(e.wall_ns)),
      el("span", { class: "k" }, e.source === "journal" ? `command ${e.command_id}` : e.kind || e.source),
      what, who ? ` [${who}]` : ""));
  }
  renderLatency(s.latency);
  ages();
}

// heartbeat ages tick every second between pushes (browser and console share the host clock)
function ages() {
  for (const td of document.querySelectorAll("td.hb")) {
    const ns = Number(td.dataset.ns);
    const age = ns ? `${Math.max(0, Date.now() / 1000 - ns / 1e9).toFixed(0)} s ago` : "-";
    td.textContent = td.dataset.stale ? `STALE, last ${age}` : age;
  }
}
setInterval(ages, 1000);

function renderLatency(lat) {
  if (!lat) return;
  const p = lat.percentiles_ns || {};
  $("latency-pct").textContent = lat.samples
    ? `${lat.samples} gate closures: p50 ${fmtNs(p.p50)}, p90 ${fmtNs(p.p90)}, p99 ${fmtNs(p.p99)}, max ${fmtNs(p.max)}`
    : "no halts acknowledged yet";
  const svg = $("latency-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const data = lat.per_command_max_ns || [];
  const W = 420, H = 140, pad = 20;
  const top = Math.max(1, ...data.map((d) => d.ns));
  const bw = data.length ? Math.min(28, (W - pad) / data.length) : 0;
  data.forEach((d, i) => {
    const h = Math.max(1, (d.ns / top) * (H - 2 * pad));
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + i * bw + 1);
    r.setAttribute("y", H - pad - h);
    r.setAttribute("width", Math.max(1, bw - 2));
    r.setAttribute("height", h);
    r.setAttribute("fill", "#b3261e");
    const t = document.createElementNS(ns, "title");
    t.textContent = `command ${d.command_id}: slowest gate closed after ${fmtNs(d.ns)}`;
    r.append(t);
    svg.append(r);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 2);
  label.setAttribute("y", 12);
  label.setAttribute("font-size", "11");
  label.textContent = `slowest gate per command (max ${fmtNs(top)})`;
  svg.append(label);
}

function applyRole() {
  $("who").textContent = `${me.operator} (${me.role})`;
  $("logout-csrf").value = me.csrf;
  const mayHalt = me.role === "halter" || me.role === "risk";
  const mayReset = me.role === "risk";
  $("halt-button").disabled = !mayHalt;
  $("halt-role-note").textContent = mayHalt ? "" : `Your role (${me.role}) may not halt.`;
  $("reset-request").disabled = !mayReset;
  $("reset-role-note").textContent = mayReset
    ? `A different risk officer must approve; requests expire after ${me.reset_ttl_s} s.`
    : `Your role (${me.role}) may not reset: risk officers only.`;
}

async function approve(id) {
  const d = await post("/api/reset/approve", { id });
  if (d.ok) flash(`reset #${id} approved and issued: ${d.request.detail}`, true);
  else flash(d.error || "refused", false);
}

async function cancel(id) {
  const d = await post("/api/reset/cancel", { id });
  if (d.ok) flash(`reset #${id} cancelled`, true); else flash(d.error || "refused", false);
}

function wire() {
  $("halt-level").onchange = () => {
    $("halt-value").disabled = $("halt-level").value === "firm";
    $("halt-value").placeholder = $("halt-level").value === "custom" ? "account=A1;venue=XNAS" : "value, e.g. A1";
  };
  $("halt-button").onclick = () => {
    clearErrors("halt-");
    const live = (state && state.processes || []).filter((p) => !p.stale).length;
    const mode = $("halt-mode-reduce").checked ? "put in reduce-only" : "HALT";
    $("halt-confirm-text").textContent = `${mode} scope "${haltScope()}" on ${live} live process(es)?`;
    $("halt-confirm").hidden = false;
    $("halt-confirm-yes").focus();
  };
  $("halt-confirm-no").onclick = () => { $("halt-confirm").hidden = true; };
  $("halt-confirm-yes").onclick = async () => {
    window.ksaTimings.clickWallMs = wallMs();
    $("halt-confirm").hidden = true;
    const mode = $("halt-mode-reduce").checked ? "reduce_only" : "halt";
    const d = await post("/api/halt", { scope: haltScope(), mode, reason: $("halt-reason").value, confirm: "yes" });
    if (d.ok) {
      const r = d.result;
      const lat = r.applied_by.map((a) => a.latency_ns).filter((x) => x !== null);
      flash(`command ${r.command_id}: ${r.kind} ${r.scope} applied by ${r.applied_by.length} process(es)` +
        (lat.length ? `, slowest gate closed ${fmtNs(Math.max(...lat))} after the command` : "") +
        (r.missing.length ? `; ${r.missing.length} did NOT answer` : ""), !r.missing.length);
    } else showErrors("halt", d);
  };
  $("reset-request").onclick = async () => {
    clearErrors("reset-");
    const d = await post("/api/reset/request", { scope: $("reset-scope").value, reason: $("reset-reason").value });
    if (d.ok) flash(`reset #${d.request.id} of ${d.request.scope} requested: another risk officer must approve`, true);
    else showErrors("reset", d);
  };
}

function connect() {
  const es = new EventSource("/api/stream");
  es.addEventListener("state", (ev) => {
    $("live").textContent = "live";
    $("live").className = "live on";
    render(JSON.parse(ev.data));
  });
  es.addEventListener("logout", () => { es.close(); location.href = "/login"; });
  es.onerror = async () => {
    // what is shown may be old from here on: say so until the stream is back
    $("live").textContent = "disconnected: data may be stale";
    $("live").className = "live off";
    if (es.readyState !== EventSource.CLOSED) return; // the browser retries by itself
    const r = await fetch("/api/me", { credentials: "same-origin" }).catch(() => null);
    if (r && r.status === 401) { location.href = "/login"; return; } // console restarted
    setTimeout(connect, 1000);
  };
}

async function main() {
  const r = await fetch("/api/me", { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login"; return; }
  me = await r.json();
  applyRole();
  wire();
  connect();
}

document.addEventListener("DOMContentLoaded", main);
