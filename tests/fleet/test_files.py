"""Loading config files: every rejection code, the envelope, the canonical hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_agent.errors import ConfigFileError
from broker_agent.fleet.files import FleetSchema, is_candidate, load_config
from firmware_contracts.codes import ConfigErrorCode
from firmware_contracts.payloads import ConfigEnvelope, canonical_config, config_sha256

NO_SCHEMA = FleetSchema(None)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def rejection(
    path: Path, schema: FleetSchema = NO_SCHEMA, max_bytes: int = 1024
) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        load_config(path, schema, max_bytes)
    return info.value


def test_valid_file_becomes_an_envelope_with_the_canonical_hash(tmp_path: Path) -> None:
    path = write(tmp_path / "kitchen-01.json", '{"b": 1, "a": {"z": "é", "y": [1, 2]}}')
    os.utime(path, (1_764_098_506, 1_764_098_506))
    config = load_config(path, NO_SCHEMA, 1024)
    envelope = ConfigEnvelope.model_validate_json(config.envelope)
    assert "kitchen-01" == envelope.device_id
    assert {"b": 1, "a": {"z": "é", "y": [1, 2]}} == envelope.config
    assert "2025-11-25T19:21:46Z" == envelope.updated_at
    canonical = '{"a":{"y":[1,2],"z":"é"},"b":1}'.encode()
    import hashlib

    assert hashlib.sha256(canonical).hexdigest() == envelope.sha256 == config.sha256


@pytest.mark.parametrize(
    ("name", "content", "code", "in_message"),
    [
        ("a.json", '{"x": 1,\n  "y": }', ConfigErrorCode.INVALID_JSON, "line 2 column"),
        ("a.json", b"\xff\xfe{}", ConfigErrorCode.INVALID_JSON, "UTF-8"),
        ("a.json", "[1, 2]", ConfigErrorCode.NOT_AN_OBJECT, "array"),
        ("a.json", '"text"', ConfigErrorCode.NOT_AN_OBJECT, "string"),
        ("a.json", '{"pad": "' + "x" * 2000 + '"}', ConfigErrorCode.TOO_LARGE, "limit of 1024"),
        ("Kitchen.json", "{}", ConfigErrorCode.INVALID_DEVICE_ID, "Kitchen.json"),
        ("a b.json", "{}", ConfigErrorCode.INVALID_DEVICE_ID, "a b.json"),
        ("-x.json", "{}", ConfigErrorCode.INVALID_DEVICE_ID, "-x.json"),
        ("x" * 65 + ".json", "{}", ConfigErrorCode.INVALID_DEVICE_ID, "device_id"),
    ],
)
def test_each_rejection_has_its_code_and_names_the_problem(
    tmp_path: Path, name: str, content: str | bytes, code: ConfigErrorCode, in_message: str
) -> None:
    error = rejection(write(tmp_path / name, content))
    assert code == error.code
    assert in_message in error.message


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").mkdir()
    assert ConfigErrorCode.UNREADABLE == rejection(tmp_path / "a.json").code


def test_schema_violations_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    schema_path = write(
        tmp_path / "_schema.json",
        json.dumps(
            {
                "type": "object",
                "required": ["interval"],
                "properties": {
                    "interval": {"type": "integer"},
                    "led": {"type": "object", "properties": {"level": {"maximum": 100}}},
                },
            }
        ),
    )
    schema = FleetSchema.load(schema_path, 1024)
    error = rejection(write(tmp_path / "a.json", '{"led": {"level": 250}}'), schema)
    assert ConfigErrorCode.SCHEMA_VIOLATION == error.code
    assert "$.led.level" in error.message
    assert "'interval' is a required property" in error.message


def test_an_invalid_schema_is_itself_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "_schema.json", '{"type": 12}')
    with pytest.raises(ConfigFileError) as info:
        FleetSchema.load(path, 1024)
    assert ConfigErrorCode.SCHEMA_VIOLATION == info.value.code


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.json", True),
        ("_schema.json", True),
        (".a.json.swp", False),
        ("a.json~", False),
        ("a.json.tmp", False),
        (".hidden.json", False),
        ("notes.txt", False),
        ("a.json.swp", False),
        ("#a.json#", False),
    ],
)
def test_editor_artefacts_are_not_candidates(name: str, expected: bool) -> None:
    assert expected == is_candidate(name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_hash_ignores_key_order_and_whitespace(config: dict[str, object]) -> None:
    reordered = dict(reversed(list(config.items())))
    pretty = json.loads(json.dumps(reordered, indent=3, ensure_ascii=True))
    assert config_sha256(config) == config_sha256(pretty)
    assert config == json.loads(canonical_config(config))


@given(st.dictionaries(st.text(min_size=1), st.integers(), min_size=1, max_size=6), st.integers())
def test_canonical_hash_changes_with_any_value(config: dict[str, int], delta: int) -> None:
    key = sorted(config)[0]
    changed = {**config, key: config[key] + (delta or 1)}
    assert config_sha256(config) != config_sha256(changed)
