"""`awet run`: bring up the embedded infrastructure, run the main Dagster job against the
project's instance, and print a summary of what it produced."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table

from awet_dagster.config import AwetConfig


def _main_job_def():
    # Module-level so dagster.reconstructable() can rebuild it in any process.
    from awet_dagster.definitions import defs
    from jobs.main import MAIN_JOB_NAME

    return defs.resolve_job_def(MAIN_JOB_NAME)


def run_main_job(cfg: AwetConfig, console: Console, start_infra: bool = True, replay: bool = True) -> int:
    from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

    from awet_cli.dagster_env import ensure_dagster_home

    started = time.monotonic()
    if start_infra:
        from awet_cli.infra_cmd import bring_up

        with console.status("Starting embedded infrastructure (PostgreSQL, Kafka broker)…"):
            bring_up(cfg, console)
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(cfg))
    os.environ.setdefault("AWET_HOME", str(cfg.paths.home.resolve()))
    console.rule("[bold]AWET main job")
    job = _main_job_def()
    tags = {}
    if job.partitions_def is not None:
        # One run over every partition (single-run backfill of the whole configured universe).
        keys = job.partitions_def.get_partition_keys()
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        console.print(f"partitions: {len(keys)} ({keys[0]} … {keys[-1]})")
    got: list[int] = []
    result = None
    with DagsterInstance.get() as instance, _interruptible(got):
        result = execute_job(
            reconstructable(_main_job_def),
            instance=instance,
            tags=tags,
            raise_on_error=False,
            # Step-level DEBUG events are in the UI; the terminal gets INFO and the summary.
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
    if got:
        import signal

        run = f"run {result.run_id[:8]}" if result is not None else "its run is in `awet ui`"
        console.print(f"[yellow]{signal.Signals(got[0]).name}: the main job was stopped ({run}); the embedded "
                      f"servers stay up until `awet infra down`[/yellow]")
        return 128 + got[0]
    run_id = result.run_id
    mats = [e for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    checks = [e for e in result.all_events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    skipped = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_SKIPPED]
    table = Table(title=f"Run {run_id[:8]} — {'SUCCESS' if result.success else 'FAILED'}")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("details")
    by_asset: dict[str, list] = {}
    for ev in mats:
        mat = ev.event_specific_data.materialization
        by_asset.setdefault(mat.asset_key.to_user_string(), []).append(mat)
    for asset_key, asset_mats in by_asset.items():
        mat = asset_mats[-1]
        details = ", ".join(
            f"{k}={_short(v)}" for k, v in mat.metadata.items() if not k.startswith(("preview", "feature_list"))
        )
        what = f"[green]materialized[/green] ({len(asset_mats)} partitions)" if mat.partition else "[green]materialized"
        table.add_row(asset_key, what, details)
    for ev in checks:
        ce = ev.event_specific_data
        table.add_row(
            f"{ce.asset_key.to_user_string()}:{ce.check_name}",
            "[green]check passed" if ce.passed else "[red]check failed",
            str(ce.severity.value) if not ce.passed else "",
        )
    for ev in failures:
        err = ev.event_specific_data.error
        table.add_row(ev.step_key or "?", "[red]failed", (err.message if err else "").strip()[:200])
    for ev in skipped:
        table.add_row(ev.step_key or "?", "[yellow]skipped", "an upstream stage or blocking check failed")
    console.print(table)
    console.print(
        f"Pipeline: {len(mats)} materializations, {sum(1 for c in checks if c.event_specific_data.passed)}"
        f"/{len(checks)} checks passed, {len(failures)} failed steps in {time.monotonic() - started:.1f}s. "
        f"Browse the run with `awet ui` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})."
    )
    # A candidate stopped by its blocking checks (the promotion gate, ONNX parity) is the
    # platform doing its job, not an error: report it and carry on with the champion in place.
    gate_only = bool(failures) and all(
        ev.event_specific_data.error is not None
        and ev.event_specific_data.error.cls_name == "DagsterAssetCheckFailedError"
        for ev in failures
    )
    if not result.success and not gate_only:
        console.print("[red]the main job failed; see the table above and the run in `awet ui`[/red]")
        return 1
    if gate_only:
        failed = [f"{c.event_specific_data.asset_key.to_user_string()}:{c.event_specific_data.check_name}"
                  for c in checks if not c.event_specific_data.passed]
        console.print(f"[yellow]candidate rejected by blocking checks: {', '.join(failed)}; "
                      "the champion is unchanged[/yellow]")
    _promote(cfg, console)
    if replay:
        console.rule("[bold]Live paper-trading replay")
        return _replay(console)
    return 0


@contextlib.contextmanager
def _interruptible(got: list[int]) -> Iterator[None]:
    """SIGTERM/SIGINT during the Dagster job: stop its step processes (this session's children;
    the managed servers run in their own session and stay up), then let the job unwind
    (KeyboardInterrupt: Dagster records the run as canceled/failed). A failsafe ends the
    process if unwinding takes longer than a few seconds."""
    import signal
    import threading

    from awet_dagster.infra.guard import stop_session_children

    def teardown(signum: int) -> None:
        stop_session_children(grace_s=3.0)
        time.sleep(15.0)
        os._exit(128 + signum)  # still here: do not hang on a stuck step

    def handler(signum: int, _frame) -> None:
        if got:
            return
        got.append(signum)
        threading.Thread(target=teardown, args=(signum,), name="awet-run-stop", daemon=True).start()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            yield
        except KeyboardInterrupt:
            if not got:
                raise
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def _promote(cfg: AwetConfig, console: Console) -> None:
    """What the promotion sensor would do now, run through the same job (audited)."""
    from dagster import DagsterInstance

    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry
    from jobs.promotion import promote_model_job
    from resources.database import DatabaseResource
    from resources.model_registry import ModelRegistryResource
    from resources.settings import SettingsResource

    registry = ModelRegistry(cfg)
    for d in promotion.decide(cfg, registry):
        if d.action != "promote":
            console.print(f"model v{d.version}: {d.action} ({d.reason})")
            continue
        with DagsterInstance.get() as instance:
            run = promote_model_job.execute_in_process(
                run_config={"ops": {"promote_version": {"config": {"version": d.version, "reason": d.reason,
                                                                   "operator": "awet run"}}}},
                instance=instance, resources={"database": DatabaseResource(), "settings": SettingsResource(),
                                              "model_registry": ModelRegistryResource()},
                raise_on_error=False,
            )
        console.print(f"model v{d.version}: {'promoted to champion' if run.success else 'promotion failed'}")
    champion = registry.get_champion()
    console.print(f"champion: {f'{champion.name} v{champion.version}' if champion else 'none (the live loop trades the Lean alphas only)'}")


def _replay(console: Console) -> int:
    import typer

    from awet_cli.live_cmd import _live_replay

    try:
        _live_replay("sample", None, None, None, None, lockstep=True, preload_days=730, max_seconds=900.0)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    return 0


def _short(value) -> str:
    text = str(getattr(value, "value", value))
    return text if len(text) <= 40 else text[:37] + "…"
