// Stations: ports busy/free, a Flash action per port, live job progress, cancel, results + hints.
import { $, api, badge, el, live, plain, throttle } from "./common.js";

const open = new Set(); // ports whose flash form has input: not re-rendered under the operator

function jobView(job, stationId) {
  const failed = job.status === "error";
  return el("li", { id: `job-${job.request_id}`, class: `job status-${job.status}`, "data-status": job.status },
    el("div", {},
      el("b", {}, job.device_id || "?"), ` on ${job.port || "(one candidate port)"} · `,
      el("span", { class: "phase" }, job.phase), " · ",
      el("span", { class: "status" }, job.status),
      job.final ? null : el("button", { class: "cancel", onclick: () => cancel(stationId, job.request_id) }, "Cancel")),
    el("progress", { max: 100, value: job.progress, "aria-label": "progress" }),
    el("span", { class: "percent" }, `${job.progress} %`),
    failed ? el("div", { class: "result error" },
      el("code", { class: "code" }, job.error?.code || "error"), ` ${job.error?.message || ""}`,
      job.error?.cause ? ` (cause: ${job.error.cause.code}: ${job.error.cause.message})` : "",
      job.hint ? el("div", { class: "hint" }, "What to do: ", plain(job.hint)) : null) : null,
    job.status === "ok" ? el("div", { class: "result ok" },
      `done: ${job.chip?.type || ""} ${job.chip?.mac || ""} md5 ${job.md5 || ""}`) : null,
    el("small", { class: "mono" }, job.request_id));
}

function portRow(station, port) {
  const form = $("#flash-form").content.firstElementChild.cloneNode(true);
  form.dataset.port = port.port;
  form.addEventListener("input", () => open.add(port.port));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { device_id: form.device_id.value.trim(), port: port.port };
    if (form.expected_mac.value.trim()) body.expected_mac = form.expected_mac.value.trim();
    const { status, data } = await api("POST", `/api/stations/${station.station_id}/jobs`, body);
    open.delete(port.port);
    if (status !== 202) alert(`Not started: ${JSON.stringify(data)}`);
    load();
  });
  return el("tr", { "data-port": port.port },
    el("td", { class: "mono" }, port.port), el("td", {}, port.description || ""),
    el("td", { class: "busy" }, badge(port.busy ? "busy" : "free")),
    el("td", {}, station.state === "online" && !port.busy ? form : ""));
}

function stationView(station) {
  return el("section", { class: "card station", id: `station-${station.station_id}`, "data-state": station.state },
    el("h2", {}, station.station_id, " ", badge(station.state)),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "port"), el("th", {}, "board"),
      el("th", {}, ""), el("th", {}, "flash"))),
      el("tbody", {}, station.ports.map((port) => portRow(station, port)))),
    el("h3", {}, "Jobs"),
    el("ul", { class: "jobs" }, station.jobs.map((job) => jobView(job, station.station_id))));
}

async function cancel(stationId, requestId) {
  await api("DELETE", `/api/stations/${stationId}/jobs/${encodeURIComponent(requestId)}`);
}

async function load() {
  if (open.size) return; // the operator is typing: the next update after submit redraws
  const { ok, data } = await api("GET", "/api/stations");
  if (!ok) return;
  const list = data.stations.length ? data.stations.map(stationView)
    : [el("p", {}, "No station has announced itself on this broker.")];
  $("#stations").replaceChildren(...list);
  document.body.dataset.loaded = String(Date.now());
}

// The device picker: ids matching what the operator typed, asked from the server (the fleet
// may be 10,000 devices: never all of them).
async function suggest(event) {
  const typed = event.target.value.trim();
  if (event.target.name !== "device_id" || typed.length < 1) return;
  const { ok, data } = await api("GET", `/api/devices?q=${encodeURIComponent(typed)}&per_page=20`);
  if (ok) $("#device-ids").replaceChildren(...data.items.map((d) => el("option", { value: d.device_id })));
}

$("#stations").addEventListener("input", (event) => { suggest(event); });

const reload = throttle(load, 150);
live((batch, first) => {
  if (!first && (batch.reload || (batch.stations || []).length || (batch.jobs || []).length)) reload();
});
load();
