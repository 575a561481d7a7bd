// Events: the agents' event stream, newest first, filtered by event name and device id.
import { $, api, el, live } from "./common.js";

const MAX_ROWS = 500;

function filters() {
  const form = $("#filters");
  return { event: form.event.value, q: form.q.value.trim().toLowerCase() };
}

function matches(item, f) {
  return (!f.event || item.event === f.event) && (!f.q || String(item.device_id || "").toLowerCase().includes(f.q));
}

function details(item) {
  const parts = [];
  if (item.error) parts.push(`${item.error.code}: ${item.error.message}`);
  for (const name of ["file", "count", "sha256", "request_id", "reason", "partition_size"]) {
    if (item[name] !== undefined && item[name] !== null) parts.push(`${name}=${item[name]}`);
  }
  return parts.join(" · ");
}

function row(item) {
  return el("tr", { class: item.error ? "error" : "" },
    el("td", { class: "mono" }, item.ts || ""), el("td", {}, item.agent_id || ""),
    el("td", {}, item.event), el("td", {}, item.device_id || ""), el("td", {}, details(item)));
}

async function load() {
  const f = filters();
  const params = new URLSearchParams({ limit: MAX_ROWS });
  if (f.event) params.set("event", f.event);
  if (f.q) params.set("q", f.q);
  const { ok, data } = await api("GET", `/api/events/recent?${params}`);
  if (ok) $("#events tbody").replaceChildren(...data.events.map(row));
}

$("#filters").addEventListener("change", load);
$("#filters").addEventListener("input", load);
$("#filters").addEventListener("submit", (e) => e.preventDefault());
live((batch, first) => {
  if (first) return;
  if (batch.reload) {
    load();
    return;
  }
  const f = filters();
  const body = $("#events tbody");
  for (const item of batch.events || []) if (matches(item, f)) body.prepend(row(item));
  while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
});
load();
