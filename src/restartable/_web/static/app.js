// restartable serve: keeps the page current without a reload.
// Every value from a job reaches the page through textContent or setAttribute, never
// innerHTML, and this file is the only script (the Content-Security-Policy forbids
// inline ones): a job name or state holding markup stays text.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const interval = Math.max(200, Number(body.dataset.interval || "2") * 1000);
  const token = new URLSearchParams(window.location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const STATES = ["running", "stalled", "interrupted", "failed", "completed", "partial"];

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "?";
    const s = Math.floor(seconds);
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + pad(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d" + pad(Math.floor((s % 86400) / 3600)) + "h";
  }

  const num = (n) => Number(n).toLocaleString("en-US");
  const plural = (n, word) => num(n) + " " + word + (n === 1 ? "" : "s");

  function progressText(r) {
    if (r.total) return num(r.done) + "/" + num(r.total) + " (" + (100 * r.done / r.total).toFixed(1) + "%)";
    return num(r.done);
  }

  // The same words as `restartable status` (cli/_report.py state_text and lease_text).
  function stateText(r) {
    const parts = [r.state];
    if (r.state === "stalled") {
      parts[0] = "stalled (last save " + duration(r.last_save_age_seconds) + " ago)";
    }
    if (r.shards_total !== undefined && r.state !== "completed") {
      parts.push(r.shards_done + "/" + r.shards_total + " shards done");
      const stalled = (r.shards || []).filter((s) => s.state === "stalled").length;
      if (stalled && r.state !== "stalled") parts.push(stalled + " stalled");
    }
    if (r.dead_letters) parts.push(plural(r.dead_letters, "dead letter"));
    if (r.failed_files) parts.push(plural(r.failed_files, "failed file"));
    return parts.join(" · ");
  }

  function leaseText(r) {
    if (r.lease === "free" || r.lease_expires_in_seconds === null) return "free";
    if (r.lease === "dead owner") return "owner dead";
    const renewed = r.lease_age_seconds !== null ? "renewed " + duration(r.lease_age_seconds) + " ago, " : "";
    if (r.lease_expires_in_seconds <= 0) return renewed + "expired " + duration(-r.lease_expires_in_seconds) + " ago";
    return renewed + "expires in " + duration(r.lease_expires_in_seconds);
  }

  function runHref(r) {
    return "/runs/" + encodeURIComponent(r.job) + "/" + encodeURIComponent(r.run) + query;
  }

  function runRow(r, kind) {
    const tr = el("tr", kind + " state-" + r.state);
    tr.appendChild(el("td", "job", kind === "shard" ? "" : r.job));
    const name = el("td", "name");
    if (r.shards_total === undefined) {
      const a = el("a", "", r.run);
      a.setAttribute("href", runHref(r));
      name.appendChild(a);
    } else {
      name.textContent = r.run;
    }
    tr.appendChild(name);
    const status = el("td");
    status.appendChild(el("span", "badge state-" + r.state, stateText(r)));
    tr.appendChild(status);
    const progress = el("td", "progress-col");
    if (r.total) {
      const bar = el("progress");
      bar.max = r.total;
      bar.value = r.done;
      progress.appendChild(bar);
    }
    progress.appendChild(el("span", "ptext", progressText(r)));
    tr.appendChild(progress);
    tr.appendChild(el("td", "num", r.rate_per_second ? Number(r.rate_per_second).toLocaleString("en-US", {minimumFractionDigits: 1, maximumFractionDigits: 1}) + "/s" : ""));
    tr.appendChild(el("td", "num", r.eta_seconds !== null ? duration(r.eta_seconds) : ""));
    tr.appendChild(el("td", "", duration(r.last_save_age_seconds) + " ago"));
    tr.appendChild(el("td", "owner", r.lease !== "free" ? r.owner : ""));
    tr.appendChild(el("td", r.lease === "stale" || r.lease === "dead owner" ? "bad" : "", leaseText(r)));
    return tr;
  }

  function renderRuns(doc) {
    const tbody = document.getElementById("runs");
    const rows = document.createDocumentFragment();
    const counts = {};
    for (const r of doc.runs) {
      counts[r.state] = (counts[r.state] || 0) + 1;
      rows.appendChild(runRow(r, r.shards ? "group" : "run"));
      for (const s of r.shards || []) rows.appendChild(runRow(s, "shard"));
    }
    tbody.replaceChildren(rows);
    document.getElementById("empty").hidden = doc.runs.length > 0;
    for (const state of STATES) {
      const node = document.querySelector('#counts [data-state="' + state + '"] b');
      if (node) node.textContent = String(counts[state] || 0);
    }
    const bad = document.getElementById("unreadable");
    bad.replaceChildren(...doc.unreadable.map((u) => el("li", "", "job " + u.job + " run " + u.run + ": " + u.error)));
  }

  function fillRows(name, rows) {
    const tbody = document.querySelector('[data-rows="' + name + '"]');
    if (!tbody) return;
    tbody.replaceChildren(...rows.map((row) => {
      const tr = el("tr");
      for (const cell of row) tr.appendChild(el("td", "", cell));
      return tr;
    }));
    const table = tbody.closest("table");
    if (table && table.classList.contains("stages")) table.hidden = rows.length === 0;
  }

  function renderRun(view) {
    const f = view.fields;
    for (const node of document.querySelectorAll("[data-field]")) {
      const value = f[node.dataset.field];
      node.textContent = value === "" || value === undefined ? "—" : value;
    }
    const badge = document.getElementById("state-badge");
    if (badge) badge.className = "badge big state-" + f.state;
    const bar = document.getElementById("bar");
    if (bar) {
      bar.hidden = view.percent === null;
      bar.value = view.percent || 0;
    }
    const c = view.chart;
    document.getElementById("progress-line").setAttribute("points", c.progress);
    document.getElementById("rate-line").setAttribute("points", c.rate);
    for (const key of Object.keys(c.labels)) {
      const label = document.getElementById("label-" + key);
      if (label) label.textContent = c.labels[key];
    }
    const restarts = document.getElementById("restarts");
    restarts.replaceChildren(...c.restarts.map((x) => {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("class", "restart");
      line.setAttribute("x1", x);
      line.setAttribute("x2", x);
      line.setAttribute("y1", c.plot.y);
      line.setAttribute("y2", c.plot.y + c.plot.h);
      return line;
    }));
    document.getElementById("chart-note").textContent =
      c.points + " points" + (c.points < 2 ? " (the chart starts at the second save)" : "");
    for (const name of ["iterations", "stages", "skipped", "saves"]) fillRows(name, view[name]);
    document.getElementById("state-json").textContent = view.state_json;
  }

  function banner(text) {
    const node = document.getElementById("banner");
    node.textContent = text || "";
    node.hidden = !text;
    document.getElementById("live").classList.toggle("stale", Boolean(text));
  }

  async function tick() {
    let url = "/api/runs";
    if (page === "run") {
      url = "/api/runs/" + encodeURIComponent(body.dataset.job) + "/" + encodeURIComponent(body.dataset.run) + "/view";
    }
    try {
      const headers = token ? {"Authorization": "Bearer " + token} : {};
      const response = await fetch(url, {headers: headers, cache: "no-store", credentials: "same-origin"});
      const data = await response.json();
      if (page === "run") {
        if (data.view) renderRun(data.view);
        banner(data.error || "");
      } else if (response.ok) {
        renderRuns(data);
        banner("");
      } else {
        banner(data.error || "the store cannot be read (HTTP " + response.status + ")");
      }
      document.getElementById("live").textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (err) {
      banner("restartable serve does not answer (" + err + "); retrying every " + interval / 1000 + "s");
    } finally {
      window.setTimeout(tick, interval);
    }
  }

  if (page === "runs" || (page === "run" && document.getElementById("chart"))) {
    window.setTimeout(tick, interval);
  }
})();
