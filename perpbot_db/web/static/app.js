// perpbot console: fills the server-rendered pages from the JSON API.
// No inline script or style (the CSP forbids both): every value goes in through
// textContent, never innerHTML.  Live updates: server-sent events from
// /api/state/stream, polling /api/state as the fallback.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const POLL_MS = 2000;
  const STALE_S = 10;

  const $ = (id) => document.getElementById(id);
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function setText(id, value) {
    const node = $(id);
    if (node) node.textContent = value === null || value === undefined ? "-" : String(value);
  }
  function money(value) {
    if (value === null || value === undefined) return "-";
    const n = Number(value);
    return Number.isFinite(n) ? n.toFixed(2) : String(value);
  }
  function seconds(value) {
    if (value === null || value === undefined) return "-";
    return Number(value).toFixed(1) + " s";
  }
  function message(text, bad) {
    const node = $("message");
    node.textContent = text || "";
    node.className = bad ? "bad" : "";
  }

  // A table from rows: columns [header, function(row) -> text or Node].
  function table(rows, columns, empty) {
    if (!rows || rows.length === 0) return el("p", empty || "none", "empty");
    const t = el("table", null, "rows");
    const head = el("tr");
    for (const [name] of columns) head.appendChild(el("th", name));
    t.appendChild(el("thead")).appendChild(head);
    const tb = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      for (const [, cell] of columns) {
        const value = cell(row);
        const td = el("td");
        if (value instanceof Node) td.appendChild(value);
        else td.textContent = value === null || value === undefined ? "-" : String(value);
        tr.appendChild(td);
      }
      tb.appendChild(tr);
    }
    t.appendChild(tb);
    return t;
  }
  // A table of plain objects: one column per key of the first row.
  function objectTable(rows, empty) {
    if (!rows || rows.length === 0) return el("p", empty || "none", "empty");
    const keys = Object.keys(rows[0]);
    return table(
      rows,
      keys.map((k) => [k, (r) => (typeof r[k] === "object" && r[k] !== null ? JSON.stringify(r[k]) : r[k])]),
      empty
    );
  }
  function fill(id, node) {
    const box = $(id);
    if (box) box.replaceChildren(node);
  }
  function jobLink(id) {
    const a = el("a", "#" + id);
    a.href = "/jobs/" + encodeURIComponent(id);
    return a;
  }

  // -- the session (token exchanged once for an HttpOnly cookie) ---------------------------
  let authenticated = false;
  async function refreshSession() {
    try {
      const r = await fetch("/api/session", { credentials: "same-origin" });
      const info = await r.json();
      authenticated = !!info.authenticated;
      showAuth(info.read_only);
    } catch (e) {
      showAuth(false);
    }
  }
  function showAuth(readOnly) {
    $("login").classList.toggle("hidden", authenticated || readOnly);
    $("whoami").classList.toggle("hidden", !authenticated);
    $("logout").classList.toggle("hidden", !authenticated);
    $("auth-note").textContent = readOnly ? "read-only: no token is configured" : "";
    for (const b of document.querySelectorAll(".control")) b.disabled = !authenticated;
  }
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("token");
    const token = input.value;
    input.value = "";
    const r = await fetch("/api/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: token }),
    });
    if (r.ok) {
      message("logged in");
    } else {
      message(await errorText(r), true);
    }
    await refreshSession();
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
    message("logged out");
    await refreshSession();
  });
  async function errorText(r) {
    try {
      const body = await r.json();
      if (body && body.error) return r.status + ": " + body.error.message;
    } catch (e) {
      /* not JSON */
    }
    return "HTTP " + r.status;
  }

  // -- controls, each through a confirm dialog ---------------------------------------------
  const ACTIONS = {
    pause: { title: "Pause the system?", text: "No job is admitted or started until resumed.", path: "/api/control/pause" },
    resume: { title: "Resume the system?", text: "Jobs are admitted and started again.", path: "/api/control/resume" },
    halt: { title: "HALT the system?", text: "Nothing is admitted or started; a halt needs an override or resume to end.", path: "/api/control/halt" },
    mode: { title: "Change the risk mode?", text: "", path: "/api/risk/mode" },
  };
  let pending = null;
  function askConfirm(action) {
    const spec = ACTIONS[action];
    if (!spec) return;
    pending = action;
    $("confirm-title").textContent = spec.title;
    $("confirm-text").textContent =
      action === "mode" ? "The next tick judges with mode " + $("mode-select").value + "." : spec.text;
    $("confirm-reason").value = "";
    $("confirm").showModal();
    $("confirm-reason").focus();
  }
  async function perform(action, reason) {
    const spec = ACTIONS[action];
    const payload = { reason: reason };
    if (action === "mode") payload.mode = $("mode-select").value;
    const r = await fetch(spec.path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    if (r.ok) message(action + ": done");
    else message(action + ": " + (await errorText(r)), true);
    if (r.status === 401) await refreshSession();
    await pollOnce();
  }
  if ($("confirm")) {
    $("confirm-cancel").addEventListener("click", () => {
      pending = null;
      $("confirm").close();
    });
    $("confirm-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const reason = $("confirm-reason").value.trim();
      if (!reason) {
        $("confirm-reason").reportValidity();
        return;
      }
      const action = pending;
      pending = null;
      $("confirm").close();
      if (action) perform(action, reason);
    });
  }
  for (const b of document.querySelectorAll(".control")) {
    b.addEventListener("click", () => askConfirm(b.dataset.action));
  }

  // -- the overview ------------------------------------------------------------------------
  let builtAt = null;
  function renderState(s) {
    builtAt = Date.parse(s.built_at);
    const g = s.global;
    setText("system-status", g.status);
    $("system-status").className = "big status-" + g.status;
    setText("risk-mode", g.risk_mode);
    setText("day", g.day);
    setText("pnl", money(g.realized_pnl_usd));
    setText("volume", money(g.volume_usd));
    setText("fees", money(g.fees_usd));
    setText("loss-used", money(g.loss_used_usd));
    setText("loss-limit", money(g.daily_loss_limit_usd));
    setText("loss-ratio", (Number(g.loss_used_ratio) * 100).toFixed(1) + " %");
    $("loss-meter").value = Math.min(1, Number(g.loss_used_ratio) || 0);
    setText("halt-reason", g.halt_reason ? "halted: " + g.halt_reason : "");
    const mode = $("mode-select");
    if (document.activeElement !== mode && !$("confirm").open) mode.value = g.risk_mode;

    setText("health-verdict", s.health.verdict);
    $("health-verdict").className = "big health-" + s.health.verdict;
    const reasons = $("health-reasons");
    reasons.replaceChildren();
    for (const r of s.health.reasons) reasons.appendChild(el("li", r.severity + ": " + r.text, "sev-" + r.severity));

    const j = s.jobs;
    setText("jobs-pending", j.pending);
    setText("jobs-admitted", j.admitted);
    setText("jobs-running", j.running);
    setText("jobs-completed", j.completed_today);
    setText("jobs-failed", j.failed_today);

    const p = s.processes;
    setText("leader", p.leader || "none");
    setText("tick-age", p.tick_age_s === null ? "never" : seconds(p.tick_age_s) + " ago");
    setText("live-workers", p.live_workers);

    renderCapital(s.capital);
    fill(
      "running",
      table(
        j.running_jobs,
        [
          ["job", (r) => jobLink(r.id)],
          ["strategy", (r) => r.strategy],
          ["symbol", (r) => r.symbol],
          ["notional", (r) => money(r.notional_usd)],
          ["worker", (r) => r.worker_id],
          ["attempt", (r) => r.attempt],
          ["age", (r) => seconds(r.age_s)],
          ["legs", (r) => r.legs.map((l) => l.exchange + " " + l.side + " " + l.status).join(", ")],
        ],
        "no job is running"
      )
    );
    fill(
      "holds",
      table(
        s.risk.holds,
        [
          ["code", (r) => r.code],
          ["jobs", (r) => r.jobs],
          ["example", (r) => jobLink(r.example_job_id)],
          ["why", (r) => r.example],
        ],
        "no pending job is held"
      )
    );
    fill(
      "denials",
      table(
        s.risk.denials.concat(s.risk.failures),
        [
          ["action", (r) => r.action],
          ["code", (r) => r.code + (r.held_code ? " (held: " + r.held_code + ")" : "")],
          ["events", (r) => r.events],
          ["latest", (r) => r.latest_at],
          ["example", (r) => jobLink(r.example_job_id)],
          ["why", (r) => r.example],
        ],
        s.risk.events_problem || "none in the last hour"
      )
    );
    fill(
      "exchanges",
      table(
        s.exchanges,
        [
          ["exchange", (r) => r.name + (r.enabled ? "" : " (disabled)")],
          ["latency", (r) => (r.latency_ms === null ? "-" : r.latency_ms + " ms")],
          ["safe mode", (r) => (r.safe_mode ? "ON " + (r.safe_mode_reason || "") : "off")],
          ["funding", (r) => Object.entries(r.funding_rates).map(([k, v]) => k + " " + v).join(", ")],
          ["market age", (r) => seconds(r.market_age_s)],
          ["stale", (r) => r.stale_symbols.join(", ")],
          ["jobs", (r) => r.concurrent_jobs + " / " + r.max_concurrent_jobs],
          ["failures", (r) => r.consecutive_failures],
        ],
        "no exchange configured"
      )
    );
    fill(
      "locks",
      table(
        s.risk.locks,
        [
          ["scope", (r) => r.scope],
          ["target", (r) => r.target],
          ["code", (r) => r.code],
          ["reason", (r) => r.reason],
          ["until", (r) => r.until],
          ["expires in", (r) => seconds(r.expires_in_s)],
        ],
        "no protection lock"
      )
    );
    showAge();
  }

  function renderCapital(capital) {
    const box = el("div", null, "capital");
    for (const ex of capital) {
      const card = el("div", null, "exchange");
      card.appendChild(el("h3", ex.exchange + " · equity " + money(ex.equity_usd)));
      card.appendChild(
        el("p", "in flight " + money(ex.inflight_usd) + " of " + money(ex.inflight_limit_usd) + " · jobs " + ex.active_jobs)
      );
      for (const t of ex.tiers) {
        const row = el("div", null, "tier");
        row.appendChild(el("span", t.tier, "tier-name"));
        const m = el("meter");
        m.min = 0;
        m.max = Math.max(Number(t.budget_usd), 0.000001);
        m.value = Number(t.used_usd);
        m.high = m.max * 0.8;
        m.title = t.tier + ": " + money(t.used_usd) + " used of " + money(t.budget_usd);
        row.appendChild(m);
        row.appendChild(el("span", money(t.used_usd) + " / " + money(t.budget_usd), "tier-figures"));
        card.appendChild(row);
      }
      if (ex.breaches.length) card.appendChild(el("p", "breaches: " + ex.breaches.join(", "), "warn"));
      box.appendChild(card);
    }
    if (!capital.length) box.appendChild(el("p", "no exchange", "empty"));
    fill("capital", box);
  }

  // -- charts (uPlot) -------------------------------------------------------------------------
  const charts = {};
  const series = { t: [], pnl: [], volume: [], fees: [] };
  function addSample(sample) {
    const t = Date.parse(sample.built_at) / 1000;
    const last = series.t.length ? series.t[series.t.length - 1] : null;
    if (last !== null && t <= last) return;
    series.t.push(t);
    series.pnl.push(Number(sample.realized_pnl_usd));
    series.volume.push(Number(sample.volume_usd));
    series.fees.push(Number(sample.fees_usd));
    const MAX = 3600;
    if (series.t.length > MAX) for (const k of Object.keys(series)) series[k].splice(0, series[k].length - MAX);
  }
  function makeChart(id, label, data) {
    const box = $(id);
    if (!box || typeof uPlot === "undefined") return null;
    const opts = {
      width: chartWidth(id),
      height: 200,
      series: [{}].concat(label.map((l, i) => ({ label: l, stroke: ["#2a7", "#c63", "#36c"][i], width: 2 }))),
      axes: [{}, { size: 70 }],
      // The samples' own span, at least a minute (uPlot would widen one sample to years).
      scales: {
        x: {
          time: true,
          range: () => {
            const t = series.t;
            const hi = t.length ? t[t.length - 1] : Date.now() / 1000;
            return [Math.min(t.length ? t[0] : hi, hi - 60), hi];
          },
        },
      },
    };
    return new uPlot(opts, data, box);
  }
  function drawCharts() {
    const pnl = [series.t, series.pnl];
    const vol = [series.t, series.volume, series.fees];
    if (!charts.pnl) charts.pnl = makeChart("chart-pnl", ["PnL USD"], pnl);
    else charts.pnl.setData(pnl);
    if (!charts.volume) charts.volume = makeChart("chart-volume", ["volume USD", "fees USD"], vol);
    else charts.volume.setData(vol);
  }
  // Charts follow their boxes' width (a window resized, a panel reflowed).
  function chartWidth(id) {
    const box = $(id);
    return Math.max(300, (box && box.clientWidth) || 500);
  }
  function resizeCharts() {
    if (charts.pnl) charts.pnl.setSize({ width: chartWidth("chart-pnl"), height: 200 });
    if (charts.volume) charts.volume.setSize({ width: chartWidth("chart-volume"), height: 200 });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(resizeCharts, 100);
  });
  async function loadHistory() {
    try {
      const r = await fetch("/api/state/history");
      if (!r.ok) return;
      const h = await r.json();
      for (const s of h.samples) addSample(s);
      drawCharts();
    } catch (e) {
      /* the stream fills the charts anyway */
    }
  }
  function onState(s) {
    renderState(s);
    addSample({
      built_at: s.built_at,
      realized_pnl_usd: s.global.realized_pnl_usd,
      volume_usd: s.global.volume_usd,
      fees_usd: s.global.fees_usd,
    });
    drawCharts();
  }

  // -- live updates: SSE, polling as the fallback, a pause button ---------------------------
  let live = true;
  let source = null;
  let pollTimer = null;
  function liveState(text, cls) {
    const node = $("live-state");
    node.textContent = text;
    node.className = "pill " + (cls || "");
  }
  async function pollOnce() {
    if (page !== "overview") return;
    try {
      const r = await fetch("/api/state");
      if (r.ok) onState(await r.json());
      else liveState("state unavailable", "bad");
    } catch (e) {
      liveState("offline", "bad");
    }
  }
  function startPolling() {
    if (pollTimer) return;
    liveState("live (polling)", "ok");
    pollOnce();
    pollTimer = setInterval(pollOnce, POLL_MS);
  }
  // SSE; after MAX_ERRORS failures in a row (or a refused stream) it polls instead.
  const MAX_ERRORS = 3;
  function startLive() {
    if (typeof EventSource === "undefined") return startPolling();
    let errors = 0;
    source = new EventSource("/api/state/stream");
    source.addEventListener("open", () => liveState("live", "ok"));
    source.addEventListener("state", (ev) => {
      errors = 0;
      liveState("live", "ok");
      onState(JSON.parse(ev.data));
    });
    source.addEventListener("unavailable", () => liveState("state unavailable", "bad"));
    source.addEventListener("error", () => {
      errors += 1;
      if (!source) return;
      if (source.readyState === EventSource.CLOSED || errors >= MAX_ERRORS) {
        source.close();
        source = null;
        startPolling();
      } else {
        liveState("reconnecting", "bad");
      }
    });
  }
  function stopLive() {
    if (source) source.close();
    source = null;
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
    liveState("paused", "");
  }
  $("live-toggle").addEventListener("click", () => {
    live = !live;
    $("live-toggle").textContent = live ? "Pause live updates" : "Resume live updates";
    if (page === "job") {
      if (live) startJob();
      else {
        stopJob();
        liveState("paused", "");
      }
    } else if (live) startLive();
    else stopLive();
  });
  function showAge() {
    if (builtAt === null) return;
    const age = Math.max(0, (Date.now() - builtAt) / 1000);
    const node = $("age");
    node.textContent = "data " + age.toFixed(1) + " s old";
    node.className = age > STALE_S ? "stale" : "";
  }
  setInterval(showAge, 500);

  // -- the job page: polled while the job can still change ---------------------------------
  const FINISHED = ["completed", "failed", "rejected", "cancelled", "expired"];
  let jobTimer = null;
  let jobDone = false;
  async function loadJob() {
    const id = body.dataset.jobId;
    let r;
    try {
      r = await fetch("/api/jobs/" + encodeURIComponent(id));
    } catch (e) {
      liveState("offline", "bad");
      return;
    }
    if (!r.ok) {
      message(await errorText(r), true);
      stopJob();
      return;
    }
    const v = await r.json();
    setText("job-why", v.why.text);
    setText("job-status", v.job.status);
    const rows = Object.entries(v.job).map(([k, val]) => ({
      field: k,
      value: typeof val === "object" && val !== null ? JSON.stringify(val) : val,
    }));
    fill("job-summary", objectTable(rows));
    fill("job-legs", objectTable(v.legs, "no legs"));
    fill("job-reservations", objectTable(v.reservations, "no reservation"));
    fill("job-events", objectTable(v.events, "no event"));
    $("age").textContent = "loaded at " + new Date().toLocaleTimeString();
    jobDone = FINISHED.includes(v.job.status);
    if (jobDone) {
      stopJob();
      liveState("finished", "");
      $("live-toggle").classList.add("hidden");
    } else if (live) {
      liveState("live (polling)", "ok");
    }
  }
  function startJob() {
    if (jobTimer || jobDone) return;
    loadJob();
    jobTimer = setInterval(loadJob, POLL_MS);
  }
  function stopJob() {
    if (jobTimer) clearInterval(jobTimer);
    jobTimer = null;
  }

  refreshSession();
  if (page === "overview") {
    loadHistory();
    startLive();
  } else if (page === "job") {
    startJob();
  }
})();
