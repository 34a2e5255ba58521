"""The `lean` source: bars read from any folder in QuantConnect Lean's equity layout.

Layout (`data.lean_root` is the Lean data folder holding `equity/usa`, or `equity/usa`
itself):

- `daily/<symbol>.zip`: one CSV, the symbol's whole daily history;
- `minute/<symbol>/<yyyyMMdd>_trade.zip` (and optionally `_quote.zip`): one exchange day;
- `factor_files/<symbol>.csv`: corporate-action factors (optional per symbol).

Only the files a request needs are opened: the daily zips of the asked symbols, the minute
day files whose exchange date overlaps the range. Parsing is `lean.py`'s (shared with the
sample builder, `scripts/build_sample.py`).

Bad data policy: a vendor folder is not ours to fix, so rows failing `validate_bars` are
kept out of the result, logged (count and first reason) and left on `last_rejected` (the
`raw_bars` asset stores them in `rejected_bars`), like the HTTP vendors. A file that does not
parse at all (truncated zip, a non-numeric field) raises `SourceError` naming the file: a
corrupt day should fail the load, not become a silent gap.
"""
from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from awet_dagster.sources import lean
from awet_dagster.sources.corporate_actions import attach_factors, read_factor_files
from awet_dagster.sources.errors import MissingCredentials, SourceError, SourceUnavailable
from awet_dagster.sources.exchange_time import EXCHANGE_TZ, to_utc_bounds
from awet_dagster.sources.registry import requested_symbols
from awet_dagster.sources.schema import BAR_TYPES, REASON, empty_bars, ensure_schema, validate_bars

log = logging.getLogger("awet.sources")

_NY = ZoneInfo(EXCHANGE_TZ)
_TRADE_SUFFIX = "_trade.zip"
_QUOTE_SUFFIX = "_quote.zip"


def equity_dir(lean_root: Path | str | None) -> Path:
    """The `equity/usa` folder of `lean_root` (the Lean data folder or that folder itself)."""
    if lean_root is None or not str(lean_root).strip():
        raise MissingCredentials(
            "lean: data.lean_root is not set; point it (AWET__DATA__LEAN_ROOT) at a Lean data "
            "folder containing equity/usa"
        )
    root = Path(lean_root).expanduser()
    for candidate in (root / "equity" / "usa", root):
        if (candidate / "daily").is_dir() or (candidate / "minute").is_dir():
            return candidate
    what = "does not exist" if not root.exists() else "has no equity/usa/daily or minute folder"
    raise SourceUnavailable(f"lean: data.lean_root {root} {what}")


