// Device: facts, the config editor (If-Match, inline schema errors, conflicts), delete, NVS image.
import { $, age, api, badge, el, live, short } from "./common.js";

const deviceId = document.body.dataset.device;
let baseSha = null;
let edited = false;

function fact(name, ...value) {
  return [el("dt", {}, name), el("dd", { "data-fact": name }, ...value)];
}

async function load(replaceEditor) {
  const { status, data } = await api("GET", `/api/devices/${deviceId}`);
  $("#title").textContent = deviceId;
  if (status === 404) {
    $("#missing").hidden = false;
    $("#missing").textContent = "The broker retains nothing for this device (no config, ack or status).";
    $("#facts").replaceChildren();
    baseSha = null;
    return;
  }
  $("#missing").hidden = true;
  const ack = data.ack;
  const ackText = !ack ? "none" : ack.ok ? `ok for ${short(ack.sha256)}` : `failed for ${short(ack.sha256)}`;
  const ackError = ack && ack.error ? (typeof ack.error === "string" ? ack.error : `${ack.error.code}: ${ack.error.message}`) : "";
  $("#facts").replaceChildren(
    ...fact("state", badge(data.state)),
    ...fact("presence", badge(data.presence)),
    ...fact("sha256", el("span", { class: "mono" }, data.sha256 || "(no config)")),
    ...fact("updated", data.updated_at ? `${data.updated_at} (${age(data.age_s)} ago)` : ""),
    ...fact("last ack", ackText, ack && ack.ts ? ` at ${ack.ts}` : ""),
    ...fact("ack error", el("span", { class: "error" }, ackError)),
    ...fact("firmware", data.status?.fw_version || ""),
  );
  // The editor and the sha256 it is based on change together: a live update does not touch
  // an edit in progress, so saving it later is checked against what the operator started from.
  if (replaceEditor || !edited) {
    baseSha = data.sha256;
    $("#editor").value = data.config ? JSON.stringify(data.config, null, 2) : "{\n}";
    edited = false;
  }
  document.body.dataset.state = data.state || "";
}

function result(text, kind = "") {
  const box = $("#write-result");
  box.className = kind;
  box.textContent = text;
}

async function save() {
  $("#violations").replaceChildren();
  let config;
  try {
    config = JSON.parse($("#editor").value);
  } catch (error) {
    result(`Not valid JSON: ${error.message}`, "error");
    return;
  }
  const headers = baseSha ? { "If-Match": `"${baseSha}"` } : { "If-None-Match": "*" };
  result("Saving…");
  const { status, data } = await api("PUT", `/api/devices/${deviceId}/config`, config, headers);
  if (status === 200) {
    result(`Saved: sha256 ${short(data.sha256)}. The device shows pending until it acknowledges.`, "ok");
    edited = false;
    await load(true);
  } else if (status === 409) {
    result(`Not saved: someone changed this config after you loaded it (${data.error.message}). `
      + "Reload to see the current config; your edit is still in the editor.", "error");
  } else if (status === 422 && data.violations) {
    result("Not saved: the config does not match the fleet schema:", "error");
    $("#violations").replaceChildren(...data.violations.map(
      (v) => el("li", {}, el("code", {}, v.path), ` ${v.message}`)));
  } else {
    result(`Not saved: ${data?.error?.code || status}: ${data?.error?.message || ""}`, "error");
  }
}

async function remove() {
  if (!confirm(`Delete the config of ${deviceId}? The agent deletes its file and clears the retained config.`)) return;
  const headers = baseSha ? { "If-Match": `"${baseSha}"` } : {};
  const { status, data } = await api("DELETE", `/api/devices/${deviceId}/config`, undefined, headers);
  if (status === 200) result("Deleted.", "ok");
  else result(`Not deleted: ${data?.error?.code || status}: ${data?.error?.message || ""}`, "error");
  await load(true);
}

async function provision(event) {
  event.preventDefault();
  const size = Number($("#provision").partition_size.value);
  const out = $("#provision-result");
  if (!Number.isInteger(size)) {
    out.textContent = "The size is a number (decimal or 0x hex).";
    return;
  }
  out.textContent = "Asking an agent…";
  const { status, data } = await api("GET", `/api/devices/${deviceId}/provisioning?partition_size=${size}`);
  if (status !== 200) {
    out.textContent = `No image: ${data?.error?.code || status}: ${data?.error?.message || ""}`;
    return;
  }
  const bytes = Uint8Array.from(atob(data.data), (c) => c.charCodeAt(0));
  const link = el("a", { download: `${deviceId}-nvs.bin`, href: URL.createObjectURL(new Blob([bytes])) });
  document.body.append(link);
  link.click();
  link.remove();
  out.textContent = `Downloaded ${deviceId}-nvs.bin (${data.size} bytes).`;
}

$("#editor").addEventListener("input", () => { edited = true; });
$("#save").addEventListener("click", save);
$("#reload").addEventListener("click", () => { result(""); $("#violations").replaceChildren(); load(true); });
$("#delete").addEventListener("click", remove);
$("#provision").addEventListener("submit", provision);

live((batch, first) => {
  if (!first && (batch.devices || []).includes(deviceId)) load(false);
});
load(true);
