"""The dashboard: one self-contained page (no external assets), vanilla JS reading /api/*.

It holds no data itself. Data from the bounce log (diagnostic texts come from strangers' mail
servers) is only ever put into the page as text, never as HTML; the Content-Security-Policy allows
exactly this page's inline script and style, by hash.
"""
from __future__ import annotations

import base64
import hashlib

from proxy.model import Correlation

STYLE = """
:root { color-scheme: light dark; --line: #8884; --muted: #777; --hard: #c0392b; --soft: #b9770e; --ok: #1e8449; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 1.5rem 2rem; }
header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
header h1 { font-size: 1.3rem; margin: 1rem 0 .5rem; }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .5rem 0 1rem; padding: 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .8rem; min-width: 8.5rem; }
.card dt { font-size: .8rem; color: var(--muted); }
.card dd { margin: 0; font-size: 1.4rem; font-variant-numeric: tabular-nums; }
.card.warn dd { color: var(--hard); }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem .8rem; align-items: end; margin: .5rem 0; }
form.filters label, .window label { display: flex; flex-direction: column; font-size: .8rem; color: var(--muted); }
input, select, button { font: inherit; padding: .2rem .4rem; }
input[type=number] { width: 6rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: .8rem; color: var(--muted); font-weight: 600; position: sticky; top: 0; background: Canvas; }
td { font-variant-numeric: tabular-nums; }
td.diag { max-width: 36rem; overflow-wrap: anywhere; font-size: .85rem; }
td.nowrap { white-space: nowrap; }
.t-hard { color: var(--hard); font-weight: 600; }
.t-soft { color: var(--soft); }
#error { color: var(--hard); min-height: 1.2em; }
#story { border: 1px solid var(--line); border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
#story dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; }
#story dt { color: var(--muted); }
#story dd { margin: 0; overflow-wrap: anywhere; }
#auth { border: 1px solid var(--hard); border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "bounceproxy-api-token";
const FILTERS = ["since", "recipient", "type", "reason", "source", "kind", "correlation", "message", "limit"];
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let timer = null;

async function api(path) {
  const headers = token ? { "Authorization": "Bearer " + token } : {};
  const response = await fetch(path, { headers: headers, cache: "no-store" });
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this API needs a token: enter it above");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || (path + ": HTTP " + response.status));
  return body;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(tr, text, cls) { const td = el("td", text, cls); tr.appendChild(td); return td; }
function pct(x) { return (100 * (x || 0)).toFixed(2) + " %"; }
function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

function messageLink(id) {
  const a = el("a", id);
  a.href = "#message=" + encodeURIComponent(id);
  return a;
}

async function loadStats() {
  const since = $("window").value;
  const s = await api("/api/stats?since=" + encodeURIComponent(since));
  const cards = [
    ["messages", s.messages], ["recipients", s.recipients], ["bounces", s.bounces],
    ["hard bounces", s.hard_bounces], ["complaints", s.complaints],
    ["bounce rate", pct(s.bounce_rate), s.bounce_rate >= 0.05],
    ["complaint rate", pct(s.complaint_rate), s.complaint_rate >= 0.001],
  ];
  const box = $("cards");
  box.replaceChildren();
  for (const [label, value, warn] of cards) {
    const card = el("div", null, warn ? "card warn" : "card");
    card.appendChild(el("dt", label));
    card.appendChild(el("dd", value));
    box.appendChild(card);
  }
  $("since-label").textContent = "since " + s.since;
}

function currentFilters() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = $("f-" + name).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function loadBounces() {
  const params = currentFilters();
  const data = await api("/api/bounces?" + params.toString());
  const body = $("bounces").tBodies[0];
  body.replaceChildren();
  for (const e of data.events) {
    const tr = document.createElement("tr");
    cell(tr, e.at, "nowrap");
    cell(tr, e.source);
    cell(tr, e.kind);
    const rcpt = cell(tr, "");
    if (e.recipient) {
      const a = el("a", e.recipient);
      a.href = "?recipient=" + encodeURIComponent(e.recipient) + "&since=" + encodeURIComponent($("f-since").value);
      rcpt.appendChild(a);
    }
    cell(tr, e.bounce_type, e.bounce_type === "hard" ? "t-hard" : e.bounce_type === "soft" ? "t-soft" : "");
    cell(tr, e.reason);
    cell(tr, e.status);
    cell(tr, e.smtp_code);
    cell(tr, e.correlation);
    const msg = cell(tr, "", "nowrap");
    if (e.relay_id) msg.appendChild(messageLink(e.relay_id));
    cell(tr, e.diagnostic, "diag");
    body.appendChild(tr);
  }
  $("count").textContent = data.events.length + (data.events.length === 1 ? " event" : " events");
  $("empty").hidden = data.events.length > 0;
}

function fillTable(table, rows, columns) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const c of columns) cell(tr, row[c], c === "diagnostic" || c === "reply" ? "diag" : "");
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "(none)", "muted");
    td.colSpan = columns.length;
    body.appendChild(tr);
  }
}

async function showStory(id) {
  const m = await api("/api/messages/" + encodeURIComponent(id));
  $("story-id").textContent = m.id;
  const dl = $("story-fields");
  dl.replaceChildren();
  for (const key of ["created_at", "status", "client_peer", "client_user", "sender", "header_from", "message_id",
                     "subject", "upstream_id", "verp_token", "size", "upstream_reply", "send_failure"]) {
    if (m[key] === null || m[key] === undefined || m[key] === "") continue;
    dl.appendChild(el("dt", key));
    dl.appendChild(el("dd", m[key]));
  }
  fillTable($("story-recipients"), m.recipients, ["address", "status", "reply"]);
  fillTable($("story-events"), m.events, ["at", "source", "kind", "recipient", "bounce_type", "reason", "status",
                                          "correlation", "diagnostic"]);
  $("story").hidden = false;
  $("story").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function route() {
  const match = location.hash.match(/^#message=(.+)$/);
  if (!match) { $("story").hidden = true; return; }
  try { await showStory(decodeURIComponent(match[1])); } catch (err) { showError(err); }
}

async function refresh() {
  try {
    await Promise.all([loadStats(), loadBounces()]);
    $("updated").textContent = "updated " + new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC";
    showError(null);
  } catch (err) { showError(err); }
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = $("auto").checked ? setInterval(refresh, 30000) : null;
}

function init() {
  const query = new URLSearchParams(location.search);
  for (const name of FILTERS) if (query.has(name)) $("f-" + name).value = query.get(name);
  if (query.has("window")) $("window").value = query.get("window");
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const params = currentFilters();
    if ($("window").value !== "24h") params.set("window", $("window").value);
    history.replaceState(null, "", "?" + params.toString() + location.hash);
    refresh();
  });
  $("reset").addEventListener("click", () => {
    for (const name of FILTERS) $("f-" + name).value = name === "since" ? "24h" : name === "limit" ? "100" : "";
    history.replaceState(null, "", location.pathname + location.hash);
    refresh();
  });
  $("window").addEventListener("change", () => loadStats().catch(showError));
  $("auto").addEventListener("change", schedule);
  $("close-story").addEventListener("click", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", location.pathname + location.search);
    $("story").hidden = true;
  });
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("auth").hidden = true;
    refresh();
    route();
  });
  window.addEventListener("hashchange", route);
  refresh();
  route();
  schedule();
}

init();
"""


