import { $ } from "./common.js";

const form = $("#login");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = new FormData(form);
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ username: fields.get("username"), password: fields.get("password") }),
  });
  if (response.ok) {
    const next = new URLSearchParams(location.search).get("next") || "/console/";
    location.href = next.startsWith("/console/") ? next : "/console/";
    return;
  }
  const body = await response.json().catch(() => ({}));
  $("#login-error").textContent = body?.error?.message || `login failed (${response.status})`;
});
