"""Run benchmark scenarios and print a table plus optional JSON (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def scenarios() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and m.name != "micro")


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def rounds(values: list[float]) -> str:
    """A row's per-round values (bench/smtp.py measures its cells in rounds): "a / b / c"."""
    return " / ".join(fmt(float(v)) for v in values)


def ratio_text(r: dict) -> str:
    """The row's ratio, with the range of its per-round ratios when it was measured in rounds."""
    if r.get("ratio") is None:
        return ""
    if r.get("ratio_min") is None:
        return f"{r['ratio']:.2f}x"
    return f"{r['ratio']:.2f}x (rounds {r['ratio_min']:.2f}-{r['ratio_max']:.2f}x)"


def print_table(report: dict) -> None:
    print(f"\n== {report['scenario']} == ({report['seconds']:.0f} s)", flush=True)
    for r in report["results"]:
        base = r.get("baseline")
        line = f"  {r['name']:<48} {fmt(r['value']):>14} {r.get('unit', '')}"
        if r.get("rounds"):
            line += f" (median of {rounds(r['rounds'])})"
        if r.get("detail"):
            line += f" ({r['detail']})"
        if base:
            line += f"   | {base['name']}: {fmt(base['value'])}"
            if r.get("baseline_rounds"):
                line += f" ({rounds(r['baseline_rounds'])})"
            if r.get("ratio") is not None:
                line += f"  ratio {ratio_text(r)}"
        elif "baseline" in r:
            line += "   | baseline missing"
        print(line)
    for srv in report.get("servers", []):
        print(f"  {server_line(srv)}")
    for note in report.get("notes", []):
        print(f"  note: {note}")


def server_line(srv: dict) -> str:
    """One ``servers`` entry: CPU seconds per 1 000 operations and peak RSS (of the processes alive at one sample,
    how many came and went when they were more, and their PSS at that sample)."""
    per_1k = srv.get("cpu_s_per_1k_ops")
    cpu = f"{per_1k:.3f} CPU s per 1000 {srv['operations_unit']}" if per_1k is not None else "no operations counted"
    seen = srv.get("processes_seen", srv["processes"])
    return (f"server {srv['name']}: {cpu} ({srv['cpu_seconds']:.3f} s over {srv['operations']:,}), "
            f"peak RSS {srv['peak_rss_kib'] / 1024:,.1f} MiB over {srv['processes']} processes"
            + (f" alive at once ({seen:,} seen)" if seen > srv["processes"] else "")
            + (f", PSS {srv['pss_at_peak_kib'] / 1024:,.1f} MiB then" if srv.get("pss_at_peak_kib") else ""))


def main(argv: list[str] | None = None) -> int:
    names = scenarios()
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("scenario", choices=names + ["all"])
    ap.add_argument("--size", choices=["smoke", "full"], default="full")
    ap.add_argument("--json", dest="json_file", default=None)
    ap.add_argument("--markdown", dest="md_file", default=None, help="also write the results as a Markdown table")
    args = ap.parse_args(argv)
    todo = names if args.scenario == "all" else [args.scenario]
    reports: list[dict] = []
    failed: list[str] = []
    for name in todo:
        t0 = time.monotonic()
        try:
            report = importlib.import_module(f"bench.{name}").run(args.size)
        except (Exception, SystemExit) as exc:  # one broken scenario must not lose the others' figures
            if len(todo) == 1:
                raise
            traceback.print_exc()
            failed.append(name)
            print(f"\n== {name} == FAILED after {time.monotonic() - t0:.0f} s: {exc!r}", flush=True)
            continue
        report.setdefault("scenario", name)
        report["seconds"] = round(time.monotonic() - t0, 2)
        report["cores"] = os.cpu_count()
        print_table(report)
        reports.append(report)
        write(args, reports, failed)  # after each scenario: a long run that dies keeps what it measured
    write(args, reports, failed)
    if len(todo) > 1:
        total = sum(r["seconds"] for r in reports)
        print(f"\n{len(reports)} scenarios in {total:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def write(args: argparse.Namespace, reports: list[dict], failed: list[str]) -> None:
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps({"reports": reports, "failed": failed}, indent=2))
    if args.md_file:
        Path(args.md_file).write_text(markdown(reports))


def markdown(reports: list[dict]) -> str:
    """The results table of bench/README.md. A row measured in rounds shows its median, the rounds' values
    in brackets (its own and its baseline's) and the range of the per-round ratios."""
    out = ["| scenario | figure | value | baseline | ratio |", "|---|---|---|---|---|"]
    for rep in reports:
        for r in rep["results"]:
            base = r.get("baseline")
            b = f"{base['name']}: {fmt(base['value'])}" if base else ("missing" if "baseline" in r else "")
            if base and r.get("baseline_rounds"):
                b += f" ({rounds(r['baseline_rounds'])})"
            value = f"{fmt(r['value'])} {r.get('unit', '')}"
            if r.get("rounds"):
                value += f" (median of {rounds(r['rounds'])})"
            if r.get("detail"):
                value += f" ({r['detail']})"
            out.append(f"| {rep['scenario']} | {r['name']} | {value} | {b} | {ratio_text(r)} |")
        for srv in rep.get("servers", []):
            out.append(f"| {rep['scenario']} | {server_line(srv)} | | | |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
