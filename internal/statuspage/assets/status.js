// baton's status page: polls status.json (exactly what `baton status
// --json` prints) and redraws the page from it, keeping each accept
// queue's last two minutes for its chart. What the snapshot holds comes
// partly from workers and is untrusted: it is only ever set as text
// (append of strings, textContent, setAttribute), never parsed as HTML.
// index.html renders the same page on the server; keep the two in step.
"use strict";
(() => {
  const POLL_MS = 2000;
  const KEEP = 60; // samples per accept queue: two minutes
  const CONN_STATES = ["ESTAB", "SYN-RECV", "CLOSE-WAIT", "TIME-WAIT"];
  const HANDOFF = ["held", "stored", "adopted", "expired", "refused", "unconfirmed", "rejected"];
  const SVG = "http://www.w3.org/2000/svg";
  const samples = new Map(); // "listener socket" -> queue lengths, oldest first

  const $ = (id) => document.getElementById(id);

  // h makes an element with attributes and children; strings become text.
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const k of kids) {
      if (k !== undefined && k !== null) e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }

  // get reads a dotted JSON path ("reloads.ok") of v.
  const get = (v, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), v);

  function bytes(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let f = n / 1024, i = 0;
    while (f >= 1024 && i < units.length - 1) { f /= 1024; i++; }
    return f.toFixed(1) + " " + units[i];
  }

  function seconds(s) {
    if (s < 1) return Math.trunc(s * 1000) + "ms";
    if (s < 60) return s.toFixed(1) + "s";
    const n = Math.trunc(s), p = (x) => String(Math.trunc(x)).padStart(2, "0");
    if (n < 3600) return Math.trunc(n / 60) + "m" + p(n % 60) + "s";
    if (n < 86400) return Math.trunc(n / 3600) + "h" + p((n % 3600) / 60) + "m";
    return Math.trunc(n / 86400) + "d" + p((n % 86400) / 3600) + "h";
  }

  const clock = (t) => new Date(t).toISOString().slice(11, 19) + "Z";
  const limit = (n) => (n < 0 ? "unlimited" : String(n));
  const meter = (value, max) => h("meter", { min: 0, max: Math.max(max, 0), value });

  // chart draws queue lengths against the queue's maximum (dashed line).
  function chart(qs, max) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${KEEP - 1} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `accept queue, last ${qs.length} samples, maximum ${max}`);
    const y = (q) => (20 - 18 * Math.min(q / Math.max(max, 1), 1)).toFixed(2);
    const top = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", 0], ["x2", KEEP - 1], ["y1", 2], ["y2", 2]]) top.setAttribute(k, v);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", qs.map((q, i) => `${KEEP - qs.length + i},${y(q)}`).join(" "));
    svg.append(top, line);
    return svg;
  }

  function header(st, k) {
    for (const el of document.querySelectorAll("header [data-k]")) {
      el.textContent = String(get(st, el.dataset.k));
    }
    $("health").className = "badge " + st.health.state;
    $("uptime").textContent = seconds(st.uptime);
    $("command").textContent = (st.command || []).join(" ");
    $("reasons").replaceChildren(...(st.health.reasons || []).map((r) => h("li", null, r)));
    $("taken").textContent = k ? clock(k.time) : "";
    document.body.dataset.taken = k ? k.time : "";
  }

  function warnings(k) {
    const ws = (k && k.warnings) || [];
    $("warnings").replaceChildren(...(ws.length === 0 ? [h("li", { class: "none" }, "none")] : ws.map((w) => {
      let where = w.severity;
      if (w.listener) where += " · listener " + w.listener;
      if (w.slot != null) where += " · slot " + w.slot;
      if (w.pid) where += " · pid " + w.pid;
      where += " · since " + clock(w.since);
      return h("li", { class: w.severity }, h("b", null, w.code), " ", h("span", { class: "muted" }, where), h("p", null, w.message));
    })));
  }

  function queueRows(k) {
    const rows = [], seen = new Set();
    ((k && k.listeners) || []).forEach((l, i) => (l.sockets || []).forEach((s, j) => {
      if (s.state !== "LISTEN") return;
      const sock = s.slot == null ? "shared" : "slot " + s.slot, key = `kernel.listeners.${i}.sockets.${j}`;
      const id = l.name + " " + sock, qs = samples.get(id) || [];
      qs.push(s.recv_q);
      if (qs.length > KEEP) qs.shift();
      samples.set(id, qs);
      seen.add(id);
      rows.push(h("tr", null, h("td", null, l.name), h("td", null, sock),
        h("td", null, meter(s.recv_q, s.send_q), " ", h("span", { "data-k": key + ".recv_q" }, s.recv_q), " / ", h("span", { "data-k": key + ".send_q" }, s.send_q)),
        h("td", { class: "chart" }, chart(qs, s.send_q))));
    }));
    for (const id of samples.keys()) if (!seen.has(id)) samples.delete(id);
    $("queues").replaceChildren(...rows);
  }

  function listenerRows(st) {
    $("listeners").replaceChildren(...(st.listeners || []).map((l, i) => h("tr", null,
      h("td", { "data-k": `listeners.${i}.name` }, l.name), h("td", { "data-k": `listeners.${i}.address` }, l.address),
      h("td", null, l.kind), h("td", null, l.balance),
      h("td", null, l.backlog ? h("span", { "data-k": `listeners.${i}.backlog` }, l.backlog) : null))));
  }

  function connRows(k) {
    const tcp = ((k && k.listeners) || []).map((l, i) => [l, i]).filter(([l]) => l.protocol === "tcp");
    const extra = new Set();
    for (const [l] of tcp) for (const s of Object.keys(l.connections || {})) if (!CONN_STATES.includes(s)) extra.add(s);
    const states = CONN_STATES.concat([...extra].sort());
    $("conn-states").replaceChildren(h("th", null, "listener"), ...states.map((s) => h("th", null, s)));
    $("conns").replaceChildren(...tcp.map(([l, i]) => h("tr", null, h("td", null, l.name),
      ...states.map((s) => h("td", { "data-k": `kernel.listeners.${i}.connections.${s}` }, (l.connections || {})[s] || 0)))));
  }

  function workerRows(st, k) {
    const kws = (k && k.workers) || [];
    $("workers").replaceChildren(...(st.workers || []).map((w, i) => {
      const key = `workers.${i}`, j = kws.findIndex((kw) => kw.pid === w.pid), kw = kws[j];
      let fds = null;
      if (kw && kw.fd_limit) {
        fds = h("span", null, meter(kw.fds, kw.fd_limit), " ", h("span", { "data-k": `kernel.workers.${j}.fds` }, kw.fds), " / ",
          h("span", kw.fd_limit >= 0 ? { "data-k": `kernel.workers.${j}.fd_limit` } : null, limit(kw.fd_limit)));
      }
      return h("tr", { class: w.state },
        h("td", { "data-k": key + ".slot" }, w.slot), h("td", { "data-k": key + ".generation" }, w.generation),
        h("td", { "data-k": key + ".pid" }, w.pid), h("td", { "data-k": key + ".state" }, w.state),
        h("td", null, seconds(w.uptime)), h("td", null, w.rss_bytes ? bytes(w.rss_bytes) : ""),
        h("td", null, w.rss_bytes ? Math.round(w.cpu_percent || 0) + "%" : ""),
        h("td", null, w.accepted != null ? h("span", { "data-k": key + ".accepted" }, w.accepted) : null),
        h("td", null, fds), h("td", null, w.status || ""));
    }));
  }

  function historyRows(st) {
    const hs = (st.history || []).map((e, i) => [e, `history.${i}`]).reverse();
    $("history").replaceChildren(...hs.map(([e, key]) => h("tr", { class: e.ok ? "ok" : "failed" },
      h("td", null, clock(e.started)), h("td", { "data-k": key + ".kind" }, e.kind),
      h("td", null, h("span", { "data-k": key + ".previous" }, e.previous), " → ", h("span", { "data-k": key + ".generation" }, e.generation)),
      h("td", null, seconds(e.duration)), h("td", null, e.ok ? "ok" : "failed: " + (e.error || "")), h("td", null, e.reason || ""))));
  }

  function handoff(st) {
    $("handoff").replaceChildren(...HANDOFF.map((n) => h("div", null, h("dt", null, n), h("dd", { "data-k": "handoff." + n }, st.handoff[n] || 0))));
  }

  function render(st) {
    const k = st.kernel || null;
    header(st, k);
    warnings(k);
    queueRows(k);
    listenerRows(st);
    connRows(k);
    workerRows(st, k);
    historyRows(st);
    handoff(st);
  }

  let polls = 0;
  async function poll() {
    try {
      const r = await fetch("status.json", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
      $("state").firstChild.textContent = "snapshot at ";
      document.body.dataset.polls = String(++polls);
    } catch (e) {
      $("health").textContent = "offline";
      $("health").className = "badge offline";
      $("state").firstChild.textContent = "baton did not answer (" + e.message + "); last snapshot at ";
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
