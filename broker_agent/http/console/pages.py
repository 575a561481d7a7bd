"""The console's pages: a small HTML shell each, filled in by a plain JS module (no build step).

The server renders the frame (title, navigation, the page's containers) and the module
(``static/<page>.js``) fetches the REST API and follows ``/api/events``; every value goes into
the page as text (``textContent``), never as HTML. With login required, a page asked for
without a session redirects to ``/console/login``.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker_agent import __version__
from broker_agent.http.console.session import console_of, current_session

router = APIRouter(include_in_schema=False)

_NAV = (
    ("fleet", "/console/", "Fleet"),
    ("stations", "/console/stations", "Stations"),
    ("events", "/console/events", "Events"),
    ("api", "/api/docs", "API"),
)


def render(title: str, active: str, module: str, body: str, data: dict[str, str]) -> str:
    links = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in _NAV
    )
    attrs = "".join(f' data-{name}="{html.escape(value)}"' for name, value in data.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · broker-agent</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/console/static/console.css">
<script type="module" src="/console/static/{module}.js"></script></head>
<body{attrs}><header><strong>broker-agent</strong><nav>{links}</nav>
<span id="who"></span><span id="live" title="live updates">●</span></header>
<main>{body}</main><footer>broker-agent {__version__}</footer></body></html>
"""


def _page(
    request: Request, title: str, active: str, module: str, body: str, **data: str
) -> Response:
    console = console_of(request)
    if console.gate.login_required and current_session(request) is None:
        return RedirectResponse(f"/console/login?next={request.url.path}", status_code=303)
    return HTMLResponse(render(title, active, module, body, data))


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


@router.get("/console/login")
async def login_page() -> HTMLResponse:
    body = """<form id="login" class="card narrow"><h1>Log in</h1>
<label>User <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label><button type="submit">Log in</button><p id="login-error" class="error"></p>
</form>"""
    return HTMLResponse(render("Log in", "", "login", body, {}))


@router.get("/console/")
async def fleet_page(request: Request) -> Response:
    body = """<h1>Fleet</h1><div id="counts" class="counts"></div>
<form id="filters" class="filters">
<select name="state" aria-label="state"><option value="">every state</option>
<option>in_sync</option><option>pending</option><option>failed</option><option>stale</option>
<option>never_applied</option><option>unmanaged</option></select>
<select name="presence" aria-label="presence"><option value="">online or not</option>
<option>online</option><option>offline</option><option>unknown</option></select>
<input name="q" type="search" placeholder="search by device id" aria-label="search">
</form>
<table id="devices"><thead><tr><th>device</th><th>state</th><th>presence</th><th>config</th>
<th>age</th><th>last ack</th><th>firmware</th></tr></thead><tbody></tbody></table>
<div class="pager"><button id="prev">&lsaquo; previous</button><span id="page"></span>
<button id="next">next &rsaquo;</button></div>"""
    return _page(request, "Fleet", "fleet", "fleet", body)


@router.get("/console/devices/{device_id}")
async def device_page(
    request: Request, device_id: str = Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
) -> Response:
    body = """<h1 id="title"></h1><div id="missing" class="error" hidden></div>
<section class="card"><dl id="facts"></dl></section>
<section class="card"><h2>Config</h2>
<textarea id="editor" spellcheck="false" rows="16" aria-label="config JSON"></textarea>
<div class="actions"><button id="save">Save</button><button id="reload">Reload</button>
<button id="delete" class="danger">Delete config…</button></div>
<div id="write-result" role="status"></div><ul id="violations" class="error"></ul></section>
<section class="card"><h2>Provisioning image</h2>
<form id="provision"><label>NVS partition size
<input name="partition_size" value="0x5000" size="10"></label>
<button type="submit">Download NVS image</button></form>
<p id="provision-result" role="status"></p></section>"""
    return _page(request, device_id, "fleet", "device", body, device=device_id)


@router.get("/console/stations")
async def stations_page(request: Request) -> Response:
    body = """<h1>Stations</h1><div id="stations"></div>
<datalist id="device-ids"></datalist>
<template id="flash-form"><form class="flash"><input name="device_id" placeholder="device id"
 required aria-label="device id" list="device-ids" autocomplete="off">
<input name="expected_mac" placeholder="expected MAC (optional)" aria-label="expected MAC">
<button type="submit">Flash</button></form></template>"""
    return _page(request, "Stations", "stations", "stations", body)


@router.get("/console/events")
async def events_page(request: Request) -> Response:
    body = """<h1>Events</h1><form id="filters" class="filters">
<select name="event" aria-label="event"><option value="">every event</option>
<option>config_published</option><option>config_cleared</option><option>config_rejected</option>
<option>config_written</option><option>prune_blocked</option><option>provisioned</option>
</select><input name="q" type="search" placeholder="device id" aria-label="device id"></form>
<table id="events"><thead><tr><th>time</th><th>agent</th><th>event</th><th>device</th>
<th>details</th></tr></thead><tbody></tbody></table>"""
    return _page(request, "Events", "events", "events", body)
