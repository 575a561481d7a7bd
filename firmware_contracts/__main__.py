"""``python -m firmware_contracts generate|check``: write or verify the generated files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from firmware_contracts import codegen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_contracts",
        description="Generate the C header, JSON Schemas and ESP-IDF component of the contract.",
    )
    parser.add_argument(
        "command",
        choices=("generate", "check"),
        help="generate: write the files; check: exit 1 when any is stale, missing or extra",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=codegen.GENERATED_DIR,
        help="the generated directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.command == "generate":
        for change in codegen.write(directory):
            print(f"updated ({change})")
        print(f"{directory}: up to date")
        return 0
    problems = codegen.check(directory)
    for problem in problems:
        print(f"{directory}: {problem}", file=sys.stderr)
    if problems:
        print("run `python -m firmware_contracts generate` and commit the result", file=sys.stderr)
        return 1
    print(f"{directory}: {len(codegen.render_all())} generated files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
