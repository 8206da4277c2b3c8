"""The dashboard: one page (no external assets) whose script, style and chart library are served from
/static/ on the same origin (proxy/api/static: Chart.js vendored with its licence, no build step).

It holds no data itself: the script reads /api/*. Data from the bounce log (diagnostic texts come
from strangers' mail servers) is only ever put into the page as text, never as HTML; the
Content-Security-Policy allows scripts and styles from this origin only, and no inline code at all.
"""
from __future__ import annotations

from html import escape

from proxy.model import Correlation, Kind, MessageStatus


def _option_list(values: list[str]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v) or "any"}</option>' for v in ["", *values])


def _table(table_id: str, headings: list[str]) -> str:
    return (f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in headings)
            + "</tr></thead><tbody></tbody></table>")


def _chart(name: str, caption: str) -> str:
    return (f'<figure><figcaption>{escape(caption)}</figcaption>'
            f'<div class="chart"><canvas id="chart-{name}" role="img" aria-label="{escape(caption)}"></canvas></div></figure>')


BODY = f"""
<header>
  <h1>bounceproxy</h1>
  <nav><a href="#summary">summary</a><a href="#identities">identities</a><a href="#messages">messages</a>
    <a href="#bounces-section">bounces</a><a href="#suppressions">suppressions</a><a href="#inbound">to look at</a>
    <a href="/api/openapi.json">API</a></nav>
  <span class="muted" id="since-label"></span>
  <span class="muted" id="updated"></span>
  <label class="muted"><input type="checkbox" id="auto" checked> auto-refresh</label>
</header>

<div id="auth" hidden>
  <form id="auth-form">
    <label>This API needs its bearer token ([api] token_env):
      <input type="password" id="token" autocomplete="off" size="40"></label>
    <button type="submit">Use token</button>
  </form>
</div>

<p id="error" role="alert"></p>
<p id="note" role="status"></p>

<section id="summary" class="window" aria-label="Summary">
  <label>Window
    <select id="window">
      <option value="1h">last hour</option><option value="24h" selected>last 24 hours</option>
      <option value="7d">last 7 days</option><option value="30d">last 30 days</option>
    </select></label>
  <dl class="cards" id="cards"></dl>
  <div class="charts">
    {_chart("volume", "Sending volume: messages and recipients")}
    {_chart("bounces", "Bounces by type, and complaints")}
    {_chart("bounce-rate", "Hard bounce rate against SES's review and pause lines")}
    {_chart("complaint-rate", "Complaint rate against SES's review and pause lines")}
  </div>
  <p class="muted" id="charts-note"></p>
</section>

<section id="identities" aria-label="Identities">
  <h2>Reputation per sending identity</h2>
  {_table("identities-table", ["identity", "recipients", "hard bounces", "hard bounce rate", "complaints",
                               "complaint rate", "paused"])}
</section>

<section id="story" hidden aria-label="Message">
  <h2>Message <span id="story-id"></span> <a href="#" id="close-story">close</a></h2>
  <dl id="story-fields"></dl>
  <h3>Recipients</h3>
  {_table("story-recipients", ["address", "status", "upstream reply"])}
  <h3>Events</h3>
  {_table("story-events", ["at (UTC)", "source", "kind", "recipient", "type", "reason", "status", "correlation",
                           "diagnostic"])}
</section>

<section id="messages" aria-label="Messages">
  <h2>Messages</h2>
  <form class="inline" id="messages-filters">
    <label>since <input id="m-since" value="24h" size="8" placeholder="1h, 7d, ISO"></label>
    <label>recipient <input id="m-recipient" type="search" size="24"></label>
    <label>status <select id="m-status">{_option_list([s.value for s in MessageStatus])}</select></label>
    <label>sender <input id="m-sender" type="search" size="24"></label>
    <button type="submit">Apply</button>
  </form>
  {_table("messages-table", ["created (UTC)", "message", "status", "sender", "recipients", "subject", "upstream reply"])}
  <button type="button" id="messages-more" hidden>more</button>
</section>

<section id="bounces-section" aria-label="Bounces">
  <h2>Bounces <span class="muted" id="count"></span></h2>
  <form class="filters" id="filters" aria-label="Filters">
    <label>since <input id="f-since" value="24h" size="8" placeholder="1h, 7d, ISO"></label>
    <label>recipient <input id="f-recipient" type="search" size="24"></label>
    <label>type <select id="f-type">{_option_list(["hard", "soft", "undetermined"])}</select></label>
    <label>reason <input id="f-reason" size="12" placeholder="userunknown"></label>
    <label>source <select id="f-source">{_option_list(["sync", "async", "ses"])}</select></label>
    <label>kind <select id="f-kind">{_option_list([k.value for k in Kind])}</select></label>
    <label>correlation <select id="f-correlation">{_option_list([c.value for c in Correlation])}</select></label>
    <label>message <input id="f-message" size="14"></label>
    <label>limit <input id="f-limit" type="number" min="1" max="1000000" value="100"></label>
    <button type="submit">Apply</button>
    <button type="button" id="reset">Reset</button>
  </form>
  {_table("bounces", ["at (UTC)", "source", "kind", "recipient", "type", "reason", "status", "code", "correlation",
                      "message", "diagnostic"])}
  <p class="muted" id="empty" hidden>No events match these filters.</p>
  <button type="button" id="bounces-more" hidden>more</button>
</section>

<section id="suppressions" aria-label="Suppressions">
  <h2>Suppression list</h2>
  <form class="inline" id="s-search-form">
    <label>search <input id="s-search" type="search" size="24" placeholder="part of an address"></label>
    <button type="submit">Search</button>
  </form>
  <form class="inline" id="s-add-form">
    <label>address <input id="s-address" type="email" size="28" required></label>
    <label>reason <input id="s-reason" size="12" value="manual"></label>
    <label>expires after days (0: never) <input id="s-days" type="number" min="0" step="any" value="0"></label>
    <button type="submit">Suppress</button>
    <button type="button" id="s-export">Export CSV (SES)</button>
    <label class="file">import CSV (SES) <input type="file" id="s-import" accept=".csv,text/csv"></label>
  </form>
  {_table("suppressions-table", ["address", "scope", "kind", "reason", "since (UTC)", "expires", ""])}
  <button type="button" id="suppressions-more" hidden>more</button>
</section>

<section id="inbound" aria-label="To look at">
  <h2>To look at</h2>
  <h3>Parse failures: mails the bounce MX kept but could not read</h3>
  {_table("failures-table", ["id", "received (UTC)", "peer", "envelope sender", "size", "error", ""])}
  <h3>Foreign-recipient attempts: reports naming addresses their message never went to (never acted on)</h3>
  {_table("foreign-table", ["at (UTC)", "source", "kind", "address named", "message", "inbound mail"])}
  <h3>Webhooks</h3>
  <p id="webhooks-counts" class="muted"></p>
</section>
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bounceproxy</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/chart.umd.min.js" defer></script>
<script src="/static/dashboard.js" defer></script>
</head>
<body>
{BODY}
</body>
</html>
"""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
