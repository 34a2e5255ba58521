#!/usr/bin/env python
"""Build the offline sample data set shipped in `awet_dagster/data/sample/`.

Reads real bars from a copy of QuantConnect Lean's `Data/equity/usa` folder (default
`../shared/market-data/lean` relative to the repo root), converts them to the bar
contract and writes zstd parquet plus PROVENANCE.md. Deterministic: the same input gives
the same frames (files are sorted by symbol, bar_type, ts).

    .venv/bin/python scripts/build_sample.py [LEAN_DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import polars as pl  # noqa: E402

from awet_dagster.sources import lean  # noqa: E402
from awet_dagster.sources.schema import validate_bars  # noqa: E402


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


def _read_zip_member(path: Path) -> bytes:
    # Each Lean zip holds exactly one CSV; insist on it so a changed layout fails loudly.
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if len(names) != 1:
            raise ValueError(f"{path}: expected one CSV inside, found {names}")
        return zf.read(names[0])


def build_daily(equity_dir: Path, spec: SampleSpec) -> pl.DataFrame:
    frames = [
        lean.parse_daily(_read_zip_member(p), p.stem)
        for p in sorted((equity_dir / "daily").glob("*.zip"))
    ]
    if not frames:
        raise FileNotFoundError(f"no daily/*.zip under {equity_dir}")
    daily = pl.concat(frames)
    year = pl.col("ts").dt.year()
    return daily.filter(year.is_between(spec.daily_first_year, spec.daily_last_year))


def build_minute(equity_dir: Path, spec: SampleSpec) -> pl.DataFrame:
    frames = []
    for symbol in spec.minute_symbols:
        folder = equity_dir / "minute" / symbol.lower()
        for trade_zip in sorted(folder.glob("*_trade.zip")):
            day = datetime.strptime(trade_zip.name[:8], "%Y%m%d").date()
            if not spec.minute_first_day <= day <= spec.minute_last_day:
                continue
            quote_zip = trade_zip.with_name(f"{trade_zip.name[:8]}_quote.zip")
            trades = lean.parse_minute_trades(_read_zip_member(trade_zip), symbol, day)
            quotes = lean.parse_minute_quotes(_read_zip_member(quote_zip), day)
            frames.append(lean.attach_quotes(trades, quotes))
    if not frames:
        raise FileNotFoundError(f"no minute trade zips for {spec.minute_symbols} under {equity_dir}")
    return pl.concat(frames)


def checked(frame: pl.DataFrame, label: str) -> tuple[pl.DataFrame, Counter[str]]:
    good, rejected = validate_bars(frame)
    reasons = Counter(rejected["reason"].to_list())
    for reason, count in sorted(reasons.items()):
        print(f"{label}: rejected {count} row(s): {reason}", file=sys.stderr)
    return good.sort(SORT_KEYS), reasons


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
split/dividend-raw (not adjusted), as in Lean.

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


def build(lean_dir: Path, out: Path, spec: SampleSpec = SampleSpec()) -> tuple[pl.DataFrame, pl.DataFrame]:
    equity_dir = lean_dir / "equity" / "usa"
    if not equity_dir.is_dir():
        raise FileNotFoundError(f"{equity_dir} not found: pass the Lean data folder as LEAN_DIR")
    daily, daily_rejected = checked(build_daily(equity_dir, spec), "daily")
    minute, minute_rejected = checked(build_minute(equity_dir, spec), "minute")
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(daily, out / "daily.parquet", spec)
    write_parquet(minute, out / "minute.parquet", spec)
    text = provenance(out, daily, minute, {"daily": daily_rejected, "minute": minute_rejected}, spec)
    (out / "PROVENANCE.md").write_text(text, encoding="utf-8")
    return daily, minute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lean_dir", nargs="?", type=Path, default=DEFAULT_LEAN_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    daily, minute = build(args.lean_dir, args.out)
    total = sum((args.out / n).stat().st_size for n in ("daily.parquet", "minute.parquet"))
    print(f"wrote {daily.height} daily + {minute.height} minute rows, {total:,} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
