"""The generated C header, compiled as C99 and as C++ and run: its output must say what Python says.

The C program below is written from the Python definitions (topic kinds, enums, NVS keys), so a
macro that is missing from the header fails to compile, and a macro with the wrong value prints a
line that differs from the expected one.
"""

from __future__ import annotations

import shutil
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from firmware_contracts import codes, nvs, partition_table
from firmware_contracts.codegen import GENERATED_DIR, HEADER_PATH
from firmware_contracts.identifiers import (
    IDENTIFIER_MAX_LENGTH,
    REQUEST_ID_MAX_LENGTH,
    is_identifier,
)
from firmware_contracts.payloads import DEVICE_STATUS_WILL, SCHEMA_MODELS
from firmware_contracts.topics import DEFAULT_ROOT, TOPICS, TopicKind, Topics

# The header's naming convention for each enum of firmware_contracts.codes.
ENUM_PREFIXES: dict[type[StrEnum], str] = {
    codes.ConfigErrorCode: "IOT_CONFIG_ERROR_",
    codes.AgentEventName: "IOT_AGENT_EVENT_",
    codes.ProvisionErrorCode: "IOT_PROVISION_ERROR_",
    codes.FlashErrorCode: "IOT_FLASH_ERROR_",
    codes.FlashStatus: "IOT_FLASH_STATUS_",
    codes.FlashPhase: "IOT_FLASH_PHASE_",
    codes.PresenceState: "IOT_STATE_",
    codes.FlashAfter: "IOT_FLASH_AFTER_",
    codes.DevicePresence: "IOT_DEVICE_PRESENCE_",
    codes.FleetState: "IOT_FLEET_STATE_",
    codes.ConfigWriteErrorCode: "IOT_CONFIG_WRITE_ERROR_",
}

LONGEST_ROOT = "r" * 64  # the header sizes buffers for roots up to 64 characters
LONGEST_ID = "x" * IDENTIFIER_MAX_LENGTH
ROOTS = (DEFAULT_ROOT, "site-7/iot", LONGEST_ROOT)
IDS = ("kitchen-01", "a", "0_b-c", LONGEST_ID)
IDENTIFIER_SAMPLES = (
    "kitchen-01",
    "a",
    "0",
    LONGEST_ID,
    "x" * (IDENTIFIER_MAX_LENGTH + 1),
    "",
    "-lead",
    "_lead",
    "Upper",
    "with space",
    "plus+",
    "hash#",
    "slash/x",
    "dot.x",
    "tail-",
    "tail_",
)


def test_every_enum_of_codes_has_a_prefix() -> None:
    enums = {
        value
        for value in vars(codes).values()
        if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum
    }
    assert enums == set(ENUM_PREFIXES)


def _field_names() -> list[str]:
    names: set[str] = set()
    for model in SCHEMA_MODELS.values():
        schema: dict[str, Any] = model.model_json_schema()
        for obj in (schema, *schema.get("$defs", {}).values()):
            names.update(obj.get("properties", {}))
    return sorted(names)


