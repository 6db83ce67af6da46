"""Run benchmark scenarios and print a table plus optional JSON (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
from pathlib import Path


def scenarios() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and m.name != "micro")


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def print_table(report: dict) -> None:
    print(f"\n== {report['scenario']} ==")
    for r in report["results"]:
        base = r.get("baseline")
        line = f"  {r['name']:<48} {fmt(r['value']):>14} {r.get('unit', '')}"
        if base:
            line += f"   | {base['name']}: {fmt(base['value'])}"
            if r.get("ratio") is not None:
                line += f"  ratio {r['ratio']:.2f}x"
        elif "baseline" in r:
            line += "   | baseline missing"
        print(line)
    for note in report.get("notes", []):
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    names = scenarios()
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("scenario", choices=names + ["all"])
    ap.add_argument("--size", choices=["smoke", "full"], default="full")
    ap.add_argument("--json", dest="json_file", default=None)
    args = ap.parse_args(argv)
    todo = names if args.scenario == "all" else [args.scenario]
    reports = []
    for name in todo:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.monotonic()
        report = mod.run(args.size)
        report.setdefault("scenario", name)
        report["seconds"] = round(time.monotonic() - t0, 2)
        report["cores"] = os.cpu_count()
        print_table(report)
        reports.append(report)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps({"reports": reports}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
