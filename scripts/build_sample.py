#!/usr/bin/env python
"""Build the offline sample data set shipped in `awet_dagster/data/sample/`.

Reads real bars from a copy of QuantConnect Lean's `Data/equity/usa` folder (default
`../shared/market-data/lean` relative to the repo root), converts them to the bar
contract and writes zstd parquet plus PROVENANCE.md. Deterministic: the same input gives
the same frames (files are sorted by symbol, bar_type, ts).

    .venv/bin/python scripts/build_sample.py [LEAN_DIR] [--out DIR]
        [--daily-first-year Y] [--daily-last-year Y] [--minute-symbols SPY,IBM]
        [--minute-first-day YYYY-MM-DD] [--minute-last-day YYYY-MM-DD]

The files are read with `awet_dagster.sources.lean_folder.LeanFolderSource` (the `lean`
source), under the name "sample".
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import polars as pl  # noqa: E402

from awet_dagster.sources.lean_folder import LeanFolderSource  # noqa: E402
from awet_dagster.sources.schema import BAR_COLUMNS, FACTOR_COLUMNS, REASON  # noqa: E402


@dataclass(frozen=True)
class SampleSpec:
    daily_first_year: int = 1998
    daily_last_year: int = 2021
    minute_symbols: tuple[str, ...] = ("SPY", "IBM", "BAC", "AIG")
    minute_first_day: date = date(2013, 10, 4)
    minute_last_day: date = date(2013, 10, 10)
    compression_level: int = 19  # zstd max-ish: the files are built once, read many times


DEFAULT_LEAN_DIR = REPO_ROOT.parent / "shared" / "market-data" / "lean"
DEFAULT_OUT_DIR = REPO_ROOT / "awet_dagster" / "data" / "sample"
SORT_KEYS = ["symbol", "bar_type", "ts"]
SOURCE_NAME = "sample"  # the `source` column of the shipped bars
RAW_COLUMNS = [c for c in BAR_COLUMNS if c not in FACTOR_COLUMNS]


def _checked(src: LeanFolderSource, frame: pl.DataFrame, label: str) -> tuple[pl.DataFrame, Counter[str]]:
    # The source keeps rows failing validate_bars out and on last_rejected: list them.
    reasons = Counter(src.last_rejected[REASON].to_list()) if src.last_rejected.height else Counter()
    for reason, count in sorted(reasons.items()):
        print(f"{label}: rejected {count} row(s): {reason}", file=sys.stderr)
    if frame.height == 0:
        raise FileNotFoundError(f"no {label} bars under {src.root} for the requested range")
    # The parquet keeps raw bars only: SampleSource attaches the factors of the shipped
    # factor_files/ at read time.
    return frame.select(RAW_COLUMNS).sort(SORT_KEYS), reasons


def build_daily(src: LeanFolderSource, spec: SampleSpec) -> tuple[pl.DataFrame, Counter[str]]:
    """Every daily symbol of the folder, sessions of the spec's years."""
    symbols = src.symbols("daily")
    if not symbols:
        raise FileNotFoundError(f"no daily/*.zip under {src.root}")
    first, last = date(spec.daily_first_year, 1, 1), date(spec.daily_last_year, 12, 31)
    return _checked(src, src.fetch(symbols, first, last, "daily"), "daily")


def build_minute(src: LeanFolderSource, spec: SampleSpec) -> tuple[pl.DataFrame, Counter[str]]:
    """The spec's minute symbols, its first..last exchange day (inclusive)."""
    frame = src.fetch(spec.minute_symbols, spec.minute_first_day, spec.minute_last_day, "minute")
    return _checked(src, frame, "minute")


def write_parquet(frame: pl.DataFrame, path: Path, spec: SampleSpec) -> None:
    frame.write_parquet(
        path, compression="zstd", compression_level=spec.compression_level, statistics=True
    )