def c_literal(text: str) -> str:
    assert text.isascii() and text.isprintable()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def program_and_expected() -> tuple[str, list[str]]:
    body: list[str] = []
    expected: list[str] = []

    def emit(fmt: str, args: str, line: str) -> None:
        body.append(f'    printf("{fmt}\\n", {args});')
        expected.append(line)

    emit("version %d", "IOT_CONTRACT_VERSION", f"version {codes.CONTRACT_VERSION}")
    emit(
        "version_minor %d",
        "IOT_CONTRACT_VERSION_MINOR",
        f"version_minor {codes.CONTRACT_MINOR_VERSION}",
    )
    emit("root %s", "IOT_TOPIC_ROOT_DEFAULT", f"root {DEFAULT_ROOT}")
    emit(
        "id_max %d %d",
        "IOT_IDENTIFIER_MAX_LEN, IOT_IDENTIFIER_BUF_SIZE",
        f"id_max {IDENTIFIER_MAX_LENGTH} {IDENTIFIER_MAX_LENGTH + 1}",
    )
    emit("request_id_max %d", "IOT_REQUEST_ID_MAX_LEN", f"request_id_max {REQUEST_ID_MAX_LENGTH}")

    for kind, spec in TOPICS.items():
        macro = f"IOT_TOPIC_{kind.name}"
        longest = len(Topics(LONGEST_ROOT).build(kind, LONGEST_ID))
        emit(
            f"topic_max {kind.value} %d %d",
            f"(int){macro}_MAX_LEN, (int){macro}_BUF_SIZE",
            f"topic_max {kind.value} {longest} {longest + 1}",
        )
        emit(
            f"topic_flags {kind.value} qos=%d retain=%d",
            f"{macro}_QOS, {macro}_RETAIN",
            f"topic_flags {kind.value} qos={spec.qos} retain={int(spec.retained)}",
        )
        for root in ROOTS:
            for identifier in IDS:
                body.append(
                    f"    if (!put_topic({macro}_FMT, sizeof(char[{macro}_BUF_SIZE]), "
                    f"{c_literal(root)}, {c_literal(identifier)})) return 1;"
                )
                expected.append(f"topic {Topics(root).build(kind, identifier)}")
    overall = max(len(Topics(LONGEST_ROOT).build(kind, LONGEST_ID)) for kind in TopicKind)
    emit(
        "topic_max_all %d %d",
        "(int)IOT_TOPIC_MAX_LEN, (int)IOT_TOPIC_BUF_SIZE",
        f"topic_max_all {overall} {overall + 1}",
    )

    emit("nvs_namespace %s", "IOT_NVS_NAMESPACE", f"nvs_namespace {nvs.NVS_NAMESPACE}")
    emit(
        "nvs_limits %d %d %d",
        "IOT_NVS_KEY_MAX_LEN, IOT_NVS_STRING_MAX_BYTES, IOT_NVS_PROV_KEY_COUNT",
        f"nvs_limits {nvs.NVS_KEY_MAX_LENGTH} {nvs.NVS_STRING_MAX_BYTES} {len(nvs.PROV_KEYS)}",
    )
    for key in nvs.PROV_KEYS:
        macro = f"IOT_NVS_KEY_{key.name.upper()}"
        emit(
            "nvs_key %s required=%d max_bytes=%d fits=%d",
            f"{macro}, {macro}_REQUIRED, {macro}_MAX_BYTES, "
            f"(int)(sizeof {macro} - 1 <= IOT_NVS_KEY_MAX_LEN)",
            f"nvs_key {key.name} required={int(key.required)} "
            f"max_bytes={nvs.NVS_STRING_MAX_BYTES} fits=1",
        )
    body.append("    IOT_NVS_PROV_KEY_LIST(PRINT_KEY_ROW)")
    expected.extend(f"nvs_row {k.name.upper()} {k.name} {int(k.required)}" for k in nvs.PROV_KEYS)

    pt = partition_table
    emit(
        "partitions %ld %ld %ld %ld %ld %ld %d %d %s",
        "(long)IOT_NVS_PAGE_SIZE, (long)IOT_NVS_PARTITION_MIN_SIZE, (long)IOT_NVS_PARTITION_ALIGN, "
        "(long)IOT_NVS_PARTITION_MAX_SIZE, (long)IOT_PARTITION_TABLE_OFFSET, "
        "(long)IOT_PARTITION_TABLE_MAX_SIZE, IOT_PARTITION_TYPE_DATA, IOT_PARTITION_SUBTYPE_NVS, "
        "IOT_NVS_PARTITION_LABEL",
        f"partitions {nvs.NVS_PAGE_SIZE} {nvs.MIN_PARTITION_SIZE} {nvs.PARTITION_ALIGN} "
        f"{nvs.MAX_PARTITION_SIZE} {pt.PARTITION_TABLE_OFFSET} {pt.PARTITION_TABLE_MAX_SIZE} "
        f"{pt.PARTITION_TYPE_DATA} {pt.DATA_SUBTYPE_NVS} nvs",
    )

    for enum, prefix in ENUM_PREFIXES.items():
        for member in enum:
            emit(
                f"{prefix}{member.name} %s",
                prefix + member.name,
                f"{prefix}{member.name} {member.value}",
            )
        emit(f"{prefix}COUNT %d", f"{prefix}COUNT", f"{prefix}COUNT {len(enum)}")
        body.append(f"    {prefix}LIST(PRINT_ROW)")
        expected.extend(f"row {member.name} {member.value}" for member in enum)

    emit(
        "will %s",
        "IOT_DEVICE_STATUS_WILL_PAYLOAD",
        f"will {DEVICE_STATUS_WILL.to_json().decode()}",
    )
    emit(
        "config_set_status %s %s",
        "IOT_CONFIG_SET_STATUS_OK, IOT_CONFIG_SET_STATUS_ERROR",
        "config_set_status ok error",
    )
    emit(
        "pending_grace_s %d",
        "IOT_FLEET_PENDING_GRACE_S_DEFAULT",
        f"pending_grace_s {codes.DEFAULT_PENDING_GRACE_S}",
    )

    for name in _field_names():
        emit("field %s", f"IOT_FIELD_{name.upper()}", f"field {name}")

    for sample in IDENTIFIER_SAMPLES:
        emit(
            f"valid %d [{sample}]",
            f"iot_identifier_is_valid({c_literal(sample)})",
            f"valid {int(is_identifier(sample))} [{sample}]",
        )
    emit("valid_null %d", "iot_identifier_is_valid(NULL)", "valid_null 0")

    source = "\n".join(
        [
            '#include "iot_contract.h"',
            "#include <stdio.h>",
            "",
            '#define PRINT_ROW(NAME, VALUE) printf("row %s %s\\n", #NAME, VALUE);',
            "#define PRINT_KEY_ROW(NAME, KEY, REQUIRED) \\",
            '    printf("nvs_row %s %s %d\\n", #NAME, KEY, REQUIRED);',
            "",
            "static int put_topic(const char *fmt, size_t size, const char *root, const char *id)",
            "{",
            "    char buf[IOT_TOPIC_BUF_SIZE];",
            "    const int n = snprintf(buf, size, fmt, root, id);",
            "    if (n < 0 || (size_t)n >= size || size > sizeof buf) {",
            '        printf("overflow %s %s %d\\n", root, id, n);',
            "        return 0;",
            "    }",
            '    printf("topic %s\\n", buf);',
            "    return 1;",
            "}",
            "",
            "int main(void)",
            "{",
            *body,
            "    return 0;",
            "}",
            "",
        ]
    )
    return source, expected


