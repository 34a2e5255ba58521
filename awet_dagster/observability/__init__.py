"""Observability helpers of the pure core (no dagster, no confluent_kafka, no prometheus server).

- ``lag``: consumer-lag arithmetic over offsets (clamped at 0).
- ``textfile``: Prometheus text-format files under ``.awet/metrics/`` written by Dagster runs
  (champion OOS Sharpe, ...) and served by ``python -m live.metrics --textfile-dir``.
- ``promql``: a small PromQL tokenizer used to check that alert rules and dashboards only
  reference metrics the code exports.
"""
