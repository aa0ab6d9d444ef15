// The payrail dashboard: polls /metrics and /v1/admin/status every second (same origin; the
// browser sends the Basic credentials it authenticated the page with) and shows them.
// Everything from the server is written with textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 8000;
// Routes whose latency is not the merchants': the dashboard's own polls and admin calls.
const NOT_MERCHANT_ROUTES = /^(\/metrics|\/v1\/admin\/|\/healthz|\/readyz|other)/;

let previous = null; // the last metrics sample: {at, requests, creates, buckets}

// ---- Prometheus text format ------------------------------------------------------------

/** Parses `name{a="b",...} value` lines into [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    let name, labels = {}, rest;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    if (brace !== -1 && (space === -1 || brace < space)) {
      name = line.slice(0, brace);
      let i = brace + 1;
      while (i < line.length && line[i] !== "}") {
        const eq = line.indexOf("=", i);
        if (eq === -1) break;
        const key = line.slice(i, eq).replace(/^[\s,]+/, "");
        let j = eq + 2; // past `="`
        let value = "";
        while (j < line.length && line[j] !== '"') {
          if (line[j] === "\\" && j + 1 < line.length) {
            const c = line[j + 1];
            value += c === "n" ? "\n" : c;
            j += 2;
          } else {
            value += line[j];
            j += 1;
          }
        }
        labels[key] = value;
        i = j + 1;
        if (line[i] === ",") i += 1;
      }
      rest = line.slice(line.indexOf("}", i) + 1).trim();
    } else {
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const value = parseFloat(rest.split(/\s+/)[0]);
    if (!Number.isNaN(value)) samples.push({ name, labels, value });
  }
  return samples;
}

/** The counters the page needs, summed over the series that matter. */
function digest(samples) {
  let requests = 0, creates = 0;
  const buckets = new Map(); // le -> cumulative count, over merchant routes
  for (const s of samples) {
    if (s.name === "payrail_http_requests_total") {
      requests += s.value;
      if (s.labels.method === "POST" && s.labels.route === "/v1/payments" &&
          /^2\d\d$/.test(s.labels.status || "")) {
        creates += s.value;
      }
    } else if (s.name === "payrail_http_request_duration_seconds_bucket" &&
               !NOT_MERCHANT_ROUTES.test(s.labels.route || "")) {
      const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
      buckets.set(le, (buckets.get(le) || 0) + s.value);
    }
  }
  return { requests, creates, buckets };
}

/**
 * histogram_quantile over cumulative bucket counts [[le, count]] sorted by le: the rank's
 * bucket, linearly interpolated from its lower bound; the highest finite bound when the
 * rank lies in +Inf. null without observations.
 */
function quantile(q, cumulative) {
  if (cumulative.length === 0) return null;
  const total = cumulative[cumulative.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0, lowerCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      if (inBucket <= 0) return le;
      return lowerBound + (le - lowerBound) * ((rank - lowerCount) / inBucket);
    }
    lowerBound = le;
    lowerCount = count;
  }
  return lowerBound;
}

/** Bucket deltas between two samples, cumulative, sorted by le. */
function bucketDelta(now, before) {
  const les = [...now.keys()].sort((a, b) => a - b);
  return les.map((le) => [le, Math.max(0, now.get(le) - (before.get(le) || 0))]);
}

// ---- DOM helpers -----------------------------------------------------------------------

function byId(id) { return document.getElementById(id); }

function setText(id, value) {
  const el = byId(id);
  if (el) el.textContent = value === null || value === undefined ? "–" : String(value);
}

