"""The secrets directory: merging, known devices, every error, live edits, and issuing."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker_agent.errors import ProvisionFailure
from broker_agent.files import write_atomically
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.messages import build_image
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import NVS_NAMESPACE, NVS_STRING_MAX_BYTES, PROV_KEYS
from tests.support.nvs_parser import parse_nvs

pytestmark = pytest.mark.timeout(60)

FLEET = {
    "token_url": "https://auth.example.invalid/token",
    "base_url": "https://api.example.invalid/",
    "mqtt_url": "mqtts://broker.example.invalid:8883",
    "wifi_ssid": "fleet-wifi",
    "wifi_password": "FLEET-WIFI-SECRET-xyz",
}
DEVICE = {"client_id": "cid-kitchen", "client_secret": "DEVICE-SECRET-abc"}
SECRET_VALUES = ("FLEET-WIFI-SECRET-xyz", "DEVICE-SECRET-abc")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir()
    config_dir.mkdir()
    return secrets_dir, config_dir


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def store_with(
    dirs: tuple[Path, Path], fleet: Any = FLEET, device: Any = DEVICE, *, issue: bool = False
) -> CredentialStore:
    secrets_dir, config_dir = dirs
    if fleet is not None:
        write_json(secrets_dir / "_fleet.json", fleet)
    if device is not None:
        write_json(secrets_dir / "kitchen-01.json", device)
    return CredentialStore(secrets_dir, config_dir, issue=issue)


def failure(store: CredentialStore, device_id: str = "kitchen-01") -> ProvisionFailure:
    with pytest.raises(ProvisionFailure) as info:
        store.values_for(device_id)
    return info.value


def assert_no_secret(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text


# -- merging -----------------------------------------------------------------------------------


def test_device_values_overlay_fleet_values_and_device_key_defaults(
    dirs: tuple[Path, Path],
) -> None:
    store = store_with(dirs, device={**DEVICE, "base_url": "https://override.invalid/"})
    expected = {
        **FLEET,
        **DEVICE,
        "base_url": "https://override.invalid/",
        "device_key": "kitchen-01",
    }
    assert expected == store.values_for("kitchen-01")


def test_device_key_set_to_the_device_id_and_null_removing_a_fleet_value(
    dirs: tuple[Path, Path],
) -> None:
    device = {
        **DEVICE,
        "device_key": "kitchen-01",
        "wifi_ssid": None,
        "wifi_password": None,
        "_note": 1,
    }
    values = store_with(dirs, device=device).values_for("kitchen-01")
    assert "kitchen-01" == values["device_key"]
    assert "wifi_ssid" not in values and "wifi_password" not in values
    assert "_note" not in values


def test_optional_keys_absent_when_unset(dirs: tuple[Path, Path]) -> None:
    fleet = {"token_url": FLEET["token_url"], "base_url": FLEET["base_url"]}
    values = store_with(dirs, fleet=fleet).values_for("kitchen-01")
    assert {"device_key", "client_id", "client_secret", "token_url", "base_url"} == set(values)


# -- known and unknown devices -----------------------------------------------------------------


def test_unknown_device(dirs: tuple[Path, Path]) -> None:
    error = failure(store_with(dirs), "garage-door")
    assert ProvisionErrorCode.UNKNOWN_DEVICE == error.code
    assert "garage-door" in error.message


def test_a_config_file_alone_makes_a_device_known(dirs: tuple[Path, Path]) -> None:
    _, config_dir = dirs
    write_json(config_dir / "garage-door.json", {"any": "config"})
    error = failure(store_with(dirs), "garage-door")
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "client_id, client_secret" in error.message


def test_a_secrets_file_alone_makes_a_device_known(dirs: tuple[Path, Path]) -> None:
    values = store_with(dirs).values_for("kitchen-01")
    assert DEVICE["client_secret"] == values["client_secret"]


# -- errors, never with a value ----------------------------------------------------------------


def test_missing_required_keys_are_named_without_any_value(dirs: tuple[Path, Path]) -> None:
    error = failure(store_with(dirs, fleet={"wifi_password": "FLEET-WIFI-SECRET-xyz"}))
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "token_url, base_url" in error.message
    assert_no_secret(error.message)


def test_bad_json_names_the_file_but_never_its_content(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    store = store_with(dirs)
    (secrets_dir / "kitchen-01.json").write_text('{"client_secret": "DEVICE-SECRET-abc",,}')
    error = failure(store)
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "kitchen-01.json is not valid JSON (line 1 column" in error.message
    assert_no_secret(error.message)
    assert "client_secret" not in error.message


@pytest.mark.parametrize(
    ("fleet", "device", "in_message"),
    [
        (
            {**FLEET, "client_secret": "x"},
            DEVICE,
            "_fleet.json: unknown key 'client_secret' (a per-device",
        ),
        (FLEET, {**DEVICE, "wifi_pasword": "x"}, "kitchen-01.json: unknown key 'wifi_pasword'"),
        (
            FLEET,
            {**DEVICE, "client_secret": 12345},
            "kitchen-01.json: client_secret must be a string",
        ),
        ([1, 2], DEVICE, "_fleet.json must hold a JSON object"),
        (FLEET, "DEVICE-SECRET-abc", "kitchen-01.json must hold a JSON object"),
    ],
)
def test_unusable_files_are_refused_with_the_problem(
    dirs: tuple[Path, Path], fleet: Any, device: Any, in_message: str
) -> None:
    error = failure(store_with(dirs, fleet=fleet, device=device))
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert in_message in error.message
    assert_no_secret(error.message)


def test_not_utf8_too_large_and_directory(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    store = store_with(dirs)
    path = secrets_dir / "kitchen-01.json"
    path.write_bytes(b'{"client_secret": "\xff"}')
    assert "kitchen-01.json is not UTF-8" in failure(store).message
    path.write_text(json.dumps({**DEVICE, "_pad": "x" * 70_000}))
    assert "kitchen-01.json is larger than" in failure(store).message
    path.unlink()
    path.mkdir()
    assert "kitchen-01.json is a directory" in failure(store).message


# -- live edits -------------------------------------------------------------------------------


def test_an_edited_file_is_read_again(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    store = store_with(dirs)
    assert DEVICE["client_secret"] == store.values_for("kitchen-01")["client_secret"]
    path = write_json(
        secrets_dir / "kitchen-01.json", {**DEVICE, "client_secret": "DEVICE-SECRET-abd"}
    )
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # same size, new mtime
    assert "DEVICE-SECRET-abd" == store.values_for("kitchen-01")["client_secret"]
    write_json(secrets_dir / "_fleet.json", {**FLEET, "wifi_ssid": "renamed-wifi"})
    assert "renamed-wifi" == store.values_for("kitchen-01")["wifi_ssid"]
    (secrets_dir / "_fleet.json").unlink()
    assert "token_url, base_url" in failure(store).message


# -- issuing ----------------------------------------------------------------------------------


def test_issuing_off_refuses_with_a_hint(dirs: tuple[Path, Path]) -> None:
    _, config_dir = dirs
    write_json(config_dir / "kitchen-01.json", {})
    error = failure(store_with(dirs, device=None))
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "client_id, client_secret" in error.message
    assert "BROKER_AGENT_ISSUE_CREDENTIALS" in error.message


def test_issuing_generates_once_keeps_fields_and_writes_0600(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    store = store_with(dirs, device={"_note": "keep me", "wifi_ssid": "own-wifi"}, issue=True)
    first = store.values_for("kitchen-01")
    path = secrets_dir / "kitchen-01.json"
    stored = json.loads(path.read_text())
    assert "iotdevice-kitchen-01" == first["client_id"] == stored["client_id"]
    assert len(first["client_secret"]) >= 32
    assert first["client_secret"] == stored["client_secret"]
    assert {"_note": "keep me", "wifi_ssid": "own-wifi"}.items() <= stored.items()
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert [] == [p.name for p in secrets_dir.iterdir() if p.name.endswith(".tmp")]
    again = CredentialStore(secrets_dir, dirs[1], issue=True).values_for("kitchen-01")
    assert first == again


def test_issuing_only_fills_what_is_missing(dirs: tuple[Path, Path]) -> None:
    store = store_with(dirs, device={"client_id": "mine"}, issue=True)
    values = store.values_for("kitchen-01")
    assert "mine" == values["client_id"]
    assert values["client_secret"]


def test_issuing_cannot_invent_fleet_values(dirs: tuple[Path, Path]) -> None:
    error = failure(store_with(dirs, fleet={}, device={}, issue=True))
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "client_id, client_secret, token_url, base_url" in error.message
    assert {} == json.loads((dirs[0] / "kitchen-01.json").read_text())


def test_issuing_leaves_a_broken_file_alone(dirs: tuple[Path, Path]) -> None:
    store = store_with(dirs, device=None, issue=True)
    path = dirs[0] / "kitchen-01.json"
    path.write_text("{not json")
    assert "not valid JSON" in failure(store).message
    assert "{not json" == path.read_text()


def test_concurrent_issuing_in_threads_agrees_on_one_secret(dirs: tuple[Path, Path]) -> None:
    store_with(dirs, device=None)
    write_json(dirs[1] / "kitchen-01.json", {})
    # One store per thread: only the directory flock can keep them apart, as across processes.
    stores = [CredentialStore(*dirs, issue=True) for _ in range(8)]
    results: list[str] = []
    barrier = threading.Barrier(len(stores))

    def request(store: CredentialStore) -> None:
        barrier.wait()
        results.append(store.values_for("kitchen-01")["client_secret"])

    threads = [threading.Thread(target=request, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 8 == len(results)
    assert 1 == len(set(results))


def _issue_in_process(secrets_dir: str, config_dir: str, queue: Any) -> None:
    store = CredentialStore(Path(secrets_dir), Path(config_dir), issue=True)
    queue.put(store.values_for("kitchen-01")["client_secret"])


def test_concurrent_issuing_in_processes_agrees_on_one_secret(dirs: tuple[Path, Path]) -> None:
    store_with(dirs, device=None)
    write_json(dirs[1] / "kitchen-01.json", {})
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_issue_in_process, args=(str(dirs[0]), str(dirs[1]), queue))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    secrets_seen = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(10)
    assert 1 == len(secrets_seen)
    stored = json.loads((dirs[0] / "kitchen-01.json").read_text())
    assert secrets_seen == {stored["client_secret"]}


def test_atomic_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_atomically(path, b"new content", 0o600)
    assert b"new content" == path.read_bytes()
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert ["out.bin"] == [p.name for p in tmp_path.iterdir()]


# -- random credential strings ----------------------------------------------------------------

MARK = "\u00a7"  # every generated value but "" starts with it: no message may contain one
_marked = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60).map(
    lambda text: MARK + text
)
_text = st.one_of(st.just(""), _marked, _marked, _marked)  # mostly usable, sometimes empty
# device_key is always the device_id (contract 6.6; another one: tests/provisioning/test_secrets.py)
_values = st.fixed_dictionaries(
    {key.name: _marked for key in PROV_KEYS if key.required and key.name != "device_key"},
    optional={key.name: st.one_of(_text, st.none()) for key in PROV_KEYS if not key.required},
)
_blanked = st.one_of(
    st.none(), st.sampled_from([k.name for k in PROV_KEYS if k.required and k.name != "device_key"])
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    device=_values,
    blank=_blanked,
    long_value=st.sampled_from([0, 0, NVS_STRING_MAX_BYTES, NVS_STRING_MAX_BYTES + 1]),
)
def test_random_credentials_give_a_valid_image_or_a_clear_error(
    dirs: tuple[Path, Path], device: dict[str, str | None], blank: str | None, long_value: int
) -> None:
    if blank is not None:
        device = {**device, blank: ""}
    if long_value:  # exactly at, and one byte over, what an NVS string holds
        device = {**device, "client_secret": MARK + "s" * (long_value - len(MARK.encode()))}
    store = store_with(dirs, fleet={}, device=device)
    try:
        values = store.values_for("kitchen-01")
        image = build_image("kitchen-01", values, 0x5000)
    except ProvisionFailure as exc:
        event(f"refused: {exc.message[:24]}")
        assert exc.code in (
            ProvisionErrorCode.CREDENTIALS_UNAVAILABLE,
            ProvisionErrorCode.INVALID_PARTITION_SIZE,
        )
        assert exc.message
        assert MARK not in exc.message
        return
    event("image built")
    parsed = parse_nvs(image.data)
    assert 0x5000 == len(image.data)
    assert dict(values) == parsed.strings(NVS_NAMESPACE)
    assert set(image.keys) == set(values)
    if long_value == NVS_STRING_MAX_BYTES:
        assert NVS_STRING_MAX_BYTES == len(parsed.strings(NVS_NAMESPACE)["client_secret"].encode())
