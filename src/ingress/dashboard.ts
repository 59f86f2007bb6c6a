// The live dashboard served at GET / by the daemon itself: one self-contained page (no CDN, no
// build step) that polls /api/stats every second and draws small charts on canvases.

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mqtt-fanout</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #1d2733; background: #f6f7f9; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  .tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .75rem; }
  .tile { background: #fff; border-radius: 6px; padding: .75rem 1rem; box-shadow: 0 1px 2px #0002; }
  .tile .label { color: #5b6878; font-size: .8rem; }
  .tile .value { font-size: 1.5rem; font-variant-numeric: tabular-nums; }
  .charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr)); gap: .75rem; margin-top: .75rem; }
  canvas { width: 100%; height: 120px; }
  table { border-collapse: collapse; width: 100%; background: #fff; margin-top: .75rem; box-shadow: 0 1px 2px #0002; }
  th, td { text-align: left; padding: .4rem .75rem; border-bottom: 1px solid #e4e7eb; font-variant-numeric: tabular-nums; }
  .up { color: #17803d; } .down { color: #b42318; }
  #status { color: #5b6878; font-size: .8rem; margin-left: .5rem; }
</style>
</head>
<body>
<h1>mqtt-fanout <span id="status">connecting…</span></h1>
<div class="tiles">
  <div class="tile"><div class="label">messages in / s</div><div class="value" id="rateIn">–</div></div>
  <div class="tile"><div class="label">deliveries / s</div><div class="value" id="rateOut">–</div></div>
  <div class="tile"><div class="label">connections (WebSocket)</div><div class="value" id="conns">–</div></div>
  <div class="tile"><div class="label">sessions · subscriptions</div><div class="value" id="sessions">–</div></div>
  <div class="tile"><div class="label">ack latency p50 · p99 (ms)</div><div class="value" id="ack">–</div></div>
</div>
<div class="charts">
  <div class="tile"><div class="label">messages in / s (2 min)</div><canvas id="chartIn"></canvas></div>
  <div class="tile"><div class="label">deliveries / s (2 min)</div><canvas id="chartOut"></canvas></div>
  <div class="tile"><div class="label">ack latency p99, ms (2 min)</div><canvas id="chartAck"></canvas></div>
  <div class="tile"><div class="label">connections (2 min)</div><canvas id="chartConns"></canvas></div>
</div>
<table>
  <thead><tr><th>broker</th><th>state</th><th>inflight</th><th>queued bytes</th><th>sent</th><th>received</th><th>reconnects</th></tr></thead>
  <tbody id="brokers"></tbody>
</table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (n) => n === null || n === undefined ? "–" : n >= 1e6 ? (n / 1e6).toFixed(2) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(Math.round(n));
const ms = (s) => s === null ? "–" : (s * 1000).toFixed(s < 0.01 ? 2 : 1);
function rates(history, field) {
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i].at - history[i - 1].at) / 1000;
    out.push(dt > 0 ? Math.max(0, (history[i][field] - history[i - 1][field]) / dt) : 0);
  }
  return out;
}
function chart(canvas, values, color) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * (w - 4) + 2;
    const y = h - 14 - (v / max) * (h - 20);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#5b6878"; g.font = "11px system-ui";
  g.fillText("max " + fmt(max), 4, h - 2);
}
async function refresh() {
  try {
    const res = await fetch("/api/stats", { cache: "no-store" });
    const s = await res.json();
    const h = s.history;
    const inRates = rates(h, "publishesIn"), outRates = rates(h, "deliveries");
    $("rateIn").textContent = fmt(inRates.at(-1) ?? 0);
    $("rateOut").textContent = fmt(outRates.at(-1) ?? 0);
    $("conns").textContent = fmt(s.connections) + " (" + fmt(s.wsConnections) + ")";
    $("sessions").textContent = fmt(s.sessions) + " · " + fmt(s.subscriptions);
    $("ack").textContent = ms(s.ackLatency.p50) + " · " + ms(s.ackLatency.p99);
    chart($("chartIn"), inRates, "#2563eb");
    chart($("chartOut"), outRates, "#7c3aed");
    chart($("chartAck"), h.map((x) => x.ackP99 * 1000), "#d97706");
    chart($("chartConns"), h.map((x) => x.connections), "#0d9488");
    $("brokers").innerHTML = s.brokers.map((b) =>
      "<tr><td>" + b.name + "</td><td class=" + (b.up > 0 ? "up" : "down") + ">" + b.up + "/" + b.pool + " up</td><td>" + fmt(b.inflight) +
      "</td><td>" + fmt(b.queuedBytes) + "</td><td>" + fmt(b.messagesOut) + "</td><td>" + fmt(b.messagesIn) + "</td><td>" + fmt(b.reconnects) + "</td></tr>").join("");
    $("status").textContent = "updated " + new Date(s.at).toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    $("status").textContent = "no answer from the daemon (" + err.message + ")";
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
`;