def _option_list(values: list[str]) -> str:
    return "".join(f'<option value="{v}">{v or "any"}</option>' for v in ["", *values])


BODY = f"""
<header>
  <h1>bounceproxy</h1>
  <span class="muted" id="since-label"></span>
  <span class="muted" id="updated"></span>
</header>

<div id="auth" hidden>
  <form id="auth-form">
    <label>This API needs its bearer token ([api] token_env):
      <input type="password" id="token" autocomplete="off" size="40"></label>
    <button type="submit">Use token</button>
  </form>
</div>

<section class="window" aria-label="Summary">
  <label>Summary window
    <select id="window">
      <option value="1h">last hour</option><option value="24h" selected>last 24 hours</option>
      <option value="7d">last 7 days</option><option value="30d">last 30 days</option>
    </select></label>
  <dl class="cards" id="cards"></dl>
</section>

<form class="filters" id="filters" aria-label="Filters">
  <label>since <input id="f-since" value="24h" size="8" placeholder="1h, 7d, ISO"></label>
  <label>recipient <input id="f-recipient" type="search" size="24"></label>
  <label>type <select id="f-type">{_option_list(["hard", "soft", "undetermined"])}</select></label>
  <label>reason <input id="f-reason" size="12" placeholder="userunknown"></label>
  <label>source <select id="f-source">{_option_list(["sync", "async"])}</select></label>
  <label>kind <select id="f-kind">{_option_list(["bounce", "delay", "complaint", "autoreply", "delivered", "unknown"])}</select></label>
  <label>correlation <select id="f-correlation">{_option_list([c.value for c in Correlation])}</select></label>
  <label>message <input id="f-message" size="14"></label>
  <label>limit <input id="f-limit" type="number" min="1" max="1000000" value="100"></label>
  <button type="submit">Apply</button>
  <button type="button" id="reset">Reset</button>
  <label><span>auto-refresh</span><input type="checkbox" id="auto" checked></label>
</form>

<p id="error" role="alert"></p>

<section id="story" hidden aria-label="Message">
  <h2>Message <span id="story-id"></span> <a href="#" id="close-story">close</a></h2>
  <dl id="story-fields"></dl>
  <h3>Recipients</h3>
  <table id="story-recipients"><thead><tr><th>address</th><th>status</th><th>upstream reply</th></tr></thead><tbody></tbody></table>
  <h3>Events</h3>
  <table id="story-events"><thead><tr><th>at (UTC)</th><th>source</th><th>kind</th><th>recipient</th><th>type</th>
    <th>reason</th><th>status</th><th>correlation</th><th>diagnostic</th></tr></thead><tbody></tbody></table>
</section>

<h2>Bounces <span class="muted" id="count"></span></h2>
<table id="bounces">
  <thead><tr><th>at (UTC)</th><th>source</th><th>kind</th><th>recipient</th><th>type</th><th>reason</th>
    <th>status</th><th>code</th><th>correlation</th><th>message</th><th>diagnostic</th></tr></thead>
  <tbody></tbody>
</table>
<p class="muted" id="empty" hidden>No events match these filters.</p>
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bounceproxy</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
{BODY}
<script>{SCRIPT}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
