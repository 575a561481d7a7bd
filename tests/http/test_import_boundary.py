"""Only broker_agent/http/server.py imports the web framework; only http/ imports
prometheus_client (STYLE: each third-party I/O library has one home)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "broker_agent"
HOMES = {
    "fastapi": {"http/server.py"},
    "starlette": {"http/server.py"},
    "uvicorn": {"http/server.py"},
    "prometheus_client": {"http/server.py", "http/metrics.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_web_framework_and_metrics_library_stay_in_their_homes() -> None:
    found: dict[str, set[str]] = {library: set() for library in HOMES}
    for path in PACKAGE.rglob("*.py"):
        for root in imported_roots(path) & set(HOMES):
            found[root].add(path.relative_to(PACKAGE).as_posix())
    assert {lib: set() for lib in HOMES} == {lib: found[lib] - HOMES[lib] for lib in HOMES}
    assert {"http/server.py"} == found["fastapi"] | found["uvicorn"]
