// Containers and images pages of the web UI: the list with its actions, and a page per
// container with its state, logs (followed), live stats with a short chart, and a shell
// (interactive exec over the WebSocket, without a tty: a line-based terminal).
// Uses api(), el(), views, tabs and state from app.js.
"use strict";

const enc = encodeURIComponent;

function fmtBytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function fmtPorts(ports) {
  return (ports || []).map((p) =>
    `${p.host_ip && p.host_ip !== "0.0.0.0" ? p.host_ip + ":" : ""}${p.host_port}->${p.container_port}/${p.proto}`).join(", ");
}

// Which actions make sense in which state (the daemon answers 409 otherwise anyway).
const ACTIONS = {
  running: ["stop", "restart", "pause"],
  paused: ["resume", "stop"],
  stopped: ["start"],
  error: ["start"],
  created: ["start"],
  restarting: ["stop"],
};

function actionButtons(c, after) {
  const out = (ACTIONS[c.state] || []).map((a) => el("button", {
    onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api("POST", `/v1/containers/${enc(c.id)}/${a}`); } catch (e) { alert(`${a}: ${e.message}`); }
      after();
    },
  }, a));
  out.push(el("button", {
    class: "danger",
    onclick: async () => {
      if (!confirm(`Remove ${c.name}${c.state === "running" ? " (it is running)" : ""}?`)) return;
      try { await api("DELETE", `/v1/containers/${enc(c.id)}?force=1`); } catch (e) { alert(`remove: ${e.message}`); }
      after();
    },
  }, "remove"));
  return out;
}

// An NDJSON stream: fn for every line (readStream is in app.js)
const readLines = (path, signal, fn) => readStream(path, signal, "\n", fn);

views.containers = async (root) => {
  const body = el("tbody", {});
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ["name", "image", "status", "ports", "actions"].map((h) => el("th", {}, h)))), body);
  const form = el("form", { class: "inline" },
    el("input", { name: "image", placeholder: "image (e.g. registry:5000/nginx)", size: "40", required: "" }),
    el("input", { name: "name", placeholder: "name (optional)" }),
    el("input", { name: "ports", placeholder: "ports: 8080:80, 5353:53/udp" }),
    el("button", { type: "submit" }, "Run"));
  const msg = el("p", { class: "error" });
  root.append(el("div", { class: "card" }, el("h2", {}, "Containers"), table), el("div", { class: "card" },
    el("h2", {}, "Run a container"), form, msg));
  let timer = null;
  const refresh = async () => {
    clearTimeout(timer);
    let list;
    try { list = await api("GET", "/v1/containers?all=1"); } catch (e) { msg.textContent = e.message; return; }
    body.replaceChildren(...list.map((c) => el("tr", {},
      el("td", {}, el("a", { href: "#container/" + c.id }, c.name)),
      el("td", {}, c.image),
      el("td", { class: "state-" + c.state }, c.status),
      el("td", {}, fmtPorts(c.ports)),
      el("td", {}, actionButtons(c, refresh)))));
    if (list.length === 0) body.append(el("tr", {}, el("td", { colspan: "5" }, "No containers yet.")));
    timer = setTimeout(refresh, 3000);
  };
  views.containers.stop = () => clearTimeout(timer);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const spec = { image: f.get("image").trim() };
    if (f.get("name").trim()) spec.name = f.get("name").trim();
    const ports = f.get("ports").split(",").map((s) => s.trim()).filter(Boolean);
    if (ports.length) spec.ports = ports;
    msg.textContent = "starting " + spec.image + " (pulled first if needed)...";
    try {
      await api("POST", "/v1/containers?start=1", spec);
      msg.textContent = "";
      form.reset();
    } catch (e) { msg.textContent = e.message; }
    refresh();
  });
  await refresh();
};

// A small SVG line chart of the last values.
function chart(values, max, label) {
  const w = 300, h = 60;
  const m = Math.max(max || 0, ...values, 1e-9);
  const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${h - (v / m) * h}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  pl.setAttribute("points", pts);
  svg.append(pl);
  return el("figure", {}, svg, el("figcaption", {}, label));
}

