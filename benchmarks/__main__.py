"""``python -m benchmarks [NAME ...] [--json FILE]``: run the benchmarks and report.

Exits 0 when every benchmark ran (met targets or not: benchmarks report, they do not assert),
1 when one crashed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks import ALL, DEFAULT
from benchmarks._machine import describe, machine_info
from benchmarks._stats import Budget, Result, print_result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run corral's benchmarks; each measures its baseline in the same run and reports "
        "p50, p90, the ratio and whether its target is met.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: {' '.join(DEFAULT)}; also: {' '.join(n for n in ALL if n not in DEFAULT)})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    defaults = Budget()
    parser.add_argument(
        "--max-iterations",
        type=int,
        default=defaults.max_iterations,
        help="rounds of an in-process loop (default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=defaults.max_seconds,
        help="seconds of an in-process loop, whichever limit comes first (default %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=defaults.process_runs, help="runs per whole-process command (default %(default)s)"
    )
    return parser


def _run_one(name: str, budget: Budget) -> Result:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        result: Result = module.run(budget)
    except Exception as err:  # a crashed benchmark is reported; the others still run
        result = Result(name, "crashed", error=f"{type(err).__name__}: {err}")
        traceback.print_exc()
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in ALL:
            try:
                title = importlib.import_module(f"benchmarks.{name}").TITLE
            except Exception as err:  # a module being edited must not hide the others
                title = f"(cannot be imported: {type(err).__name__}: {err})"
            print(f"{name:<15} {title}{'' if name in DEFAULT else '  (only when named)'}")
        return 0
    unknown = [n for n in args.names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    budget = Budget(max_iterations=args.max_iterations, max_seconds=args.max_seconds, process_runs=args.runs)
    info = machine_info()
    print("corral benchmarks")
    for line in describe(info):
        print(f"  {line}")
    results = []
    for name in args.names or DEFAULT:
        print(f"\n... running {name}", flush=True)
        result = _run_one(name, budget)
        print_result(result)
        results.append(result)
    print("\nsummary")
    for result in results:
        verdict = {True: "all targets met", False: "TARGET MISSED", None: "no target"}[result.met]
        if result.skipped:
            verdict = "skipped"
        elif result.error:
            verdict = "error"
        print(f"  {result.name:<15} {verdict}")
    if args.json is not None:
        payload: dict[str, Any] = {
            "machine": info,
            "budget": dataclasses.asdict(budget),
            "results": [r.as_dict() for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
