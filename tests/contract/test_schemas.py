"""The generated JSON Schemas: every documented example validates, and obvious drifts are refused.

Examples are fenced ```json blocks preceded by a marker naming their schema:
``<!-- schema: config_envelope -->``. In docs/firmware.md every ```json block must carry one;
in README.md only the marked blocks are payloads. Every other page under docs/ follows the
firmware page's rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from firmware_contracts import codegen
from firmware_contracts.payloads import DEVICE_STATUS_WILL, SCHEMA_MODELS, config_sha256

PROJECT = Path(__file__).resolve().parents[2]
OPEN_PAYLOADS = frozenset({"device_status"})  # firmware may add its own fields (contract 6.1)
FIRMWARE_DOC = PROJECT / "docs" / "firmware.md"
README = PROJECT / "README.md"

_BLOCK = re.compile(
    r"(?:<!--\s*schema:\s*(?P<stem>[a-z0-9_]+)\s*-->\s*\n)?```json\n(?P<body>.*?)\n```", re.S
)


@dataclass(frozen=True)
class Example:
    source: str
    line: int
    stem: str | None
    body: str

    @property
    def label(self) -> str:
        return f"{self.source}:{self.line}:{self.stem}"


def examples(path: Path) -> Iterator[Example]:
    text = path.read_text(encoding="utf-8")
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("body"))
        yield Example(
            path.relative_to(PROJECT).as_posix(), line, match.group("stem"), match.group("body")
        )


def documented_examples() -> list[Example]:
    found = list(examples(FIRMWARE_DOC))
    for doc in sorted((PROJECT / "docs").glob("*.md")):
        if doc != FIRMWARE_DOC:
            found.extend(examples(doc))
    if README.is_file():
        found.extend(e for e in examples(README) if e.stem is not None)
    return found


def load_schema(stem: str) -> dict[str, Any]:
    path = codegen.GENERATED_DIR / codegen.schema_path(stem)
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def validator(stem: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(stem))


def errors(stem: str, document: object) -> list[str]:
    return [error.message for error in validator(stem).iter_errors(document)]


@pytest.mark.parametrize("stem", sorted(SCHEMA_MODELS))
def test_schema_is_valid_draft_2020_12_with_an_id(stem: str) -> None:
    schema = load_schema(stem)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == codegen.schema_id(stem)
    assert schema["additionalProperties"] is (stem in OPEN_PAYLOADS)


def test_every_json_block_in_the_firmware_doc_names_its_schema() -> None:
    unmarked = [e.label for e in examples(FIRMWARE_DOC) if e.stem is None]
    assert unmarked == []


def test_every_payload_has_a_documented_example() -> None:
    assert {e.stem for e in documented_examples()} >= set(SCHEMA_MODELS)


@pytest.mark.parametrize("example", documented_examples(), ids=lambda e: e.label)
def test_documented_example_validates(example: Example) -> None:
    assert example.stem in SCHEMA_MODELS, f"unknown schema {example.stem!r}"
    document = json.loads(example.body)
    assert errors(example.stem, document) == []
    SCHEMA_MODELS[example.stem].model_validate(document)  # the Python side agrees


def test_documented_configs_carry_their_canonical_sha256() -> None:
    envelopes = [e for e in documented_examples() if e.stem == "config_envelope"]
    assert envelopes
    for example in envelopes:
        document = json.loads(example.body)
        assert config_sha256(document["config"]) == document["sha256"], example.label


# -- drifts the schemas must refuse --------------------------------------------------------


def first_example(stem: str, *path: str) -> dict[str, Any]:
    """A fresh copy of the first documented example of ``stem`` that has ``path``."""
    for example in documented_examples():
        if example.stem != stem:
            continue
        document: dict[str, Any] = json.loads(example.body)
        target: Any = document
        for key in path:
            if not isinstance(target, dict) or key not in target:
                break
            target = target[key]
        else:
            return document
    raise AssertionError(f"no documented {stem} example has {'.'.join(path)}")


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return _resolve(root["$defs"][name], root)
    for option in schema.get("anyOf", ()):
        if option.get("type") != "null":
            return _resolve(option, root)
    return schema


@pytest.mark.parametrize("stem", sorted(SCHEMA_MODELS))
def test_missing_required_field_is_refused(stem: str) -> None:
    schema = load_schema(stem)
    for name in schema.get("required", []):
        document = first_example(stem)
        del document[name]
        assert errors(stem, document), f"{stem} accepted a payload without {name!r}"


@pytest.mark.parametrize("stem", sorted(SCHEMA_MODELS))
def test_extra_field_is_refused(stem: str) -> None:
    document = first_example(stem)
    document["unexpected_field"] = 1
    if stem in OPEN_PAYLOADS:
        assert errors(stem, document) == []
        assert 1 == SCHEMA_MODELS[stem].model_validate(document).dump()["unexpected_field"]
    else:
        assert errors(stem, document)


@pytest.mark.parametrize("stem", sorted(SCHEMA_MODELS))
def test_wrong_enum_or_constant_is_refused(stem: str) -> None:
    schema = load_schema(stem)
    checked = 0
    for name, prop in schema["properties"].items():
        resolved = _resolve(prop, schema)
        if "enum" in resolved or "const" in resolved:
            document = first_example(stem)
            document[name] = "not-a-contract-value"
            assert errors(stem, document), f"{stem}.{name} accepted a value outside the contract"
            checked += 1
    if stem in {
        "config_envelope",
        "agent_status",
        "agent_event",
        "provision_ok",
        "provision_error",
        "station_status",
        "flash_request",
        "flash_event",
        "device_status",
        "config_set_request",
        "config_set_ok",
        "config_set_error",
    }:
        assert checked, f"{stem} has no enum or constant field to check"


@pytest.mark.parametrize(
    ("stem", "path", "value"),
    [
        ("config_envelope", ["device_id"], "Kitchen 01"),
        ("config_envelope", ["sha256"], "D9" * 32),
        ("config_envelope", ["updated_at"], "2026-11-25 19:21:46"),
        ("config_envelope", ["config"], [1, 2]),
        ("config_applied", ["ok"], "yes"),
        ("agent_status", ["agent_id"], "agent/1"),
        ("agent_status", ["devices"], -1),
        ("agent_event", ["error", "code"], 7),
        ("provision_request", ["partition_size"], "20480"),
        ("provision_request", ["request_id"], ""),
        ("provision_request", ["request_id"], "r" * 65),
        ("provision_request", ["request_id"], "tab\there"),
        ("provision_error", ["error", "code"], "no_such_code"),
        ("station_status", ["station_id"], "+"),
        ("flash_request", ["baud"], 1200),
        ("flash_request", ["after"], "reset"),
        ("flash_request", ["device_id"], "#"),
        ("flash_event", ["progress"], 101),
        ("flash_event", ["phase"], "flashing"),
        ("flash_event", ["chip", "mac"], "24-0A-C4-12-34-56"),
        ("flash_event", ["error", "code"], "oops"),
        ("config_applied", ["error"], {"code": "range"}),
        ("config_applied", ["ts"], "2026-11-25"),
        ("device_status", ["state"], "unknown"),
        ("device_status", ["since"], "1700000000"),
        ("fleet_summary", ["stale"], -1),
        ("fleet_summary", ["ts"], None),
        ("config_set_request", ["config"], None),
        ("config_set_request", ["config"], [1]),
        ("config_set_request", ["if_sha256"], "abc"),
        ("config_set_request", ["delete"], False),
        ("config_set_ok", ["sha256"], "D9" * 32),
        ("config_set_ok", ["device_id"], "Kitchen"),
        ("config_set_error", ["error", "code"], "provisioning_failed"),
        ("agent_event", ["event"], "config_changed"),
    ],
)
def test_field_drift_is_refused(stem: str, path: list[str], value: object) -> None:
    document = first_example(stem, *path)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert errors(stem, document), f"{stem} accepted {'.'.join(path)} = {value!r}"


# -- v1.1 rules the schemas carry -----------------------------------------------------------


def test_device_status_will_validates() -> None:
    assert errors("device_status", DEVICE_STATUS_WILL.dump()) == []


@pytest.mark.parametrize(
    ("document", "valid"),
    [
        ({"config": {}}, True),
        ({"merge": {"a": None}, "if_sha256": None}, True),
        ({"delete": True, "request_id": "w-1"}, True),
        ({}, False),
        ({"config": {}, "merge": {}}, False),
        ({"config": {}, "delete": True}, False),
        ({"delete": False}, False),
        ({"merge": None}, False),
    ],
)
def test_config_set_request_schema_takes_exactly_one_operation(
    document: dict[str, Any], valid: bool
) -> None:
    assert valid == (errors("config_set_request", document) == [])
    try:
        SCHEMA_MODELS["config_set_request"].model_validate(document)
    except ValueError:
        assert not valid, "the model refused what the schema accepts"
    else:
        assert valid, "the model accepted what the schema refuses"


def test_config_set_ok_requires_sha256_even_when_null() -> None:
    document = {"request_id": "w-1", "status": "ok", "device_id": "kitchen-01", "sha256": None}
    assert errors("config_set_ok", document) == []
    del document["sha256"]
    assert errors("config_set_ok", document)
