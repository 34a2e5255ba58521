"""Turning the core's `QualityResult`s into blocking Dagster check results."""
from collections.abc import Iterable, Iterator

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue

from awet_dagster.quality import QualityResult


def metadata_value(value):
    return MetadataValue.json(value) if isinstance(value, (dict, list)) else value


def check_results(key: AssetKey, results: Iterable[QualityResult]) -> Iterator[AssetCheckResult]:
    for check in results:
        yield AssetCheckResult(
            asset_key=key, check_name=check.name, passed=check.passed,
            severity=AssetCheckSeverity.WARN if check.severity == "warn" else AssetCheckSeverity.ERROR,
            description=check.description, metadata={k: metadata_value(v) for k, v in check.metadata.items()},
        )