def provenance(
    out: Path, daily: pl.DataFrame, minute: pl.DataFrame, rejected: dict[str, Counter[str]],
    spec: SampleSpec,
) -> str:
    def counts(frame: pl.DataFrame) -> str:
        rows = (
            frame.group_by("symbol")
            .agg(pl.len().alias("rows"), pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
            .sort("symbol")
        )
        lines = ["| symbol | rows | first ts (UTC) | last ts (UTC) |", "|---|---:|---|---|"]
        for r in rows.iter_rows(named=True):
            lines.append(f"| {r['symbol']} | {r['rows']} | {r['first']:%Y-%m-%d %H:%M} | {r['last']:%Y-%m-%d %H:%M} |")
        return "\n".join(lines)

    rejected_lines = [
        f"- {label}: {count} row(s) rejected: {reason}"
        for label, reasons in rejected.items()
        for reason, count in sorted(reasons.items())
    ] or ["- none: every converted row passed `validate_bars`."]
    sizes = "\n".join(
        f"- `{name}`: {(out / name).stat().st_size:,} bytes"
        for name in ("daily.parquet", "minute.parquet")
    )
    return f"""# Offline sample market data

Built by `scripts/build_sample.py` (run: `.venv/bin/python scripts/build_sample.py`).
Read by `awet_dagster.sources.sample.SampleSource`.

## Source
Real US equity bars from the QuantConnect Lean repository (Apache-2.0,
https://github.com/QuantConnect/Lean), folder `Data/equity/usa`, commit 24863901de,
copied unchanged into `shared/market-data/lean/` (see its PROVENANCE.md). Prices are
split/dividend-raw (not adjusted), as in Lean; `factor_files/` holds Lean's factor files of
the sample's symbols (copied unchanged), which `SampleSource` attaches to every fetch as
`adj_factor` / `split_factor` (`awet_dagster/sources/corporate_actions.py`).

## Contents
- `daily.parquet`: daily bars of every symbol in `daily/`, sessions
  {spec.daily_first_year}-{spec.daily_last_year}.
- `minute.parquet`: minute bars of {", ".join(spec.minute_symbols)},
  {spec.minute_first_day}..{spec.minute_last_day} (exchange dates), trade bars with the
  quote-bar closes as `bid`/`ask`.

Schema: the bar contract of `awet_dagster/sources/schema.py` (`source` = `"sample"`).

## Conversions applied
- Prices: Lean integers / 10000 -> dollars (Float64). Volume -> Float64.
- Daily `ts`: Lean's `yyyyMMdd 00:00` -> that session's 09:30 America/New_York open,
  converted to UTC (13:30 UTC under EDT, 14:30 UTC under EST).
- Minute `ts`: Lean's milliseconds since midnight in exchange time (America/New_York)
  -> UTC through the IANA tz database (DST-correct); it is the bar START.
- Quotes: joined to trade minutes on `ts`; `bid` = bid close, `ask` = ask close. Trade
  minutes without a quote keep null bid/ask; quote minutes without a trade are not added
  (no OHLC exists for them).
- Pre- and post-market minutes are kept (Lean includes 04:00-20:00 exchange time):
  regular-hours filtering is a consumer's choice (09:30 <= exchange time < 16:00), and
  dropping them here would hide real data. Nothing is added (no forward fill).
- Rows are checked with `validate_bars`; rejected rows are not shipped and are listed below.
- Files are sorted by (symbol, bar_type, ts), zstd level {spec.compression_level}.

## Rejected rows
{chr(10).join(rejected_lines)}

## Sizes
- daily rows: {daily.height:,}; minute rows: {minute.height:,}
{sizes}

### Daily rows per symbol
{counts(daily)}

### Minute rows per symbol
{counts(minute)}
"""


def copy_factor_files(lean_dir: Path, out: Path, symbols: list[str]) -> list[str]:
    """Lean's factor file of each sample symbol that has one, unchanged, into out/factor_files."""
    root = lean_dir / "equity" / "usa" if (lean_dir / "equity" / "usa").is_dir() else lean_dir
    target = out / "factor_files"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for symbol in symbols:
        src = root / "factor_files" / f"{symbol.lower()}.csv"
        if src.is_file():
            (target / src.name).write_bytes(src.read_bytes())
            copied.append(symbol)
    return copied


def build(lean_dir: Path, out: Path, spec: SampleSpec = SampleSpec()) -> tuple[pl.DataFrame, pl.DataFrame]:
    src = LeanFolderSource(lean_dir, name=SOURCE_NAME)  # the same reader as `data.source: lean`
    daily, daily_rejected = build_daily(src, spec)
    minute, minute_rejected = build_minute(src, spec)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(daily, out / "daily.parquet", spec)
    write_parquet(minute, out / "minute.parquet", spec)
    copy_factor_files(lean_dir, out, sorted({*daily["symbol"].unique(), *minute["symbol"].unique()}))
    text = provenance(out, daily, minute, {"daily": daily_rejected, "minute": minute_rejected}, spec)
    (out / "PROVENANCE.md").write_text(text, encoding="utf-8")
    return daily, minute


def _symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    if not symbols:
        raise argparse.ArgumentTypeError("give at least one symbol")
    return symbols


def parse_args(argv: list[str] | None = None) -> tuple[Path, Path, SampleSpec]:
    d = SampleSpec()  # the defaults build the shipped sample
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lean_dir", nargs="?", type=Path, default=DEFAULT_LEAN_DIR,
                        help="Lean data folder (holding equity/usa) or equity/usa itself")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--daily-first-year", type=int, default=d.daily_first_year)
    parser.add_argument("--daily-last-year", type=int, default=d.daily_last_year)
    parser.add_argument("--minute-symbols", type=_symbols, default=d.minute_symbols,
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--minute-first-day", type=date.fromisoformat, default=d.minute_first_day,
                        help="first exchange date, YYYY-MM-DD (default: %(default)s)")
    parser.add_argument("--minute-last-day", type=date.fromisoformat, default=d.minute_last_day,
                        help="last exchange date, inclusive (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.daily_first_year > args.daily_last_year or args.minute_first_day > args.minute_last_day:
        parser.error("a first year/day is after its last one")
    spec = SampleSpec(
        daily_first_year=args.daily_first_year, daily_last_year=args.daily_last_year,
        minute_symbols=args.minute_symbols, minute_first_day=args.minute_first_day,
        minute_last_day=args.minute_last_day, compression_level=d.compression_level,
    )
    return args.lean_dir, args.out, spec


def main(argv: list[str] | None = None) -> int:
    lean_dir, out, spec = parse_args(argv)
    daily, minute = build(lean_dir, out, spec)
    total = sum((out / n).stat().st_size for n in ("daily.parquet", "minute.parquet"))
    print(f"wrote {daily.height} daily + {minute.height} minute rows, {total:,} bytes -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
