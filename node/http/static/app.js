// sedma dashboard: polls /api/snapshot once a second and redraws. Every value coming from
// the daemon is put on the page with textContent (never innerHTML), so a matrix named
// "<script>" is shown as those characters.
"use strict";

const POLL_MS = 1000;
const token = new URLSearchParams(location.search).get("token");

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fill(container, nodes) { container.replaceChildren(...nodes); }
const fmtNum = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
const fmtMs = (v) => v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
function fmtPair(a, b) {
  if (a === null || a === undefined) return "–";
  const f = (v) => v < 10 ? v.toFixed(1) : v.toFixed(0);
  return f(a) + " / " + f(b) + " ms";
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function fmtAge(s) {
  if (s < 90) return s.toFixed(0) + " s";
  if (s < 5400) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
const pill = (state) => el("span", { class: "pill " + String(state).replace(/[^a-z-]/g, ""), text: state });

function tile(key, value) {
  return el("div", { class: "tile" }, el("div", { class: "v", text: value }), el("div", { class: "k", text: key }));
}

function renderSummary(s) {
  const n = s.node, m = n.metrics, members = s.members;
  document.getElementById("node-title").textContent = n.name + " · " + n.id.slice(0, 8) + " · " + n.device;
  document.title = "sedma · " + n.name;
  const alive = members.filter((x) => x.state === "alive").length;
  fill(document.getElementById("summary"), [
    tile("members alive", alive + " / " + members.length),
    tile("deployments", String(s.deployments.length)),
    tile("work requests / s", fmtNum(s.jobs.requests_per_s, 2)),
    tile("request latency p50 / p99", fmtPair(s.jobs.request_latency_ms.p50, s.jobs.request_latency_ms.p99)),
    tile("compute utilisation", fmtNum(100 * m.resource_utilisation, 1) + " %"),
    tile("memory used of " + fmtBytes(n.memory.budget), fmtBytes(n.memory.budget - n.memory.free)),
    tile("uptime", fmtAge(n.uptime_s)),
  ]);
}

function memBar(used, limit) {
  const frac = limit > 0 ? Math.min(1, used / limit) : 0;
  const bar = el("span", { class: "bar" }, el("span"));
  bar.firstChild.style.width = (100 * frac).toFixed(1) + "%";
  return el("span", {}, bar, fmtBytes(used) + " / " + fmtBytes(limit));
}

function renderMembers(members) {
  document.getElementById("mesh-count").textContent = "(" + members.length + " known)";
  const rows = members.map((p) => {
    const name = el("td", {}, p.name);
    if (p.self) name.append(el("span", { class: "self-tag", text: "this node" }));
    const link = el("td", { text: p.link });
    if (p.link_error) link.title = p.link_error;
    return el("tr", { "data-member-id": p.id, "data-member-name": p.name, "data-state": p.state },
      name, el("td", { class: "id", text: p.id.slice(0, 12) }), el("td", { class: "state" }, pill(p.state)),
      link, el("td", { class: "num", text: fmtMs(p.rtt_ms) }), el("td", { text: p.reachability }),
      el("td", { text: p.device }), el("td", {}, memBar(p.memory.used, p.memory.limit)),
      el("td", { class: "num", text: fmtNum(p.load, 2) }), el("td", { class: "num", text: fmtNum(p.capacity, 1) }));
  });
  fill(document.querySelector("#members tbody"), rows);
}

function renderDeployments(deps, members) {
  const box = document.getElementById("deployment-list");
  if (!deps.length) { fill(box, [el("p", { class: "muted", text: "nothing deployed yet" })]); return; }
  const order = members.map((m) => m.id);
  const nameOf = Object.fromEntries(members.map((m) => [m.id, m.name]));
  fill(box, deps.map((d) => {
    // Columns: every node that holds a block of this matrix, in mesh order.
    const holders = new Set(d.blocks.flatMap((b) => b.holders.map((h) => h.id)));
    const cols = order.filter((id) => holders.has(id)).concat([...holders].filter((id) => !order.includes(id)));
    const head = el("tr", {}, el("th", { text: "block · rows" }),
      ...cols.map((id) => el("th", { text: nameOf[id] || id.slice(0, 8) })));
    const rows = d.blocks.map((b) => {
      const byId = Object.fromEntries(b.holders.map((h, i) => [h.id, [h, i]]));
      return el("tr", { "data-block": String(b.index) },
        el("th", { text: "#" + b.index + " · " + b.rows[0] + "–" + b.rows[1] }),
        ...cols.map((id) => {
          const hit = byId[id];
          const cell = el("td", { class: "cell" + (hit ? " held " + hit[0].state + (hit[1] === 0 ? " primary" : "") : "") });
          if (hit) {
            cell.setAttribute("data-holder", hit[0].name);
            cell.title = (hit[1] === 0 ? "primary" : "replica") + " on " + hit[0].name + " (" + hit[0].state + ")";
          }
          return cell;
        }));
    });
    const live = d.replicas_live, want = d.replicas_wanted;
    const cls = live >= want ? "ok" : live > 0 ? "low" : "none";
    return el("div", { class: "deployment", "data-deployment": d.name },
      el("div", { class: "dep-head" }, el("span", { class: "dep-name", text: d.name }),
        el("span", { class: "muted", text: d.kind + " " + d.shape.join("×") + (d.device ? " · " + d.device : "") }),
        el("span", { class: "replicas " + cls, text: "replicas " + live + "/" + want + " live" })),
      el("table", { class: "blockmap" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }));
}

function renderJobs(j) {
  const states = Object.entries(j.jobs_by_state).map(([k, v]) => k + " " + v).join(" · ") || "none";
  const stat = (k, v) => el("div", {}, el("b", { text: v }), k);
  fill(document.getElementById("job-stats"), [
    stat("work requests/s (" + j.window_s + " s)", fmtNum(j.requests_per_s, 2)),
    stat("request p50 / p90 / p99", [j.request_latency_ms.p50, j.request_latency_ms.p90, j.request_latency_ms.p99].map(fmtMs).join(" / ")),
    stat("failed requests", String(j.request_failures)),
    stat("job p50 / p99", fmtMs(j.job_latency_ms.p50) + " / " + fmtMs(j.job_latency_ms.p99)),
    stat("jobs", states),
  ]);
  fill(document.querySelector("#job-table tbody"), j.recent.map((r) => el("tr", {},
    el("td", { class: "id", text: r.id }), el("td", { text: r.kind }), el("td", { text: r.name }),
    el("td", {}, pill(r.state)), el("td", { class: "num", text: r.seconds === null ? "–" : r.seconds.toFixed(3) + " s" }),
    el("td", { class: "err", text: r.error }))));
}

function renderMemory(mem) {
  const st = mem.short_term;
  const stat = (k, v) => el("div", {}, el("b", { text: v }), k);
  fill(document.getElementById("memory-stats"), [
    stat("shares in window", String(st.shares)), stat("share failures", String(st.share_failures)),
    stat("requests in window", String(st.requests)), stat("window", st.window_s + " s"),
  ]);
  const rows = mem.peers.map((p) => el("tr", { "data-peer": p.id },
    el("td", { text: p.name }), el("td", {}, pill(p.state)),
    el("td", { class: "num", text: fmtNum(p.learned_gflops, 2) }), el("td", { class: "num", text: fmtNum(p.advertised_gflops, 1) }),
    el("td", { class: "num", text: fmtNum(100 * p.reliability, 0) + " %" }),
    el("td", { class: "num", text: p.samples + " (" + p.failures + ")" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "muted", colspan: "6", text: "nothing learned yet: run some jobs" })));
  fill(document.querySelector("#peer-patterns tbody"), rows);
  const list = document.getElementById("decisions");
  if (mem.decisions === null || !mem.decisions.length) {
    fill(list, [el("li", { class: "muted", text: mem.decisions === null ? "this daemon records no decisions" : "none yet" })]);
  } else {
    fill(list, mem.decisions.slice(-12).reverse().map(describeDecision));
  }
}

// A decision's owner decides its fields; show time, what, reason first, the rest as k=v.
function describeDecision(d) {
  const known = ["at", "action", "kind", "name", "index", "reason"];
  const when = typeof d.at === "number" ? new Date(d.at * 1000).toLocaleTimeString() + "  " : "";
  const what = [d.action || d.kind, d.name, d.index === undefined ? "" : "#" + d.index].filter((x) => x !== undefined && x !== "").join(" ");
  const rest = Object.entries(d).filter(([k]) => !known.includes(k)).map(([k, v]) => k + "=" + JSON.stringify(v)).join("  ");
  return el("li", {}, el("b", { text: when + what }), d.reason ? " — " + d.reason : "", rest ? "  (" + rest + ")" : "");
}

function drawPlot(history) {
  const canvas = document.getElementById("plot");
  const dpr = window.devicePixelRatio || 1;
  const W = 520, H = 220, L = 40, R = 44, T = 12, B = 24;
  canvas.width = W * dpr; canvas.height = H * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, W, H);
  const css = getComputedStyle(document.documentElement);
  const color = (v) => css.getPropertyValue(v).trim();
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = color("--line"); g.fillStyle = color("--muted"); g.lineWidth = 1;
  const pts = history.slice(-300);
  if (pts.length < 2) { g.fillText("collecting samples…", L + 10, H / 2); return; }
  const t0 = pts[0].at, t1 = pts[pts.length - 1].at;
  const rate = Math.max(1, ...pts.map((p) => Math.max(p.requests_per_s, p.completions_per_s)));
  const lat = Math.max(1, ...pts.map((p) => p.latency_p50_ms || 0));
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const yr = (v) => H - B - (H - T - B) * v / rate;
  const yl = (v) => H - B - (H - T - B) * v / lat;
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * i / 4;
    g.beginPath(); g.moveTo(L, y); g.lineTo(W - R, y); g.stroke();
    g.fillStyle = color("--thr"); g.textAlign = "right"; g.fillText((rate * (4 - i) / 4).toFixed(rate < 8 ? 1 : 0), L - 4, y + 4);
    g.fillStyle = color("--lat"); g.textAlign = "left"; g.fillText((lat * (4 - i) / 4).toFixed(lat < 8 ? 1 : 0), W - R + 4, y + 4);
  }
  g.fillStyle = color("--muted"); g.textAlign = "center";
  g.fillText("-" + Math.round(t1 - t0) + " s", L + 14, H - 6); g.fillText("now", W - R, H - 6);
  const line = (key, y, c) => {
    g.strokeStyle = color(c); g.lineWidth = 1.8; g.beginPath();
    let started = false;
    for (const p of pts) {
      const v = p[key];
      if (v === null || v === undefined) { started = false; continue; }
      if (!started) { g.moveTo(x(p.at), y(v)); started = true; } else g.lineTo(x(p.at), y(v));
    }
    g.stroke();
  };
  line("completions_per_s", yr, "--cmp");
  line("requests_per_s", yr, "--thr");
  line("latency_p50_ms", yl, "--lat");
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const url = "/api/snapshot" + (token ? "?token=" + encodeURIComponent(token) : "");
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const s = await resp.json();
    renderSummary(s);
    renderMembers(s.members);
    renderDeployments(s.deployments, s.members);
    renderJobs(s.jobs);
    renderMemory(s.memory);
    drawPlot(s.history);
    conn.textContent = "live · " + new Date(s.at * 1000).toLocaleTimeString();
    conn.className = "conn ok";
  } catch (err) {
    conn.textContent = "disconnected (" + err.message + ")";
    conn.className = "conn err";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
