"""Data-quality checks over bar frames (pure; the Dagster layer turns them into asset checks)."""
from awet_dagster.quality.bars import (
    QualityResult,
    calendar_gaps,
    duplicate_rows,
    ohlc_violations,
    staleness,
)

__all__ = ["QualityResult", "calendar_gaps", "duplicate_rows", "ohlc_violations", "staleness"]
