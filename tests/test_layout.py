"""Each third-party I/O library has one home in broker_agent/ (STYLE.md, "Shape of this project").

Every module of the package is parsed with ``ast``; ``import X``, ``import X.y``,
``from X import y``, ``from X.y import z`` and ``importlib.import_module("X...")`` all count,
wherever they appear (module level, inside a function, under ``if TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "broker_agent"


@dataclass(frozen=True)
class Home:
    libraries: frozenset[str]
    allowed: tuple[str, ...]  # paths relative to broker_agent/; a trailing "/" is a directory

    def admits(self, module: str) -> bool:
        return any(
            module.startswith(place) if place.endswith("/") else module == place
            for place in self.allowed
        )


HOMES = {
    "mqtt": Home(frozenset({"aiomqtt", "paho"}), ("mqtt/",)),
    "esptool": Home(
        frozenset({"esptool", "esp_pylib"}), ("station/flasher.py", "station/esptool_log.py")
    ),
    "watchfiles": Home(frozenset({"watchfiles"}), ("fleet/watcher.py",)),
    "web framework": Home(frozenset({"fastapi", "starlette", "uvicorn"}), ("http/",)),
    "metrics library": Home(frozenset({"prometheus_client"}), ("http/",)),
}


@dataclass(frozen=True)
class Import:
    module: str  # relative to broker_agent/, e.g. "fleet/watcher.py"
    line: int
    name: str  # the dotted name imported, e.g. "paho.mqtt.client"

    @property
    def root(self) -> str:
        return self.name.split(".")[0]

    def __str__(self) -> str:
        return f"broker_agent/{self.module}:{self.line}: {self.name}"


def imports_in(source: str, module: str) -> list[Import]:
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(module, node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(module, node.lineno, node.args[0].value))
    return found


def package_imports() -> list[Import]:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert modules, f"no modules under {PACKAGE}"
    return [
        found
        for path in modules
        for found in imports_in(
            path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).as_posix()
        )
    ]


def offenders(imports: list[Import], home: Home) -> list[str]:
    return [
        str(found)
        for found in imports
        if found.root in home.libraries and not home.admits(found.module)
    ]


@pytest.mark.parametrize("home", HOMES.values(), ids=HOMES.keys())
def test_each_io_library_is_imported_only_in_its_home(home: Home) -> None:
    assert [] == offenders(package_imports(), home)


def test_every_home_exists() -> None:
    """A renamed home would make its rule vacuous: each allowed path must be in the package."""
    missing = [
        place for home in HOMES.values() for place in home.allowed if not (PACKAGE / place).exists()
    ]
    assert [] == missing


# -- the checker itself, on made-up sources ---------------------------------------------------

OFFENDING = """\
import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from esptool import cmds
import esp_pylib.x

def later():
    from watchfiles import awatch
    import uvicorn
    return importlib.import_module("starlette.routing")
"""


def test_every_form_of_import_is_found_with_its_line() -> None:
    found = imports_in(OFFENDING, "fleet/plan.py")
    everywhere = Home(frozenset({i.root for i in found}), ())

    assert [
        "broker_agent/fleet/plan.py:1: aiomqtt",
        "broker_agent/fleet/plan.py:2: paho.mqtt.client",
        "broker_agent/fleet/plan.py:3: paho.mqtt.properties",
        "broker_agent/fleet/plan.py:4: esptool",
        "broker_agent/fleet/plan.py:5: esp_pylib.x",
        "broker_agent/fleet/plan.py:8: watchfiles",
        "broker_agent/fleet/plan.py:9: uvicorn",
        "broker_agent/fleet/plan.py:10: starlette.routing",
    ] == offenders(found, everywhere)


def test_a_home_admits_its_files_and_directories_only() -> None:
    found = [
        Import("mqtt/client.py", 1, "aiomqtt"),
        Import("station/flasher.py", 2, "esptool.cmds"),
        Import("station/job.py", 3, "esptool"),
        Import("mqtt_extra.py", 4, "paho"),  # a sibling whose name starts like the directory
        Import("fleet/files.py", 5, "relative_name_aiomqtt"),  # a different library
    ]

    assert ["broker_agent/mqtt_extra.py:4: paho"] == offenders(found, HOMES["mqtt"])
    assert ["broker_agent/station/job.py:3: esptool"] == offenders(found, HOMES["esptool"])
