"""Time the provisioning blob: our in-memory build against the NVS generator's CSV path.

    python bench/bench_nvs_image.py [--iterations N] [--repeat R]

Both sides build the same 0x5000-byte image of the 8 provisioning strings in this process:

- ours: ``build_nvs_image`` (validation + the library's writer on an ``io.BytesIO``);
- baseline: what the ``generate`` command does: write a CSV file, call ``generate()`` with the
  CLI's argument object, read the ``.bin`` back. Its console output is switched off (silent
  verbosity) so the baseline is not slowed down by rendering.

Prints the best-of-R time per image for each and the ratio (target: ours >= 5x faster), and
checks that both produce the same bytes. Exits 1 when the bytes differ, 2 when below target.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esp_idf_nvs_partition_gen import nvs_partition_gen
from esp_pylib.logger import log

from broker_agent.provisioning.nvs_image import build_nvs_image
from firmware_contracts.nvs import NVS_NAMESPACE, PROV_KEYS

SIZE = 0x5000
TARGET_RATIO = 5.0
VALUES = {
    "device_key": "kitchen-01",
    "client_id": "iotdevice-kitchen-01",
    "client_secret": "x7Qm2vR9tL4pW8zK1nB6cF3hJ5dS0gA-yE_uT",
    "token_url": "https://auth.example.com/realms/fleet/protocol/openid-connect/token",
    "base_url": "https://api.example.com/v1/",
    "mqtt_url": "mqtts://broker.example.com:8883",
    "wifi_ssid": "Workshop-2.4GHz",
    "wifi_password": "correct horse battery staple",
}


def build_in_memory() -> bytes:
    return build_nvs_image(VALUES, SIZE)


def build_via_csv(workdir: Path) -> bytes:
    source = workdir / "nvs.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "type", "encoding", "value"])
        writer.writerow([NVS_NAMESPACE, "namespace", "", ""])
        for key in PROV_KEYS:
            writer.writerow([key.name, "data", "string", VALUES[key.name]])
    args = SimpleNamespace(
        input=[str(source)], output="nvs.bin", size=hex(SIZE), version=2, outdir=str(workdir)
    )
    nvs_partition_gen.generate(args)
    return (workdir / "nvs.bin").read_bytes()


def best_per_call(function: Callable[[], object], iterations: int, repeat: int) -> float:
    timer = timeit.Timer(function)
    return min(timer.repeat(repeat=repeat, number=iterations)) / iterations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="images per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept")
    options = parser.parse_args()
    log.set_verbosity("silent")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ours, theirs = build_in_memory(), build_via_csv(workdir)
        identical = ours == theirs and len(ours) == SIZE
        ours_s = best_per_call(build_in_memory, options.iterations, options.repeat)
        theirs_s = best_per_call(lambda: build_via_csv(workdir), options.iterations, options.repeat)

    ratio = theirs_s / ours_s
    print(
        f"image: {SIZE:#x} bytes, {len(VALUES)} string keys,"
        f" best of {options.repeat} x {options.iterations}"
    )
    print(f"in memory (build_nvs_image): {ours_s * 1e6:9.1f} us/image")
    print(f"CSV file + generate():       {theirs_s * 1e6:9.1f} us/image")
    print(f"ratio: {ratio:.1f}x faster (target >= {TARGET_RATIO:.0f}x)")
    print(f"byte-identical: {'yes' if identical else 'NO'}")
    if not identical:
        return 1
    return 0 if ratio >= TARGET_RATIO else 2


if __name__ == "__main__":
    sys.exit(main())
