"""The status page: one self-contained HTML document (no external assets) whose script polls
``/admin/summary`` and ``/admin/backends`` every second and redraws.

The document itself holds no data, so it is served without a token; the script sends the
token it was given in the URL fragment (``/status#token=...``, never sent to the server or
written to its logs) or typed into the form it shows on a 401, kept for the browser session.
Names from the config reach the page through ``textContent`` only, never as markup.
"""

from __future__ import annotations

__all__ = ["STATUS_PAGE", "POLL_INTERVAL_MS"]

POLL_INTERVAL_MS = 1000

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lbd status</title>
<style>
  :root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #57606a; --line: #d0d7de; }
  body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1f2328; }
  h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
  h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; }
  .tiles { display: flex; flex-wrap: wrap; gap: .75rem; margin: .75rem 0; }
  .tile { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .8rem; min-width: 8rem; }
  .tile b { display: block; font-size: 1.25rem; }
  .tile span { color: var(--muted); font-size: .85rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; font-size: .85rem; }
  td.reason { white-space: normal; color: var(--muted); }
  .state-healthy, .breaker-closed { color: var(--ok); }
  .state-unhealthy, .state-ejected, .breaker-open { color: var(--bad); font-weight: 600; }
  .state-drained, .breaker-half_open { color: var(--warn); font-weight: 600; }
  #error { color: var(--bad); }
  #login[hidden] { display: none; }
  .muted { color: var(--muted); }
</style>
</head>
<body>
<h1>lbd <span id="version" class="muted"></span></h1>
<div id="error" role="alert"></div>
<form id="login" hidden>
  <label>Admin token <input id="token" type="password" autocomplete="off"></label>
  <button type="submit">Show</button>
</form>
<div class="tiles">
  <div class="tile"><b id="rate">-</b><span>requests/s</span></div>
  <div class="tile"><b id="requests">-</b><span>requests</span></div>
  <div class="tile"><b id="connections">-</b><span>client connections</span></div>
  <div class="tile"><b id="cache-ratio">-</b><span>cache hit ratio</span></div>
  <div class="tile"><b id="reload">-</b><span>last reload</span></div>
  <div class="tile"><b id="uptime">-</b><span>up</span></div>
</div>
<div id="pools"></div>
<p class="muted">Updated <span id="updated">never</span>; every POLL_MS ms.</p>
<script>
"use strict";
const POLL_MS = POLL_MS_VALUE;
const COLUMNS = ["backend", "address", "state", "reason", "breaker", "in flight", "weight",
                 "requests", "failures", "probe latency"];
let token = sessionStorage.getItem("lbd-admin-token") || "";
let previous = null;

(function takeTokenFromFragment() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    token = decodeURIComponent(match[1]);
    sessionStorage.setItem("lbd-admin-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("lbd-admin-token", token);
  poll();
});

async function getJson(path) {
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const response = await fetch(path, {headers: headers, cache: "no-store"});
  if (response.status === 401) {
    document.getElementById("login").hidden = false;
    throw new Error("the admin API wants a token");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function text(id, value) { document.getElementById(id).textContent = value; }

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function seconds(value) {
  if (value === null || value === undefined) return "-";
  return value < 1 ? (value * 1000).toFixed(1) + " ms" : value.toFixed(2) + " s";
}

function duration(total) {
  const s = Math.floor(total), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m + "m " + (s % 60) + "s";
}

function breakerText(breaker) {
  if (!breaker) return "none";
  let out = breaker.state;
  if (breaker.reopens_in_s) out += " (" + breaker.reopens_in_s.toFixed(1) + " s)";
  return out;
}

function reasonText(backend) {
  const parts = [];
  if (backend.reason) parts.push(backend.reason);
  if (backend.ejected_for_s) parts.push("back in " + backend.ejected_for_s.toFixed(1) + " s");
  if (backend.breaker && backend.breaker.reason) parts.push("breaker: " + backend.breaker.reason);
  return parts.join("; ");
}

function backendRow(backend) {
  const row = document.createElement("tr");
  row.dataset.backend = backend.name;
  cell(row, backend.name, "name");
  cell(row, backend.address);
  cell(row, backend.state, "state state-" + backend.state);
  cell(row, reasonText(backend), "reason");
  const breaker = backend.breaker ? backend.breaker.state : "none";
  cell(row, breakerText(backend.breaker), "breaker breaker-" + breaker);
  cell(row, backend.inflight);
  const ramping = backend.weight !== backend.config_weight;  // slow start
  cell(row, ramping ? backend.weight.toFixed(2) + " / " + backend.config_weight : backend.weight);
  cell(row, backend.requests);
  cell(row, backend.failures);
  cell(row, seconds(backend.latency_s));
  return row;
}

function poolSection(name, pool, totals) {
  const section = document.createElement("section");
  section.dataset.pool = name;
  const title = document.createElement("h2");
  const usable = totals ? totals.usable + "/" + totals.backends + " usable" : "";
  title.textContent = "pool " + name;
  const detail = document.createElement("span");
  detail.className = "muted";
  detail.textContent = " " + [pool.algorithm, usable, pool.panic ? "PANIC: routing to all" : "",
    pool.queue ? "queue " + pool.queue.waiting + "/" + pool.queue.size : ""].filter(Boolean).join(" \\u00b7 ");
  title.appendChild(detail);
  section.appendChild(title);
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const column of COLUMNS) {
    const th = document.createElement("th");
    th.textContent = column;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const backend of pool.backends) body.appendChild(backendRow(backend));
  section.appendChild(table);
  return section;
}

function showSummary(summary) {
  text("version", summary.version);
  text("requests", summary.requests);
  text("connections", summary.connections);
  text("uptime", duration(summary.uptime_s));
  const ratio = summary.cache.hit_ratio;
  text("cache-ratio", ratio === null ? "no lookups" : (ratio * 100).toFixed(1) + "%");
  const last = summary.last_reload;
  text("reload", last === null ? "none" : last.ok ? "ok " + new Date(last.applied_at * 1000).toLocaleTimeString()
       : "FAILED: " + last.errors.join("; "));
  if (previous !== null && summary.now > previous.now) {
    text("rate", ((summary.requests - previous.requests) / (summary.now - previous.now)).toFixed(1));
  }
  previous = summary;
}

function showBackends(view, summary) {
  const pools = document.getElementById("pools");
  pools.replaceChildren(...Object.entries(view.pools).map(
    ([name, pool]) => poolSection(name, pool, summary.pools[name])));
}

async function poll() {
  try {
    const [summary, view] = await Promise.all([getJson("/admin/summary"), getJson("/admin/backends")]);
    showSummary(summary);
    showBackends(view, summary);
    document.getElementById("login").hidden = true;
    text("error", "");
    text("updated", new Date().toLocaleTimeString());
  } catch (error) {
    text("error", String(error.message || error));
  }
}

poll();
setInterval(poll, POLL_MS);
</script>
</body>
</html>
""".replace("POLL_MS_VALUE", str(POLL_INTERVAL_MS)).replace("every POLL_MS ms", f"every {POLL_INTERVAL_MS} ms")
