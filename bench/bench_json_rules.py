"""Time ``loads_strict`` (contract 6.5) against plain ``json.loads`` on the same inputs.

    python bench/bench_json_rules.py [--files N] [--repeat R] [--escaped-share F]

Builds N config-like JSON documents in memory (UTF-8 bytes, like the files the agent reads at
start-up: nested objects, ints, floats, strings, some non-ASCII), of which a share F is written
with ``ensure_ascii=True`` so their text carries ``\\u`` escapes and takes the surrogate check.
Both parsers decode the same bytes (``json.loads`` decodes bytes itself) in this process;
prints the best-of-R time for the whole set and per document, and the ratio strict / plain
(target: at most 1.5). Exits 1 when the results differ, 2 when above target.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_contracts.json_rules import loads_strict

TARGET_RATIO = 1.5


def config(rng: random.Random, number: int) -> dict[str, Any]:
    return {
        "name": f"Küche {number}",
        "report_interval_s": rng.randint(10, 3600),
        "threshold": round(rng.uniform(-40, 85), 2),
        "calibration": [round(rng.uniform(0.9, 1.1), 4) for _ in range(4)],
        "led": {"brightness": rng.randint(0, 100), "enabled": rng.random() < 0.5},
        "wifi": {"ssid": f"site-{number % 17}", "power_save": None},
        "schedule": [
            {"at": f"{h:02d}:00", "mode": rng.choice(["eco", "comfort", "off"]), "setpoint": 21.5}
            for h in range(0, 24, 6)
        ],
        "labels": {"room": "Wohnzimmer", "floor": rng.randint(0, 4), "note": "😀 ok"},
    }


def documents(count: int, escaped_share: float) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for number in range(count):
        ascii_only = rng.random() < escaped_share
        out.append(json.dumps(config(rng, number), ensure_ascii=ascii_only).encode("utf-8"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--escaped-share", type=float, default=0.1)
    args = parser.parse_args()
    inputs = documents(args.files, args.escaped_share)
    if [loads_strict(d) for d in inputs] != [json.loads(d) for d in inputs]:
        print("loads_strict and json.loads disagree")
        return 1

    def plain() -> None:
        for data in inputs:
            json.loads(data)

    def strict() -> None:
        for data in inputs:
            loads_strict(data)

    size = sum(map(len, inputs))
    print(
        f"{len(inputs)} documents, {size / len(inputs):.0f} bytes on average, "
        f"{args.escaped_share:.0%} with \\u escapes; best of {args.repeat}"
    )
    results = {}
    for name, run in (("json.loads", plain), ("loads_strict", strict), ("json.loads again", plain)):
        best = min(timeit.repeat(run, number=1, repeat=args.repeat))
        results[name] = best
        print(f"  {name:<17} {best * 1000:8.1f} ms  {best / len(inputs) * 1e6:6.2f} us/doc")
    baseline = min(results["json.loads"], results["json.loads again"])
    ratio = results["loads_strict"] / baseline
    print(f"ratio loads_strict / json.loads: {ratio:.2f} (target <= {TARGET_RATIO})")
    return 0 if ratio <= TARGET_RATIO else 2


if __name__ == "__main__":
    sys.exit(main())
