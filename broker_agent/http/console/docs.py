"""``/api/docs`` from this server: Swagger UI's files served locally, no CDN.

FastAPI's own docs page loads Swagger UI from a public CDN and starts it with an inline
script; behind an air gap it stays blank, and the console's Content-Security-Policy (no inline
script) would block it anyway. The Swagger UI files come from the ``swagger-ui-py`` package
(Swagger UI 5, which renders the OpenAPI 3.1 that FastAPI generates; the older
``swagger-ui-bundle`` ships Swagger UI 4, which refuses 3.1 documents); only its static files
are used. The page, and the two-line script that starts Swagger UI, are served from here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

DOCS_PATH = "/api/docs"
_INIT = """window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#swagger-ui",
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis]});
"""
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>broker-agent API</title>
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script></body></html>
"""


def swagger_ui_dir() -> Path | None:
    try:
        import swagger_ui  # type: ignore[import-untyped]  # no py.typed; only its files
    except ImportError:  # then FastAPI's CDN page stays
        return None
    return Path(swagger_ui.__file__).resolve().parent / "static"


def serve_docs_locally(app: FastAPI) -> None:
    """Replace FastAPI's CDN docs page with one served entirely by this server."""
    assets = swagger_ui_dir()
    if assets is None:
        return
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (isinstance(route, Route) and route.path == DOCS_PATH)
    ]

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    @app.get(f"{DOCS_PATH}/init.js", include_in_schema=False)
    async def init() -> PlainTextResponse:
        return PlainTextResponse(_INIT, media_type="text/javascript")

    app.mount(f"{DOCS_PATH}/assets", StaticFiles(directory=assets), name="swagger-ui")
