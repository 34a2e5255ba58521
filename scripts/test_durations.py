"""Write tests/durations.json from the per-test timings of `AWET_TEST_TIMING=<file> make test`.

The suite hands its longest cases out first (tests/conftest.py), so that under pytest-xdist
no three-minute case starts last or two of them queue on one worker. The file is only an
ordering hint: a missing or stale entry changes the order, never the outcome.

    AWET_TEST_TIMING=/tmp/t.jsonl make test && .venv/bin/python scripts/test_durations.py /tmp/t.jsonl
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "durations.json"
MIN_S = 2.0  # shorter cases are scheduled by the default guess; keeps the file small


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timings", nargs="+", type=Path, help="JSON lines written under AWET_TEST_TIMING")
    args = ap.parse_args(argv)
    seen: dict[str, list[float]] = defaultdict(list)
    for path in args.timings:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                seen[row["test"]].append(float(row["wall_s"]))
    # The mean over runs: one loaded run should not reorder the suite on its own.
    mean = {test: sum(v) / len(v) for test, v in seen.items()}
    kept = {test: round(s) for test, s in sorted(mean.items()) if s >= MIN_S}
    OUT.write_text(json.dumps(kept, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(kept)} of {len(mean)} tests at >= {MIN_S:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
