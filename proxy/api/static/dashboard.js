// The dashboard's script: reads /api/* and draws it. Data from the bounce log (diagnostic texts come
// from strangers' mail servers) only ever goes into the page as text, never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "bounceproxy-api-token";
  const FILTERS = ["since", "recipient", "type", "reason", "source", "kind", "correlation", "message", "limit"];
  const BUCKETS = { "1h": "5m", "24h": "1h", "7d": "6h", "30d": "1d" };
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let timer = null;
  const cursors = {};  // list name -> next_cursor of its last page
  // Tests and curious users read the charts' data here (window.bounceproxy.charts.volume.data...).
  const state = { charts: {}, loads: 0, activity: null };
  window.bounceproxy = state;

  async function api(path, options) {
    options = options || {};
    const headers = Object.assign({}, options.headers || {});
    if (token) headers["Authorization"] = "Bearer " + token;
    const response = await fetch(path, Object.assign({}, options, { headers: headers, cache: "no-store" }));
    if (response.status === 401) {
      $("auth").hidden = false;
      throw new Error("this API needs a token: enter it above");
    }
    if (options.raw && response.ok) return response;
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
  function pct(x, digits) { return x === null || x === undefined ? "–" : (100 * x).toFixed(digits === undefined ? 2 : digits) + " %"; }
  function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }
  function showNote(text) { $("note").textContent = text || ""; }

  function messageLink(id) {
    const a = el("a", id);
    a.href = "#message=" + encodeURIComponent(id);
    return a;
  }

  function emptyRow(body, columns, text) {
    const tr = document.createElement("tr");
    const td = cell(tr, text || "(none)", "muted");
    td.colSpan = columns;
    body.appendChild(tr);
  }

  async function download(path, filename) {
    const response = await api(path, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = el("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // -- summary, charts, identities ------------------------------------------------------------
  async function loadStats() {
    const since = $("window").value;
    const s = await api("/api/stats?since=" + encodeURIComponent(since));
    const t = state.activity ? state.activity.thresholds : null;
    const cards = [
      ["messages", s.messages], ["recipients", s.recipients], ["bounces", s.bounces],
      ["hard bounces", s.hard_bounces], ["complaints", s.complaints],
      ["hard bounce rate", pct(s.hard_bounce_rate), t && s.hard_bounce_rate >= t.hard_bounce_rate.review],
      ["complaint rate", pct(s.complaint_rate, 3), t && s.complaint_rate >= t.complaint_rate.review],
      ["foreign recipients", s.foreign_recipients],
    ];
    const q = s.queue;
    if (q && (q.queued || q.held)) {  // spool mode: what waits to go upstream, and for how long
      cards.push(["queued", q.queued + " (" + q.recipients + " recipients)"], ["held", q.held, q.held > 0],
                 ["oldest queued", Math.round(q.oldest_age_seconds) + " s", q.oldest_age_seconds > 3600]);
    }
    const box = $("cards");
    box.replaceChildren();
    for (const [label, value, warn] of cards) {
      const card = el("div", null, warn ? "card warn" : "card");
      card.appendChild(el("dt", label));
      card.appendChild(el("dd", value));
      box.appendChild(card);
    }
    $("since-label").textContent = "since " + s.since;
    const body = $("identities-table").tBodies[0];
    body.replaceChildren();
    for (const i of s.identities) {
      const tr = document.createElement("tr");
      cell(tr, i.identity);
      cell(tr, i.recipients);
      cell(tr, i.hard_bounces);
      cell(tr, pct(i.hard_bounce_rate), t ? level(i.hard_bounce_rate, t.hard_bounce_rate) : "");
      cell(tr, i.complaints);
      cell(tr, pct(i.complaint_rate, 3), t ? level(i.complaint_rate, t.complaint_rate) : "");
      const paused = cell(tr, i.paused || "", i.paused ? "t-hard" : "");
      if (i.paused) {
        const b = el("button", "resume");
        b.type = "button";
        b.addEventListener("click", () => resume(i.identity).catch(showError));
        paused.appendChild(document.createTextNode(" "));
        paused.appendChild(b);
      }
      body.appendChild(tr);
    }
    if (!s.identities.length) emptyRow(body, 7, "(nothing sent in this window)");
  }

  function level(rate, line) {
    if (rate >= line.pause) return "t-hard";
    if (rate >= line.review) return "t-soft";
    return "";
  }

  async function resume(identity) {
    await api("/api/identities/" + encodeURIComponent(identity) + "/resume", { method: "POST" });
    showNote("resumed " + identity);
    await loadStats();
  }

  function lineAt(label, value, n, color) {
    return { label: label, data: new Array(n).fill(value), borderColor: color, borderDash: [6, 4], borderWidth: 1.5,
             pointRadius: 0, fill: false, type: "line" };
  }

  function chart(name, config) {
    const existing = state.charts[name];
    if (existing) {
      existing.data = config.data;
      existing.update("none");
      return existing;
    }
    config.options = Object.assign({
      animation: false, responsive: true, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
    }, config.options || {});
    state.charts[name] = new window.Chart($("chart-" + name), config);
    return state.charts[name];
  }

  async function loadActivity() {
    const since = $("window").value;
    const a = await api("/api/activity?since=" + encodeURIComponent(since) + "&bucket=" + BUCKETS[since]);
    state.activity = a;
    const labels = a.buckets.map((b) => b.start.slice(5, 16).replace("T", " "));
    const n = labels.length;
    const col = (key) => a.buckets.map((b) => b[key]);
    const percent = (key) => a.buckets.map((b) => (b[key] === null ? null : +(100 * b[key]).toFixed(4)));
    const hb = a.thresholds.hard_bounce_rate, cr = a.thresholds.complaint_rate;
    if (!window.Chart) { $("charts-note").textContent = "the chart library did not load"; return; }
    chart("volume", { type: "bar", data: { labels: labels, datasets: [
      { label: "messages", data: col("messages"), backgroundColor: "#2e86c1" },
      { label: "recipients", data: col("recipients"), backgroundColor: "#85c1e9" }] },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } } });
    chart("bounces", { type: "bar", data: { labels: labels, datasets: [
      { label: "hard", data: col("hard"), backgroundColor: "#c0392b", stack: "b" },
      { label: "soft", data: col("soft"), backgroundColor: "#e67e22", stack: "b" },
      { label: "undetermined", data: col("undetermined"), backgroundColor: "#aab7b8", stack: "b" },
      { label: "complaints", data: col("complaints"), backgroundColor: "#8e44ad", stack: "c" }] },
      options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } } });
    chart("bounce-rate", { type: "line", data: { labels: labels, datasets: [
      { label: "hard bounce rate %", data: percent("hard_bounce_rate"), borderColor: "#c0392b", backgroundColor: "#c0392b",
        spanGaps: true },
      lineAt("SES review " + pct(hb.review, 0), 100 * hb.review, n, "#b9770e"),
      lineAt("SES pause " + pct(hb.pause, 0), 100 * hb.pause, n, "#7b241c")] },
      options: { scales: { y: { beginAtZero: true, suggestedMax: 100 * hb.pause * 1.2 } } } });
    chart("complaint-rate", { type: "line", data: { labels: labels, datasets: [
      { label: "complaint rate %", data: percent("complaint_rate"), borderColor: "#8e44ad", backgroundColor: "#8e44ad",
        spanGaps: true },
      lineAt("SES review " + pct(cr.review, 1), 100 * cr.review, n, "#b9770e"),
      lineAt("SES pause " + pct(cr.pause, 1), 100 * cr.pause, n, "#7b241c")] },
      options: { scales: { y: { beginAtZero: true, suggestedMax: 100 * cr.pause * 1.2 } } } });
    $("charts-note").textContent = "per " + BUCKETS[since] + "; rates are per bucket, of the recipients sent to in it";
  }

  // -- messages and a message's story -----------------------------------------------------------
  function messageParams() {
    const params = new URLSearchParams();
    for (const name of ["since", "recipient", "status", "sender"]) {
      const value = $("m-" + name).value.trim();
      if (value) params.set(name, value);
    }
    params.set("limit", "50");
    return params;
  }

  async function loadMessages(more) {
    const params = messageParams();
    if (more && cursors.messages) params.set("cursor", cursors.messages);
    const data = await api("/api/messages?" + params.toString());
    const body = $("messages-table").tBodies[0];
    if (!more) body.replaceChildren();
    for (const m of data.messages) {
      const tr = document.createElement("tr");
      cell(tr, m.created_at, "nowrap");
      cell(tr, "", "nowrap").appendChild(messageLink(m.id));
      cell(tr, m.status, m.status === "sent" ? "" : m.status === "partial" ? "t-soft" : "t-hard");
      cell(tr, m.sender);
      cell(tr, m.recipients.join(", "), "diag");
      cell(tr, m.subject);
      cell(tr, m.upstream_reply, "diag");
      body.appendChild(tr);
    }
    if (!more && !data.messages.length) emptyRow(body, 7);
    cursors.messages = data.next_cursor;
    $("messages-more").hidden = !data.next_cursor;
  }

  function fillTable(table, rows, columns) {
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const c of columns) cell(tr, row[c], c === "diagnostic" || c === "reply" ? "diag" : "");
      body.appendChild(tr);
    }
    if (!rows.length) emptyRow(body, columns.length);
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
    $("story").scrollIntoView({ block: "start" });
  }

  async function route() {
    const match = location.hash.match(/^#message=(.+)$/);
    if (!match) { $("story").hidden = true; return; }
    try { await showStory(decodeURIComponent(match[1])); } catch (err) { showError(err); }
  }

  // -- bounces ----------------------------------------------------------------------------------
  function currentFilters() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = $("f-" + name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function eventRow(e) {
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
    return tr;
  }

  async function loadBounces(more) {
    const params = currentFilters();
    if (more && cursors.bounces) params.set("cursor", cursors.bounces);
    const data = await api("/api/bounces?" + params.toString());
    const body = $("bounces").tBodies[0];
    if (!more) body.replaceChildren();
    for (const e of data.events) body.appendChild(eventRow(e));
    const shown = body.rows.length;
    $("count").textContent = shown + (shown === 1 ? " event" : " events") + (data.next_cursor ? " (more)" : "");
    $("empty").hidden = shown > 0;
    cursors.bounces = data.next_cursor;
    $("bounces-more").hidden = !data.next_cursor;
  }

  // -- the suppression list ---------------------------------------------------------------------
  async function loadSuppressions(more) {
    const params = new URLSearchParams({ limit: "50" });
    const search = $("s-search").value.trim();
    if (search) params.set("search", search);
    if (more && cursors.suppressions) params.set("cursor", cursors.suppressions);
    const data = await api("/api/suppressions?" + params.toString());
    const body = $("suppressions-table").tBodies[0];
    if (!more) body.replaceChildren();
    for (const s of data.suppressions) {
      const tr = document.createElement("tr");
      tr.dataset.address = s.address;
      cell(tr, s.address);
      cell(tr, s.scope || "(all senders)", s.scope ? "" : "muted");
      cell(tr, s.kind, s.kind === "hard" || s.kind === "complaint" ? "t-hard" : "");
      cell(tr, s.reason);
      cell(tr, s.created_at, "nowrap");
      cell(tr, s.expires_at || "never", "nowrap");
      const b = el("button", "remove", "remove");
      b.type = "button";
      b.addEventListener("click", () => removeSuppression(s).catch(showError));
      cell(tr, "").appendChild(b);
      body.appendChild(tr);
    }
    if (!more && !data.suppressions.length) emptyRow(body, 7, search ? "(no address contains that)" : "(the list is empty)");
    cursors.suppressions = data.next_cursor;
    $("suppressions-more").hidden = !data.next_cursor;
  }

  async function removeSuppression(s) {
    if (!window.confirm("Take " + s.address + " off the suppression list? The next message to it is sent.")) return;
    const query = s.scope ? "?sender_domain=" + encodeURIComponent(s.scope) : "";
    await api("/api/suppressions/" + encodeURIComponent(s.address) + query, { method: "DELETE" });
    showNote("removed " + s.address);
    await loadSuppressions(false);
  }

  async function addSuppression() {
    const address = $("s-address").value.trim();
    const days = parseFloat($("s-days").value || "0");
    const body = { address: address, reason: $("s-reason").value.trim() || "manual", days: isNaN(days) ? 0 : days };
    const answer = await api("/api/suppressions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("s-address").value = "";
    showNote("suppressed " + answer.addresses.join(", "));
    await loadSuppressions(false);
  }

  async function importSuppressions(file) {
    const answer = await api("/api/suppressions/import", {
      method: "POST", headers: { "Content-Type": "text/csv" }, body: await file.text() });
    showNote("imported " + answer.imported + " address(es)");
    await loadSuppressions(false);
  }

  // -- what the bounce MX could not read, and reports naming strangers --------------------------
  async function loadInbound() {
    const failed = await api("/api/inbound?state=failed&limit=20");
    const body = $("failures-table").tBodies[0];
    body.replaceChildren();
    for (const r of failed.inbound) {
      const tr = document.createElement("tr");
      cell(tr, r.id);
      cell(tr, r.received_at, "nowrap");
      cell(tr, r.peer);
      cell(tr, r.mail_from || "<>");
      cell(tr, r.size);
      cell(tr, r.error, "diag");
      const b = el("button", "raw");
      b.type = "button";
      b.addEventListener("click", () => download("/api/inbound/" + r.id + "/raw", "inbound-" + r.id + ".eml").catch(showError));
      cell(tr, "").appendChild(b);
      body.appendChild(tr);
    }
    if (!failed.inbound.length) emptyRow(body, 7);
    const foreign = await api("/api/bounces?correlation=foreign_recipient&limit=20");
    const fbody = $("foreign-table").tBodies[0];
    fbody.replaceChildren();
    for (const e of foreign.events) {
      const tr = document.createElement("tr");
      cell(tr, e.at, "nowrap");
      cell(tr, e.source);
      cell(tr, e.kind);
      cell(tr, e.recipient);
      const msg = cell(tr, "", "nowrap");
      if (e.relay_id) msg.appendChild(messageLink(e.relay_id));
      cell(tr, e.inbound_id);
      fbody.appendChild(tr);
    }
    if (!foreign.events.length) emptyRow(fbody, 6);
  }

  async function loadWebhooks() {
    const w = await api("/api/webhooks?limit=1");
    const parts = [];
    for (const name of ["pending", "delivered", "dead"]) {
      const c = w.counts[name];
      parts.push(name + " " + (c ? c.count : 0) + (c && c.oldest && name !== "delivered" ? " (oldest " + c.oldest + ")" : ""));
    }
    $("webhooks-counts").textContent = parts.join(", ");
  }

  // -- refresh ----------------------------------------------------------------------------------
  async function refresh() {
    try {
      await loadActivity();
      await Promise.all([loadStats(), loadBounces(false), loadMessages(false), loadSuppressions(false),
                         loadInbound(), loadWebhooks()]);
      $("updated").textContent = "updated " + new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC";
      showError(null);
    } catch (err) { showError(err); }
    state.loads += 1;
    document.body.dataset.loads = String(state.loads);
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = $("auto").checked ? setInterval(refresh, 30000) : null;
  }

  function on(id, event, fn) {
    $(id).addEventListener(event, (ev) => {
      if (event === "submit") ev.preventDefault();
      Promise.resolve(fn(ev)).catch(showError);
    });
  }

  function init() {
    const query = new URLSearchParams(location.search);
    for (const name of FILTERS) if (query.has(name)) $("f-" + name).value = query.get(name);
    if (query.has("window") && BUCKETS[query.get("window")]) $("window").value = query.get("window");
    on("filters", "submit", () => {
      const params = currentFilters();
      if ($("window").value !== "24h") params.set("window", $("window").value);
      history.replaceState(null, "", "?" + params.toString() + location.hash);
      return loadBounces(false);
    });
    on("reset", "click", () => {
      for (const name of FILTERS) $("f-" + name).value = name === "since" ? "24h" : name === "limit" ? "100" : "";
      history.replaceState(null, "", location.pathname + location.hash);
      return loadBounces(false);
    });
    on("bounces-more", "click", () => loadBounces(true));
    on("messages-filters", "submit", () => loadMessages(false));
    on("messages-more", "click", () => loadMessages(true));
    on("s-search-form", "submit", () => loadSuppressions(false));
    on("s-add-form", "submit", addSuppression);
    on("suppressions-more", "click", () => loadSuppressions(true));
    on("s-export", "click", () => download("/api/suppressions/export", "suppressions.csv"));
    on("s-import", "change", (ev) => {
      const file = ev.target.files[0];
      ev.target.value = "";
      return file ? importSuppressions(file) : null;
    });
    on("window", "change", () => loadActivity().then(loadStats));
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
})();
