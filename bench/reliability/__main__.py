"""Run the fault scenarios (all, or --only NAME...), print their table and keep it as
JSON under bench/results/. Exit status 1 if any scenario lost, duplicated, orphaned or
hid a job, answered wrongly or with an undocumented 5xx, or failed a job other than its
poison (or a poison job otherwise than expected)."""

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.reliability.harness import passed
from bench.reliability.scenarios import SCENARIOS
from bench.servers import ROOT

COLUMNS = [
    ("trials", "trials"),
    ("jobs_acknowledged", "acknowledged"),
    ("jobs_finished", "finished"),
    ("failed", "failed"),
    ("failed_as_expected", "failed as expected"),
    ("predictions_expected", "predictions expected"),
    ("predictions_stored", "stored"),
    ("duplicates", "duplicates"),
    ("orphans", "orphans"),
    ("lost", "lost"),
    ("stored_untold", "stored, client not told"),
    ("5xx", "5xx"),
]


def table(rows: dict[str, dict]) -> str:
    head = "| scenario | " + " | ".join(label for _, label in COLUMNS) + " | result |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        cells = " | ".join(str(row.get(key, "")) for key, _ in COLUMNS)
        lines.append(f"| {name} | {cells} | {'pass' if row['passed'] else '**FAIL**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="each scenario once, small")
    parser.add_argument("--only", nargs="*", help="scenario function names", default=None)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    rows: dict[str, dict] = {}
    folder = Path(tempfile.mkdtemp(prefix="sibyl-reliability-"))
    began = time.perf_counter()
    for name, scenario in SCENARIOS.items():
        if args.only and scenario.__name__ not in args.only:
            continue
        print(f"{name}...", flush=True)
        started = time.perf_counter()
        row = scenario(folder, size)
        row["passed"] = passed(row)
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(f"  {json.dumps(row)}", flush=True)
        rows[name] = row
    print(table(rows))
    results = {"size": size, "seconds": round(time.perf_counter() - began, 1), "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"reliability-{stamp}{'-tiny' if args.tiny else ''}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out} ({results['seconds']} s)")
    return 0 if all(row["passed"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