COMPILERS = {
    "c99": ("gcc", ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]),
    "c++": ("g++", ["-x", "c++", "-Wall", "-Wextra", "-Werror"]),
}


@pytest.mark.parametrize("language", sorted(COMPILERS))
def test_header_compiles_and_agrees_with_python(language: str, tmp_path: Path) -> None:
    compiler, flags = COMPILERS[language]
    if shutil.which(compiler) is None:
        pytest.skip(
            f"{compiler} is not installed, so the {language} build of the header is untested"
        )
    assert (GENERATED_DIR / HEADER_PATH).is_file(), "run python -m firmware_contracts generate"
    source, expected = program_and_expected()
    program = tmp_path / "contract_check.c"
    program.write_text(source)
    binary = tmp_path / "contract_check"
    build = subprocess.run(
        [compiler, *flags, "-I", str(GENERATED_DIR), str(program), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10, check=False)
    assert run.returncode == 0, run.stdout[-2000:]
    actual = run.stdout.splitlines()
    for number, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        assert want == got, f"line {number}"
    assert len(expected) == len(actual)


def test_topic_format_has_exactly_two_conversions() -> None:
    header = (GENERATED_DIR / HEADER_PATH).read_text()
    for kind in TopicKind:
        line = next(
            line
            for line in header.splitlines()
            if line.startswith(f"#define IOT_TOPIC_{kind.name}_FMT ")
        )
        fmt = line.split(" ", 2)[2]
        assert fmt.count("%") == 2 and fmt.count("%s") == 2, line


def test_header_starts_with_the_generated_notice() -> None:
    first = (GENERATED_DIR / HEADER_PATH).read_text().splitlines()[0]
    assert "generated by python -m firmware_contracts generate, do not edit" in first
