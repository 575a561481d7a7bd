// Shared by every console page: the API (with the session's CSRF token), live updates, helpers.
export const $ = (selector, root = document) => root.querySelector(selector);

// A DOM element; strings become text nodes (never HTML), so no value is ever interpreted.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function toLogin() {
  location.href = "/console/login?next=" + encodeURIComponent(location.pathname);
}

// One request per page: concurrent callers share it (two would make two open sessions, and the
// cookie of one would go with the CSRF token of the other).
let pending = null;
export function getSession() {
  pending = pending || fetchSession();
  return pending;
}

async function fetchSession() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) {
    toLogin();
    throw new Error("login required");
  }
  const session = await response.json();
  const who = $("#who");
  if (who) {
    who.replaceChildren(session.user || "");
    if (session.login_required) {
      who.append(" ", el("button", { class: "link", onclick: logout }, "log out"));
    }
  }
  return session;
}

async function logout() {
  await api("POST", "/api/logout");
  location.href = "/console/login";
}

export async function api(method, path, body, headers = {}) {
  const current = await getSession();
  const sent = { ...headers };
  if (method !== "GET") sent["X-CSRF-Token"] = current.csrf_token;
  let payload;
  if (body !== undefined) {
    sent["Content-Type"] = sent["Content-Type"] || "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers: sent, body: payload, credentials: "same-origin" });
  if (response.status === 401) toLogin();
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { status: response.status, ok: response.ok, data, headers: response.headers };
}

// Live updates: "hello" once connected, then "update" batches (changed ids, counts, events).
export async function live(onUpdate) {
  await getSession();
  const dot = $("#live");
  const source = new EventSource("/api/events");
  source.addEventListener("hello", (e) => {
    dot?.classList.add("on");
    document.body.dataset.live = "on";
    onUpdate(JSON.parse(e.data), true);
  });
  source.addEventListener("update", (e) => onUpdate(JSON.parse(e.data), false));
  source.onerror = () => {
    dot?.classList.remove("on");
    document.body.dataset.live = "off";
  };
  return source;
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

export const short = (sha) => (sha ? sha.slice(0, 12) : "");

// docs/station.md writes hints in Markdown; shown here as plain text.
export const plain = (text) => (text || "").replaceAll("**", "").replaceAll("`", "");

export function badge(value) {
  return el("span", { class: `badge ${value || "none"}` }, value || "—");
}

// Run fn at most once per `ms`, trailing call kept.
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  return () => {
    if (timer) {
      again = true;
      return;
    }
    fn();
    timer = setTimeout(() => {
      timer = null;
      if (again) {
        again = false;
        fn();
      }
    }, ms);
  };
}
