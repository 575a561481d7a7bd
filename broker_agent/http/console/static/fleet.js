// Fleet: counts per state, server-side filters and paging, rows refreshed live.
import { $, age, api, badge, el, live, short, throttle } from "./common.js";

const PER_PAGE = 50;
const STATES = ["in_sync", "pending", "failed", "stale", "never_applied", "unmanaged"];
const view = { page: 1, state: "", presence: "", q: "" };
let shown = new Set();
let lastTotal = 0;

function renderCounts(counts) {
  const boxes = [el("a", { href: "#", class: "count", "data-state": "", onclick: pick("") },
    el("b", {}, counts.devices ?? 0), " devices")];
  for (const state of STATES) {
    boxes.push(el("a", { href: "#", class: `count ${state}`, "data-state": state, onclick: pick(state) },
      el("b", {}, counts[state] ?? 0), ` ${state}`));
  }
  boxes.push(el("span", { class: "count presence" },
    `${counts.online ?? 0} online · ${counts.offline ?? 0} offline · ${counts.unknown ?? 0} unknown`));
  $("#counts").replaceChildren(...boxes);
}

function pick(state) {
  return (event) => {
    event.preventDefault();
    $("#filters").state.value = state;
    readFilters();
  };
}

function row(device) {
  let ack = device.ack_ok === null ? "none" : device.ack_ok ? "ok" : `error: ${device.ack_error}`;
  if (device.ack_sha256 && device.ack_sha256 !== device.sha256) ack += " (an older config)";
  return el("tr", { id: `row-${device.device_id}`, "data-device": device.device_id },
    el("td", {}, el("a", { href: `/console/devices/${device.device_id}` }, device.device_id)),
    el("td", { class: "state" }, badge(device.state)),
    el("td", { class: "presence" }, badge(device.presence)),
    el("td", { class: "mono" }, short(device.sha256)),
    el("td", {}, age(device.age_s)),
    el("td", { class: device.ack_ok === false ? "error" : "" }, ack),
    el("td", {}, device.fw_version || ""));
}

async function load() {
  const params = new URLSearchParams({ page: view.page, per_page: PER_PAGE });
  for (const name of ["state", "presence", "q"]) if (view[name]) params.set(name, view[name]);
  const { ok, data } = await api("GET", `/api/devices?${params}`);
  if (!ok) return;
  renderCounts(data.counts);
  $("#devices tbody").replaceChildren(...data.items.map(row));
  shown = new Set(data.items.map((d) => d.device_id));
  lastTotal = data.total;
  const pages = Math.max(1, Math.ceil(data.total / PER_PAGE));
  $("#page").textContent = `page ${view.page} of ${pages} · ${data.total} devices`;
  $("#prev").disabled = view.page <= 1;
  $("#next").disabled = view.page >= pages;
  document.body.dataset.loaded = String(Date.now());
}

const reload = throttle(load, 300);

function readFilters() {
  const form = $("#filters");
  view.state = form.state.value;
  view.presence = form.presence.value;
  view.q = form.q.value.trim();
  view.page = 1;
  load();
}

$("#filters").addEventListener("change", readFilters);
$("#filters").addEventListener("input", throttle(readFilters, 250));
$("#filters").addEventListener("submit", (e) => e.preventDefault());
$("#prev").addEventListener("click", () => { view.page -= 1; load(); });
$("#next").addEventListener("click", () => { view.page += 1; load(); });

live((batch, first) => {
  if (batch.counts) renderCounts(batch.counts);
  if (first) return;
  const changed = batch.devices || [];
  const filtered = view.state || view.presence || view.q;
  if (batch.devices_truncated || changed.some((id) => shown.has(id))
      || (changed.length && (filtered || lastTotal < view.page * PER_PAGE))) {
    reload();
  }
});
load();
