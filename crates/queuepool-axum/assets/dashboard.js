// queuepool dashboard: polls /dashboard/samples and draws the charts on <canvas>.
"use strict";
(function () {
  // The charts span the history there is, in steps, up to five minutes.
  const WINDOWS = [[60, 10], [120, 20], [300, 60]];
  let WINDOW_S = 300, LABEL_S = 60;
  const base = location.pathname.replace(/\/+$/, "");
  const state = { samples: [], last: null, pool: null, failures: 0 };
  const $ = (id) => document.getElementById(id);
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    if (digits !== undefined) return v.toFixed(digits);
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Math.abs(v) >= 100 || Number.isInteger(v)) return Math.round(v).toString();
    return v.toFixed(1);
  }
  function ms(v) {
    if (!isFinite(v)) return "-";
    if (v < 1) return v.toFixed(3) + " ms";
    if (v < 100) return v.toFixed(1) + " ms";
    return Math.round(v) + " ms";
  }

  function windowed() {
    if (state.samples.length === 0) return [];
    const end = state.samples[state.samples.length - 1].t_ms;
    const span = (end - state.samples[0].t_ms) / 1000;
    const pick = WINDOWS.find((w) => w[0] >= span) || WINDOWS[WINDOWS.length - 1];
    WINDOW_S = pick[0]; LABEL_S = pick[1];
    $("window").textContent = WINDOW_S >= 120 ? (WINDOW_S / 60) + " minutes" : WINDOW_S + " seconds";
    return state.samples.filter((s) => s.t_ms > end - WINDOW_S * 1000);
  }

  // One chart: series of [t_ms, value] (a series with `step` holds each value until the
  // next, on whole pixels); optional dashed reference lines; bars or lines.
  function chart(canvas, series, opts) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 44, right = 14, top = 8, bottom = 20;
    const pw = w - left - right, ph = h - top - bottom;
    const now = state.samples.length ? state.samples[state.samples.length - 1].t_ms : Date.now();
    const t0 = now - WINDOW_S * 1000;
    let max = opts.min || 1;
    for (const s of series) for (const p of s.points) max = Math.max(max, p[1]);
    for (const r of opts.refs || []) if (r.value !== null) max = Math.max(max, r.value);
    const step = nice((max * 1.05) / 4);
    max = 4 * (opts.unit === "ms" ? step : Math.max(1, step));
    const x = (t) => left + ((t - t0) / (WINDOW_S * 1000)) * pw;
    const y = (v) => top + ph - (v / max) * ph;
    // grid and labels
    g.strokeStyle = css("--line"); g.fillStyle = css("--muted"); g.lineWidth = 1;
    g.font = "11px system-ui, sans-serif"; g.textAlign = "right"; g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke();
      g.fillText(opts.unit === "ms" ? fmt(v, v < 1 ? 2 : 1) : fmt(v), left - 6, yy);
    }
    g.textAlign = "center"; g.textBaseline = "top";
    for (let k = 0; k * LABEL_S <= WINDOW_S; k++) {
      const ago = k * LABEL_S;
      g.textAlign = k === 0 ? "right" : "center";
      const label = k === 0 ? "now" : ago % 60 === 0 ? "-" + ago / 60 + "m" : "-" + ago + "s";
      g.fillText(label, x(now - ago * 1000) + (k === 0 ? 6 : 0), top + ph + 5);
    }
    for (const r of opts.refs || []) {
      if (r.value === null) continue;
      g.save(); g.setLineDash([5, 4]); g.strokeStyle = r.color; g.globalAlpha = 0.6;
      const yy = Math.round(y(r.value)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke(); g.restore();
    }
    const slot = Math.max(1, pw / WINDOW_S);
    for (const s of series) {
      g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = 2;
      if (opts.bars) {
        for (const p of s.points) if (p[1] > 0) g.fillRect(x(p[0]) - slot / 2, y(p[1]), slot, top + ph - y(p[1]));
        continue;
      }
      g.beginPath();
      let started = false, prev = null;
      for (const p of s.points) {
        if (p[0] < t0) continue;
        const px = s.step ? Math.round(x(p[0])) : x(p[0]), py = s.step ? Math.round(y(p[1])) : y(p[1]);
        if (!started) { g.moveTo(px, py); started = true; }
        else { if (s.step) g.lineTo(px, prev); g.lineTo(px, py); }
        prev = py;
      }
      g.stroke();
    }
  }

  function nice(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function render() {
    const win = windowed();
    const last = state.samples[state.samples.length - 1];
    if (last) {
      $("idle").textContent = last.idle;
      $("in-use").textContent = last.in_use;
      $("waiting").textContent = last.waiting;
      $("rate").textContent = fmt(last.checkouts_per_s);
      $("wait-p99").textContent = ms(last.wait_p99_ms);
      $("wait-mean").textContent = ms(last.wait_mean_ms);
      $("timeouts").textContent = last.timeouts_total;
      $("in-use-peak").textContent = win.reduce((m, s) => Math.max(m, s.in_use_peak), 0);
      $("timeouts-window").textContent = win.reduce((n, s) => n + s.timeouts, 0);
      document.body.dataset.samples = state.samples.length;
    }
    const pool = state.pool || {};
    $("max-connections").textContent = pool.max_connections === null ? "unlimited" : fmt(pool.max_connections);
    $("pool-name").textContent = pool.name ? "pool " + pool.name : "";
    $("status-line").textContent = pool.status || "";
    const auto = pool.auto_size || null;
    $("limit-legend").hidden = auto === null;
    $("limit").textContent = auto ? auto.limit : "-";
    $("limit-reason").textContent = auto ? auto.reason : "-";
    const pts = (f) => win.map((s) => [s.t_ms, f(s)]);
    const connections = [
      { color: css("--idle"), points: pts((s) => s.idle) },
      { color: css("--use"), points: pts((s) => s.in_use_peak) },
      { color: css("--wait"), points: pts((s) => s.waiting_peak) },
    ];
    // pool_size = auto: the adaptive limit, drawn last so that it stays on top.
    const limits = win.filter((s) => s.limit !== null && s.limit !== undefined).map((s) => [s.t_ms, s.limit]);
    if (limits.length) connections.push({ color: css("--limit"), points: limits, step: true });
    chart($("chart-connections"), connections, { min: 1, refs: [
      { value: pool.pool_size === undefined ? null : pool.pool_size, color: css("--idle") },
      { value: pool.max_connections === undefined ? null : pool.max_connections, color: css("--timeout") },
    ] });
    chart($("chart-rate"), [{ color: css("--use"), points: pts((s) => s.checkouts_per_s) }], { min: 1 });
    chart($("chart-wait"), [
      { color: css("--p99"), points: pts((s) => s.wait_p99_ms) },
      { color: css("--mean"), points: pts((s) => s.wait_mean_ms) },
    ], { min: 0.1, unit: "ms" });
    chart($("chart-timeouts"), [{ color: css("--timeout"), points: pts((s) => s.timeouts) }], { min: 1, bars: true });
  }

  async function poll() {
    try {
      const q = state.last === null ? "" : "?after=" + state.last;
      const r = await fetch(base + "/samples" + q, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const body = await r.json();
      state.pool = body.pool;
      for (const s of body.samples) {
        // A restarted service numbers its samples from 1 again.
        if (state.last !== null && s.seq <= state.last) state.samples = [];
        state.samples.push(s);
        state.last = s.seq;
      }
      if (state.samples.length > body.history) state.samples.splice(0, state.samples.length - body.history);
      state.failures = 0;
      $("conn-state").textContent = "live";
      $("conn-state").className = "state live";
    } catch (e) {
      state.failures += 1;
      $("conn-state").textContent = "cannot reach the service (" + e.message + "), retrying";
      $("conn-state").className = "state down";
      if (state.failures > 3) state.last = null;
    }
    render();
    setTimeout(poll, 1000);
  }

  window.addEventListener("resize", render);
  poll();
})();
