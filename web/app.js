// moonbox web UI: a small single-page app over the REST API (same origin).
// The token is kept in localStorage and sent as a bearer token; streams use fetch so
// they can carry it too.
"use strict";

const state = { token: localStorage.getItem("moonbox.token") || "" };
const views = {};

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + state.token },
                           body !== undefined ? { "Content-Type": "application/json" } : {}),
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) { showLogin("The token was refused."); throw new Error("unauthorized"); }
  const text = await res.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* text body */ }
  if (!res.ok) throw new Error((data && data.error && data.error.message) || res.statusText);
  return data;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(String(k ?? "")));
  return e;
}

function showLogin(msg) {
  document.getElementById("login").hidden = false;
  document.getElementById("view").hidden = true;
  document.getElementById("login-error").textContent = msg || "";
}

document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  localStorage.setItem("moonbox.token", state.token);
  document.getElementById("login").hidden = true;
  document.getElementById("view").hidden = false;
  route();
});

views.system = async (root) => {
  const info = await api("GET", "/v1/system/info");
  document.getElementById("who").textContent = `moonbox ${info.version} on ${info.hostname}`;
  root.append(el("div", { class: "card" },
    el("h2", {}, "System"),
    el("table", {},
      ["version", "api_version", "lua_version", "plugin_abi", "state_dir"].map((k) =>
        el("tr", {}, el("th", {}, k), el("td", {}, info[k]))),
      el("tr", {}, el("th", {}, "uptime"), el("td", {}, Math.round(info.uptime) + " s")),
      el("tr", {}, el("th", {}, "acceleration"), el("td", {}, JSON.stringify(info.acceleration))))));
  root.append(el("div", { class: "card" }, el("h2", {}, "Plugins"),
    el("table", {}, el("tr", {}, ["name", "version", "ABI", "resources", "summary"].map((h) => el("th", {}, h))),
      info.plugins.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, p.version),
        el("td", {}, p.abi), el("td", {}, p.resources), el("td", {}, p.summary))))));
};

// Read a streamed response with fetch, calling fn for every non-empty piece between
// separators ("\n" for NDJSON, "\n\n" for server-sent events), until signal aborts or the
// stream ends.
async function readStream(path, signal, sep, fn) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + state.token }, signal });
  if (!res.ok) throw new Error((await res.text()) || res.statusText);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf(sep)) >= 0) {
      const piece = buf.slice(0, i); buf = buf.slice(i + sep.length);
      if (piece) fn(piece);
    }
  }
}

views.events = async (root) => {
  const pre = el("pre", {});
  root.append(el("div", { class: "card" }, el("h2", {}, "Events (live)"), pre));
  const ctrl = new AbortController();
  views.events.stop = () => ctrl.abort();
  await readStream("/v1/events?since=0", ctrl.signal, "\n\n", (block) => {
    const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    if (!data) return;
    const ev = JSON.parse(data);
    pre.prepend(`${new Date(ev.time * 1000).toISOString()}  #${ev.id}  ${ev.type}  ${JSON.stringify(ev.data ?? {})}\n`);
  });
};

// Other scripts (containers.js, ...) register more views and tabs; they load after
// this one and the first route() runs once they all have.
const tabs = [["system", "System"], ["events", "Events"]];

// "#name" or "#name/arg" (e.g. #container/<id>) -> views[name](root, arg)
function route() {
  if (!state.token) return showLogin();
  for (const v of Object.values(views)) if (v.stop) { v.stop(); v.stop = null; }
  const [name, arg] = (location.hash || "#" + tabs[0][0]).slice(1).split("/");
  const nav = document.getElementById("nav");
  nav.replaceChildren(...tabs.map(([k, label]) =>
    el("a", { href: "#" + k, class: k === name || k === name + "s" ? "active" : "" }, label)));
  const root = document.getElementById("view");
  root.replaceChildren();
  const view = views[name] || views[tabs[0][0]];
  view(root, arg && decodeURIComponent(arg)).catch((e) => root.append(el("p", { class: "error" }, e.message)));
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", route);
