"""Issue 9: a single file stops the fleet. Every kind of bad file, dropped into the config
directory of a running agent, is rejected with its code; the last good config stays retained,
and the agent keeps publishing the good edits made after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker_agent.errors import ConfigFileError
from broker_agent.fleet.files import FleetSchema, load_config
from firmware_contracts.codes import ConfigErrorCode
from firmware_contracts.payloads import ConfigEnvelope
from tests.support.agent import agent_settings, running_agent
from tests.support.bad_files import BAD_FILES
from tests.support.broker import Broker
from tests.support.mqtt import Observer, observe

pytestmark = pytest.mark.timeout(60)

LAST_GOOD = {"interval": 30}
DEVICE_TOPIC = "iot/devices/dev-1/config"
LATER_TOPIC = "iot/devices/later-1/config"


def rejections(observer: Observer, file: str) -> list[dict[str, Any]]:
    return [e for e in observer.events() if e["event"] == "config_rejected" and e["file"] == file]


def retained_config(observer: Observer, topic: str) -> dict[str, Any] | None:
    payload = observer.latest.get(topic)
    return ConfigEnvelope.model_validate_json(payload).config if payload else None


async def good_edit_is_published(config_dir: Path, seen: Observer) -> None:
    (config_dir / "later-1.json").write_text(json.dumps({"after": True}))
    await seen.wait_for(lambda: retained_config(seen, LATER_TOPIC) == {"after": True})


@pytest.mark.parametrize("kind", list(BAD_FILES))
async def test_a_bad_file_is_rejected_and_the_agent_keeps_publishing(
    broker: Broker, tmp_path: Path, kind: str
) -> None:
    make, code, in_message = BAD_FILES[kind]
    config_dir, outside = tmp_path / "configs", tmp_path / "outside"
    config_dir.mkdir()
    outside.mkdir()
    (config_dir / "dev-1.json").write_text(json.dumps(LAST_GOOD))

    async with (
        observe(broker.url, "iot/devices/+/config", "iot/agents/#") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        await seen.wait_for(lambda: retained_config(seen, DEVICE_TOPIC) == LAST_GOOD)
        make(config_dir / "dev-1.json", outside)
        await seen.wait_for(lambda: bool(rejections(seen, "dev-1.json")))
        await good_edit_is_published(config_dir, seen)
        assert LAST_GOOD == retained_config(seen, DEVICE_TOPIC)  # neither cleared nor replaced
        found = rejections(seen, "dev-1.json")

    assert code == found[0]["error"]["code"]
    assert "dev-1" == found[0]["device_id"]
    assert in_message in found[0]["error"]["message"]


@pytest.mark.parametrize(
    ("schema", "in_message"),
    [
        ({"properties": {"name": {"pattern": "(unclosed"}}}, "regex"),
        ({"patternProperties": {"[a-": {"type": "string"}}}, "regex"),
        ({"$ref": "https://schemas.example.invalid/never-fetched.json"}, "cannot be used"),
        ({"$schema": ["not", "a", "uri"]}, "cannot be used"),
    ],
    ids=["invalid-pattern", "invalid-pattern-property", "unresolvable-ref", "schema-not-a-string"],
)
async def test_an_unusable_schema_is_rejected_and_configs_keep_flowing(
    broker: Broker, tmp_path: Path, schema: dict[str, Any], in_message: str
) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "dev-1.json").write_text(json.dumps(LAST_GOOD))

    async with (
        observe(broker.url, "iot/devices/+/config", "iot/agents/#") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        await seen.wait_for(lambda: retained_config(seen, DEVICE_TOPIC) == LAST_GOOD)
        (config_dir / "_schema.json").write_text(json.dumps(schema))
        await seen.wait_for(lambda: bool(rejections(seen, "_schema.json")))
        await good_edit_is_published(config_dir, seen)
        assert LAST_GOOD == retained_config(seen, DEVICE_TOPIC)
        found = rejections(seen, "_schema.json")

    assert "schema_violation" == found[0]["error"]["code"]
    assert in_message in found[0]["error"]["message"]


async def test_a_schema_failing_only_for_some_configs_rejects_those_configs(
    broker: Broker, tmp_path: Path
) -> None:
    """A $ref reached only through one property: the schema loads, that config is rejected."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    schema = {"properties": {"extra": {"$ref": "https://schemas.example.invalid/x.json"}}}
    (config_dir / "_schema.json").write_text(json.dumps(schema))

    async with (
        observe(broker.url, "iot/devices/+/config", "iot/agents/#") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        (config_dir / "dev-1.json").write_text(json.dumps({"extra": 1}))
        await seen.wait_for(lambda: bool(rejections(seen, "dev-1.json")))
        await good_edit_is_published(config_dir, seen)
        assert retained_config(seen, DEVICE_TOPIC) is None
        found = rejections(seen, "dev-1.json")

    assert "schema_violation" == found[0]["error"]["code"]
    assert "could not be applied" in found[0]["error"]["message"]


async def test_a_symlink_inside_the_config_directory_is_published(
    broker: Broker, tmp_path: Path
) -> None:
    config_dir = tmp_path / "configs"
    (config_dir / "shared").mkdir(parents=True)
    (config_dir / "shared" / "base.data").write_text(json.dumps({"from": "link"}))
    (config_dir / "dev-1.json").symlink_to("shared/base.data")

    async with (
        observe(broker.url, "iot/devices/+/config") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        await seen.wait_for(lambda: DEVICE_TOPIC in seen.latest)
        found = retained_config(seen, DEVICE_TOPIC)

    assert {"from": "link"} == found


# -- anything at all in a file -----------------------------------------------------------------

_json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
).map(lambda value: json.dumps(value))  # NaN and Infinity included: json.dumps writes them
_contents = st.one_of(
    st.binary(max_size=200),
    _json_text.map(str.encode),
    st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"[" * 100_000, b'{"a": ' + b"9" * 5_000 + b"}", b'{"\\udfff": 1}']),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Module-scoped, so hypothesis's examples may share it."""
    return tmp_path_factory.mktemp("bad-files")


@settings(max_examples=150, deadline=None)
@given(content=_contents)
def test_nothing_in_a_file_raises_anything_but_a_config_file_error(
    scratch: Path, content: bytes
) -> None:
    schema_path = scratch / "_schema.json"
    schema_path.write_text(json.dumps({"properties": {"a": {"type": "integer"}}}))
    path = scratch / "dev-1.json"
    path.write_bytes(content)
    try:
        config = load_config(path, FleetSchema.load(schema_path, 1 << 20), 1 << 20)
    except ConfigFileError as exc:
        assert exc.code in set(ConfigErrorCode)
        assert exc.message
    else:
        assert config.device_id == "dev-1"
