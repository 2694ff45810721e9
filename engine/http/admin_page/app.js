// The Linkd admin page (docs/admin.md): live numbers over /admin/ws, drawn without a
// library. Served under a strict CSP: no inline code, no eval, nothing from elsewhere,
// and every text from the engine goes in with textContent (room and user names are
// the clients' own words).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HISTORY = 120;
  const COLORS = {
    in: "#2563eb", out: "#16a34a", deliveries: "#d97706", p50: "#7c3aed", p99: "#dc2626",
  };
  let points = [];
  let socket = null;
  let failures = 0;

  // ----------------------------------------------------------------- formatting
  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en"));
  const ms = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(3)} ms`);
  const duration = (s) => {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), r = s % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
  };

  function text(id, value) {
    const el = $(id);
    if (el.textContent !== value) el.textContent = value;
  }

  function cell(row, value) {
    const td = document.createElement("td");
    td.textContent = value;
    row.appendChild(td);
    return td;
  }

  function fill(tbody, rows, build) {
    const next = document.createDocumentFragment();
    for (const item of rows) {
      const tr = document.createElement("tr");
      build(tr, item);
      next.appendChild(tr);
    }
    tbody.replaceChildren(next);
  }

  // ------------------------------------------------------------------- snapshot
  function show(s) {
    const node = s.node;
    text("node-id", node.id || "(local)");
    text("node-version", node.version + (node.draining ? " (draining)" : ""));
    text("node-uptime", duration(node.uptime));
    text("node-redis", node.redis || "off");
    text("node-nodes", node.nodes ? node.nodes.join(", ") || "none" : "–");
    text("conn-ws", num(s.connections.websocket));
    text("conn-http", num(s.connections.http));
    text("users", num(s.users));
    text("msg-in", num(s.messages.inPerSec));
    text("msg-out", num(s.messages.outPerSec));
    text("deliveries", num(s.fanout.deliveriesPerSec));
    text("p50", ms(s.fanout.p50Ms));
    text("p99", ms(s.fanout.p99Ms));
    fill($("by-path").tBodies[0], Object.entries(s.connections.byPath), (tr, [path, n]) => {
      cell(tr, path);
      cell(tr, num(n));
    });
    text("room-count", `(${num(s.rooms.count)} in all)`);
    fill($("top-rooms").tBodies[0], s.rooms.top, (tr, room) => {
      const name = cell(tr, "");
      const link = document.createElement("button");
      link.type = "button";
      link.className = "link";
      link.textContent = room.room;
      link.addEventListener("click", () => searchRoom(room.room));
      name.appendChild(link);
      cell(tr, num(room.members));
    });
    fill($("services").tBodies[0], s.services, (tr, svc) => {
      cell(tr, svc.name);
      const live = svc.workers.filter((w) => !w.draining).length;
      const pids = svc.workers.map((w) => `${w.pid || "?"}: ${w.inFlight}/${w.capacity}`);
      cell(tr, `${live} live of ${svc.workerCount}`).title = pids.join("\n");
      cell(tr, num(svc.inFlight));
      cell(tr, num(svc.queued));
      cell(tr, num(svc.errors));
      cell(tr, num(svc.errorsPerSec));
    });
    const ev = s.events;
    const rows = [
      ["slow-consumer closes (1013)", ev.slowConsumerCloses],
      ...Object.entries(ev.slowConsumerEvents).map(([p, n]) => [`slow-consumer policy ${p}`, n]),
      ["slow-consumer events/s", ev.slowPerSec],
      ["messages refused by a rate limit", ev.rateLimitedMessages],
      ["abuse closes (1008)", ev.abuseCloses],
      ["reads throttled", ev.throttled],
      ["rate-limit events/s", ev.rateLimitedPerSec],
      ...Object.entries(ev.refusedConnections).map(([r, n]) => [`connections refused: ${r}`, n]),
    ];
    fill($("events").tBodies[0], rows, (tr, [label, n]) => {
      cell(tr, label);
      cell(tr, num(n));
    });
    if (s.point) addPoint(s.point);
  }

  // ---------------------------------------------------------------------- chart
  function addPoint(point) {
    if (points.length && points[points.length - 1].t >= point.t) return;
    points.push(point);
    if (points.length > HISTORY) points = points.slice(-HISTORY);
    draw($("chart-rate"), ["in", "out", "deliveries"]);
    draw($("chart-latency"), ["p50", "p99"]);
  }

  function draw(canvas, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 48, right = 8, top = 8, bottom = 18;
    const plotW = width - left - right, plotH = height - top - bottom;
    let max = 0;
    for (const p of points) for (const name of series) max = Math.max(max, p[name] || 0);
    max = niceCeiling(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillText(compact((max * i) / 4), left - 6, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("−2 min", left, height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", left + plotW, height - 4);
    if (!points.length) return;
    const now = points[points.length - 1].t;
    const x = (t) => left + plotW - ((now - t) / (HISTORY * 1000)) * plotW;
    const y = (v) => top + plotH - (max ? (v / max) * plotH : 0);
    ctx.lineWidth = 1.75;
    for (const name of series) {
      ctx.strokeStyle = COLORS[name];
      ctx.beginPath();
      let drawing = false;
      for (const p of points) {
        const v = p[name];
        if (v === null || v === undefined || x(p.t) < left) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(p.t), y(v));
        else ctx.moveTo(x(p.t), y(v));
        drawing = true;
      }
      ctx.stroke();
    }
  }

  function niceCeiling(v) {
    if (v <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * step) return m * step;
    return 10 * step;
  }

  function compact(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return `${+v.toFixed(v < 10 ? 2 : 0)}`;
  }

  // ---------------------------------------------------------------- room search
  function searchRoom(room) {
    $("room-input").value = room;
    request({ type: "room", room });
  }

  function showRoom(r) {
    $("room-result").hidden = false;
    text("room-name", r.room);
    text("room-members", num(r.memberCount));
    fill($("members").tBodies[0], r.members, (tr, m) => {
      tr.dataset.connId = String(m.id);
      cell(tr, String(m.id));
      cell(tr, m.userId === null ? "(anonymous)" : m.userId);
      cell(tr, m.username || "");
      cell(tr, m.path || "");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "disconnect";
      button.textContent = "Disconnect";
      button.addEventListener("click", () => {
        button.disabled = true;
        request({ type: "disconnect", connection: m.id });
      });
      cell(tr, "").appendChild(button);
    });
    const list = $("presence");
    const items = document.createDocumentFragment();
    if (r.presence && r.presence.error) {
      const li = document.createElement("li");
      li.textContent = `presence unavailable: ${r.presence.error}`;
      items.appendChild(li);
    } else {
      for (const u of (r.presence && r.presence.users) || []) {
        const li = document.createElement("li");
        li.dataset.userId = u.userId;
        li.textContent = `${u.username || u.userId} (${u.userId}): ${u.connections} connection(s)`;
        items.appendChild(li);
      }
    }
    list.replaceChildren(items);
  }

  function notice(message) {
    text("notice", message);
  }

  // ------------------------------------------------------------------ WebSocket
  function request(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    else notice("not connected");
  }

  function setState(state) {
    const el = $("ws-state");
    el.dataset.state = state;
    el.textContent = state;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/admin/ws`);
    setState("connecting");
    socket.addEventListener("open", () => {
      failures = 0;
      setState("open");
    });
    socket.addEventListener("message", (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "snapshot") show(msg);
      else if (msg.type === "hello") {
        points = msg.history.slice(-HISTORY);
        show(msg.snapshot);
      } else if (msg.type === "room") showRoom(msg);
      else if (msg.type === "disconnected") {
        notice(`connection ${msg.connection}: ${msg.disconnected ? "disconnected" : "not found"}`);
        const room = $("room-name").textContent;
        if (room) request({ type: "room", room });
      } else if (msg.type === "error") notice(msg.message);
    });
    socket.addEventListener("close", (event) => {
      setState("closed");
      socket = null;
      if (event.code === 1008 && event.reason === "session ended") {
        location.assign("/admin/login");
        return;
      }
      failures += 1;
      // Refused upgrades look like 1006 here: after a few, let /admin say why (a
      // lapsed session redirects to the login form).
      if (failures > 3) location.assign("/admin");
      else setTimeout(connect, 1000 * failures);
    });
  }

  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("room-input").value.trim();
    if (room) searchRoom(room);
  });
  connect();
})();