def read_zip_member(path: Path) -> bytes:
    """The one CSV inside a Lean zip (a changed layout fails loudly, naming the file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if len(names) != 1:
                raise SourceError(f"{path}: expected one CSV inside, found {names}")
            return zf.read(names[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: unreadable zip ({exc})") from exc


def _parsed(path: Path, parse: Callable[..., pl.DataFrame], *args: object) -> pl.DataFrame:
    try:
        return parse(read_zip_member(path), *args)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{path}: not a Lean CSV: {str(exc).splitlines()[0]}") from exc


def _day_of(path: Path) -> date | None:
    try:
        return datetime.strptime(path.name[:8], "%Y%m%d").date()
    except ValueError:
        return None  # not a Lean day file: ignored


class LeanFolderSource:
    """`BarSource` over a Lean equity folder (daily and minute, trades with quotes)."""

    def __init__(self, lean_root: Path | str | None = None, *, name: str = "lean") -> None:
        self.root = equity_dir(lean_root)
        # `name` is also the `source` column: the sample builder reads as "sample".
        self.name = name
        self.last_rejected = pl.DataFrame()

    def __repr__(self) -> str:
        return f"LeanFolderSource({str(self.root)!r})"

    def _folder(self, timeframe: str) -> Path:
        if timeframe not in BAR_TYPES:
            raise ValueError(f"timeframe must be one of {BAR_TYPES}, got {timeframe!r}")
        return self.root / timeframe

    def symbols(self, timeframe: str) -> tuple[str, ...]:
        folder = self._folder(timeframe)
        if not folder.is_dir():
            return ()
        if timeframe == "daily":
            names = (p.stem for p in folder.glob("*.zip"))
        else:
            names = (p.name for p in folder.iterdir() if p.is_dir() and any(p.glob(f"[0-9]*{_TRADE_SUFFIX}")))
        return tuple(sorted(n.upper() for n in names))

    def date_range(self, timeframe: str) -> tuple[datetime, datetime]:
        """First and last bar start (UTC) over all symbols of `timeframe`.

        Daily reads every daily file's first and last line; minute only the files of the
        first and last day present.
        """
        symbols = self.symbols(timeframe)
        if not symbols:
            raise SourceUnavailable(f"lean: no {timeframe} data under {self.root}")
        if timeframe == "daily":
            ends = []
            for s in symbols:
                path = self.root / "daily" / f"{s.lower()}.zip"
                lines = [ln for ln in read_zip_member(path).splitlines() if ln.strip()]
                if lines:
                    ends.append(lean.parse_daily(b"\n".join([lines[0], lines[-1]]), s, self.name))
            frame = pl.concat(ends)
        else:
            days = {s: set(self._trade_zips(s)) for s in symbols}
            first = min(min(d) for d in days.values() if d)
            last = max(max(d) for d in days.values() if d)
            frame = pl.concat(
                [self._minute_day(s, d) for s in symbols for d in sorted({first, last}) if d in days[s]]
            )
        if frame.height == 0:
            raise SourceUnavailable(f"lean: {timeframe} files under {self.root} hold no bars")
        return frame["ts"].min(), frame["ts"].max()  # type: ignore[return-value]

    def fetch(
        self,
        symbols: Sequence[str],
        start: date | datetime,
        end: date | datetime,
        timeframe: str,
    ) -> pl.DataFrame:
        """Bars of `symbols` with start in [start, end) (dates: inclusive exchange dates).

        An unknown symbol raises `SourceUnavailable` naming the available ones; a known one
        without bars in range contributes no rows. Frames carry `adj_factor`/`split_factor`
        from the folder's factor files (1.0 for a symbol without one).
        """
        available = self.symbols(timeframe)
        wanted = requested_symbols(
            symbols, available,
            lambda unknown: f"lean: no {timeframe} data for {unknown} under {self.root}; available: {list(available)}")
        lo, hi = to_utc_bounds(start, end)
        frames = list(self._read(wanted, lo, hi, timeframe))
        frame = pl.concat(frames) if frames else empty_bars()
        # Stable sort: of two copies of a bar, validate_bars keeps the first one read.
        frame = frame.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)).sort("symbol", "ts", maintain_order=True)
        # Factors before validation: the contract checks them like the prices (as SampleSource does).
        frame = attach_factors(frame, read_factor_files(self.root / "factor_files", wanted))
        good, self.last_rejected = validate_bars(ensure_schema(frame))
        if self.last_rejected.height:
            log.warning("%s: rejected %d %s bar(s) of %s under %s; first reason: %s", self.name,
                        self.last_rejected.height, timeframe, wanted, self.root, self.last_rejected[REASON][0])
        return good

    def _read(self, symbols: list[str], lo: datetime, hi: datetime, timeframe: str) -> Iterator[pl.DataFrame]:
        if timeframe == "daily":
            for s in symbols:
                yield _parsed(self.root / "daily" / f"{s.lower()}.zip", lean.parse_daily, s, self.name)
            return
        # A day file holds one exchange date (00:00-24:00 New York): open only those overlapping.
        first = lo.astimezone(_NY).date()
        last = (hi - timedelta(microseconds=1)).astimezone(_NY).date()
        for s in symbols:
            for day in sorted(self._trade_zips(s)):
                if first <= day <= last:
                    yield self._minute_day(s, day)

    def _trade_zips(self, symbol: str) -> dict[date, Path]:
        folder = self.root / "minute" / symbol.lower()
        days = {_day_of(p): p for p in folder.glob(f"[0-9]*{_TRADE_SUFFIX}")}
        return {d: p for d, p in days.items() if d is not None}

    def _minute_day(self, symbol: str, day: date) -> pl.DataFrame:
        folder = self.root / "minute" / symbol.lower()
        stem = day.strftime("%Y%m%d")
        trades = _parsed(folder / f"{stem}{_TRADE_SUFFIX}", lean.parse_minute_trades, symbol, day, self.name)
        quote_zip = folder / f"{stem}{_QUOTE_SUFFIX}"
        if not quote_zip.is_file():
            return trades  # a trade-only day: bid/ask stay null
        quotes = _parsed(quote_zip, lean.parse_minute_quotes, day)
        try:
            return lean.attach_quotes(trades, quotes)
        except pl.exceptions.PolarsError as exc:  # e.g. two quote rows for one minute
            raise SourceError(f"{quote_zip}: quotes do not join: {str(exc).splitlines()[0]}") from exc