function setState(id, text, level) {
  const el = byId(id);
  if (!el) return;
  el.textContent = text;
  el.classList.remove("state-ok", "state-warn", "state-bad");
  if (level) el.classList.add("state-" + level);
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

/** Replaces a table's body with one row per item (or one "none" row). */
function fillTable(tableId, items, columns, testid, fill) {
  const body = byId(tableId).querySelector("tbody");
  const rows = [];
  for (const item of items) {
    const tr = document.createElement("tr");
    tr.dataset.testid = testid;
    fill(tr, item);
    rows.push(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none", "empty");
    td.colSpan = columns;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function showError(id, message) {
  const el = byId(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function fmt(n, digits) {
  return n === null || n === undefined || Number.isNaN(n) ? "–" : n.toFixed(digits);
}

// ---- rendering ---------------------------------------------------------------------------

function renderMetrics(text, at) {
  const now = digest(parseMetrics(text));
  now.at = at;
  if (previous && at > previous.at) {
    const seconds = (at - previous.at) / 1000;
    setText("requests-per-second", fmt(Math.max(0, now.requests - previous.requests) / seconds, 1));
    setText("creates-per-second", fmt(Math.max(0, now.creates - previous.creates) / seconds, 1));
    const delta = bucketDelta(now.buckets, previous.buckets);
    for (const [q, id] of [[0.5, "latency-p50-ms"], [0.95, "latency-p95-ms"], [0.99, "latency-p99-ms"]]) {
      const s = quantile(q, delta);
      setText(id, s === null ? "–" : fmt(s * 1000, 1));
    }
  }
  previous = now;
}

function renderStatus(s) {
  setText("node-id", s.node_id === null ? "single node" : "node " + s.node_id);
  setState("ready", s.ready ? "ready" : "not ready", s.ready ? "ok" : "bad");
  const reasons = byId("reasons");
  reasons.replaceChildren(...(s.reasons || []).map((r) => {
    const li = document.createElement("li");
    li.textContent = r;
    return li;
  }));

  const j = s.journal;
  setState("journal-state", j.state, j.state === "ok" ? "ok" : j.state === "fallback" ? "warn" : "bad");
  setState("breaker", j.breaker, j.breaker === "closed" ? "ok" : j.breaker === "half_open" ? "warn" : "bad");
  setText("breaker-transitions", j.breaker_transitions);
  setText("partitions-in-fallback", j.partitions_in_fallback.length ? j.partitions_in_fallback.join(", ") : "none");

  const spool = s.spool;
  setText("spool-rows", spool.error ? "error" : spool.rows);
  setText("spool-max-rows", spool.max_rows);
  const oldest = (spool.partitions_in_fallback || []).reduce((m, d) => Math.max(m, d.oldest_age_ms), 0);
  setText("spool-oldest-ms", spool.rows > 0 ? oldest + " ms" : "–");

  const p = s.partitions;
  setText("partitions-owned", p.owned);
  setText("partitions-count", p.count);
  fillTable("partitions-table", p.owners, 5, "partition-row", (tr, o) => {
    tr.dataset.partition = o.partition;
    cell(tr, o.partition, "num");
    cell(tr, o.owner === null ? "this node" : o.owner);
    cell(tr, o.epoch, "num");
    cell(tr, o.held ? "yes" : "no");
    cell(tr, o.this_node ? "yes" : "no");
  });
  showError("owners-error", p.owners_error);

  const c = s.consumers;
  fillTable("lag-table", c.data, 5, "lag-row", (tr, consumer) => {
    tr.dataset.consumer = consumer.name;
    cell(tr, consumer.name);
    cell(tr, consumer.topic);
    cell(tr, consumer.lag_records, "num lag-records");
    cell(tr, consumer.applied_since_start, "num");
    cell(tr, consumer.lag_p99_ms_at_most, "num");
  });
  showError("lag-error", c.error);

  const d = s.dead_letters;
  setText("dead-letters-total", d.error ? "error" : d.total);
  setText("dead-letters-pending", d.error ? "error" : d.pending);
  fillTable("dead-letters-table", d.recent, 7, "dead-letter-row", (tr, letter) => {
    tr.dataset.consumer = letter.consumer;
    cell(tr, new Date(letter.created_at).toLocaleString());
    cell(tr, letter.consumer);
    cell(tr, letter.partition, "num");
    cell(tr, letter.offset, "num");
    cell(tr, letter.event_type);
    cell(tr, letter.error, "error");
    cell(tr, letter.replayed_at ? "yes" : "no");
  });
  showError("dead-letters-error", d.error);
}

// ---- polling -----------------------------------------------------------------------------

async function get(path, as) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    // location.origin carries no credentials; the browser adds its Basic-auth ones.
    const response = await fetch(new URL(path, location.origin), {
      credentials: "same-origin",
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
    return as === "json" ? await response.json() : await response.text();
  } catch (error) {
    if (controller.signal.aborted) throw new Error(path + " did not answer in " + FETCH_TIMEOUT_MS / 1000 + " s");
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

async function poll() {
  try {
    const [metrics, status] = await Promise.all([get("/metrics", "text"), get("/v1/admin/status", "json")]);
    renderMetrics(metrics, Date.now());
    renderStatus(status);
    setText("last-updated", new Date().toLocaleTimeString());
    byId("last-updated").dateTime = new Date().toISOString();
    showError("error-banner", null);
  } catch (error) {
    showError("error-banner", "Poll failed at " + new Date().toLocaleTimeString() + ": " + error.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