views.container = async (root, id) => {
  const ctrl = new AbortController();
  const sockets = [];
  views.container.stop = () => { ctrl.abort(); sockets.forEach((s) => s.close()); };
  const c = await api("GET", `/v1/containers/${enc(id)}`);
  const head = el("div", { class: "card" });
  const drawHead = (c) => head.replaceChildren(
    el("h2", {}, c.name, " ", el("small", {}, c.id.slice(0, 12))),
    el("table", {},
      el("tr", {}, el("th", {}, "image"), el("td", {}, c.image)),
      el("tr", {}, el("th", {}, "state"), el("td", { class: "state-" + c.state }, c.status || c.state)),
      el("tr", {}, el("th", {}, "ports"), el("td", {}, fmtPorts(c.ports))),
      el("tr", {}, el("th", {}, "command"), el("td", {}, (c.config && c.config.argv || []).join(" ")))),
    el("p", {}, actionButtons(c, async () => {
      try { drawHead(await api("GET", `/v1/containers/${enc(id)}`)); } catch (e) { location.hash = "#containers"; }
    })));
  drawHead(c);

  const statsBox = el("div", {});
  const logs = el("pre", { class: "logs" });
  const termOut = el("pre", { class: "logs" });
  const termIn = el("input", { placeholder: "command, Enter to send (e.g. ls /)", size: "60", disabled: "" });
  const termBtn = el("button", {}, "Open a shell");
  root.append(head,
    el("div", { class: "card" }, el("h2", {}, "Stats"), statsBox),
    el("div", { class: "card" }, el("h2", {}, "Logs (followed)"), logs),
    el("div", { class: "card" }, el("h2", {}, "Shell"), termBtn, termOut, termIn));

  // logs: the last 200 lines, then followed
  readLines(`/v1/containers/${enc(id)}/logs?follow=1&tail=200&format=json`, ctrl.signal, (line) => {
    const e = JSON.parse(line);
    logs.append(el("span", { class: e.stream }, `${new Date(e.time * 1000).toISOString()} ${e.line}\n`));
    logs.scrollTop = logs.scrollHeight;
  }).catch(() => {});

  // stats: the kept history for the charts, then the live stream
  const cpu = [], mem = [];
  const drawStats = (s) => {
    statsBox.replaceChildren(
      el("p", {}, `CPU ${s.cpu_percent.toFixed(1)} %  ·  memory ${fmtBytes(s.memory_used)} / ${fmtBytes(s.memory_limit)}`
        + `  ·  net rx ${fmtBytes(s.net_rx)} tx ${fmtBytes(s.net_tx)}  ·  block r ${fmtBytes(s.block_read)}`
        + ` w ${fmtBytes(s.block_write)}  ·  pids ${s.pids}  ·  up ${Math.round(s.uptime)} s`),
      chart(cpu, 100, "CPU %"), chart(mem, s.memory_limit, "memory"));
  };
  const push = (s) => {
    cpu.push(s.cpu_percent || 0); mem.push(s.memory_used || 0);
    if (cpu.length > 120) { cpu.shift(); mem.shift(); }
  };
  if (c.state === "running" || c.state === "paused") {
    try {
      const hist = await api("GET", `/v1/containers/${enc(id)}/stats/history`);
      (Array.isArray(hist) ? hist : (hist && hist.samples) || []).forEach(push);
    } catch (e) { /* no history yet */ }
    readLines(`/v1/containers/${enc(id)}/stats?stream=1`, ctrl.signal, (line) => {
      const s = JSON.parse(line);
      push(s);
      drawStats(s);
    }).catch((e) => { if (!ctrl.signal.aborted) statsBox.append(el("p", { class: "error" }, e.message)); });
  } else {
    statsBox.textContent = "Not running.";
  }

  // the shell: sh through the exec WebSocket (no tty: frames carry a stream byte)
  termBtn.addEventListener("click", () => {
    termBtn.disabled = true;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/v1/containers/${enc(id)}/exec/ws?cmd=sh`
      + `&access_token=${enc(state.token)}`);
    ws.binaryType = "arraybuffer";
    sockets.push(ws);
    const dec = new TextDecoder();
    ws.onopen = () => { termIn.disabled = false; termIn.focus(); };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        const m = JSON.parse(ev.data);
        if (m.type === "exit") termOut.append(el("span", { class: "stderr" }, `[exited with code ${m.exit_code}]\n`));
        if (m.type === "error") termOut.append(el("span", { class: "stderr" }, m.message + "\n"));
        return;
      }
      const b = new Uint8Array(ev.data);
      termOut.append(el("span", { class: b[0] === 2 ? "stderr" : "stdout" }, dec.decode(b.subarray(1))));
      termOut.scrollTop = termOut.scrollHeight;
    };
    ws.onclose = () => { termIn.disabled = true; termBtn.disabled = false; };
    termIn.onkeydown = (ev) => {
      if (ev.key !== "Enter") return;
      termOut.append(el("span", { class: "input" }, "$ " + termIn.value + "\n"));
      ws.send(new TextEncoder().encode(termIn.value + "\n"));
      termIn.value = "";
    };
  });
};

views.images = async (root) => {
  const list = await api("GET", "/v1/images");
  const body = el("tbody", {}, list.map((i) => el("tr", {},
    el("td", {}, (i.references || []).join(", ") || "<none>"),
    el("td", {}, i.short_id || i.id.slice(7, 19)),
    el("td", {}, fmtBytes(i.size)),
    el("td", {}, i.created || ""),
    el("td", {}, el("button", {
      class: "danger",
      onclick: async () => {
        try { await api("DELETE", `/v1/images/${enc(i.id)}`); route(); } catch (e) { alert(e.message); }
      },
    }, "remove")))));
  root.append(el("div", { class: "card" }, el("h2", {}, "Images"),
    el("table", {}, el("thead", {}, el("tr", {}, ["references", "id", "size", "created", ""].map((h) => el("th", {}, h)))),
      body)));
};

tabs.unshift(["containers", "Containers"], ["images", "Images"]);
