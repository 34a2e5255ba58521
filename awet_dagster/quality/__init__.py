"""Data-quality checks over bar frames (pure; the Dagster layer turns them into asset checks)."""
from awet_dagster.quality.bars import (
    Gap,
    QualityResult,
    calendar_gaps,
    duplicate_rows,
    ohlc_violations,
    session_gaps,
    staleness,
    tolerated_gaps,
)

__all__ = ["Gap", "QualityResult", "calendar_gaps", "duplicate_rows", "ohlc_violations", "session_gaps",
           "staleness", "tolerated_gaps"]
