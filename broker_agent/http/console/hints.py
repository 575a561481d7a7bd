"""The operator's hint per flash error code: the last column of docs/station.md's error table.

Shown by the console next to a failed job's code. The docs are the source; this copy ships
with the package (the docs do not), and tests/http/test_console_hints.py fails when the two
differ, naming the code (update this table from the docs then).
"""

from __future__ import annotations

HINTS: dict[str, str] = {
    "invalid_request": "fix the command",
    "port_required": "name the port",
    "port_not_found": "check the cable, `ls /dev/serial/by-id/`",
    "port_busy": "wait for its final event, or cancel it",
    "connect_failed": "replug; try `--baud 115200`; a long or unpowered USB hub is the usual cause",
    "bootloader_not_entered": "hold **BOOT**, tap **RESET (EN)**, release BOOT, retry",
    "mac_mismatch": "wrong board on this port: check the label",
    "partition_table_unreadable": "flash the firmware (bootloader + table + app) first",
    "nvs_partition_missing": "the firmware's partitions.csv needs an `nvs` data partition",
    "nvs_subtype_mismatch": "fix partitions.csv (`nvs, data, nvs, ...`)",
    "nvs_encryption_unsupported": "drop the `encrypted` flag from `nvs` and put it on `nvs_keys` in partitions.csv; keep one `nvs_keys` of 4 KiB (`0x1000`) on a sector of its own",  # noqa: E501 - copied verbatim
    "nvs_partition_out_of_range": "the firmware was built for a bigger flash: fix partitions.csv or `CONFIG_ESPTOOLPY_FLASHSIZE`, or use a board with that flash size",  # noqa: E501 - copied verbatim
    "provisioning_failed": "act on the cause: add the device's config/secrets file, fix the partition size",  # noqa: E501 - copied verbatim
    "provisioning_timeout": "start `broker-agent run` on this broker (check `iot/agents/+/status`), then retry",  # noqa: E501 - copied verbatim
    "blob_size_mismatch": "report it: agent and station disagree",
    "write_failed": "replug and retry; the partition may be half-written until a job succeeds",
    "verify_failed": "retry once; if it repeats, the flash is bad: set the board aside",
    "aborted": "retry when ready",
    "internal_error": "report it with the log lines",
}


def hint_for(code: str) -> str | None:
    return HINTS.get(code)
