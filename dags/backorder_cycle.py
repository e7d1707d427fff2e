"""DAG backorder_cycle: wiring only. Every task calls one stage of backorders.cycle at the run time T."""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task, task_group

from backorders.rules import cron_expressions, load_schedule
from backorders.settings import CONN_ID

DOC = """
### Backorder cycle

Three times a day (see `include/rules/schedule.yaml`) the cycle takes every order message and stock level received up
to the run time **T** (the logical date; for a manual run without one, the time it was queued), decides which order
lines get stock, which wait as backorders, which are held or cancelled, and publishes the result to the `oms` schema.

| stage | what it does |
|---|---|
| **extract** | opens the run (schema migrations, rules validation, rewind of an earlier execution of T), parses order messages into new orders and lines (bad ones go to `oms.quarantine`), stages demand, stock at T and shipment confirmations |
| **check_extract** | data-quality checks on the staged input; a blocking failure stops the run before anything is published |
| **allocate** | one mapped task per stock pool (channels sharing sources): priority, FIFO, sourcing and split rules |
| **check_allocation** | invariants: no source over-allocated, quantities add up, no backorder where not allowed, shipment limits |
| **load** | publishes orders, lines, shipment requests, cancellations, the attempts log and exceptions in one transaction |
| **side_effects** | queues customer emails in the `oms.notifications` outbox (idempotency keys: never twice) |
| **report** | records the run's figures in `oms.pipeline_runs` and drops the run's staging schema |

Data passes between tasks through the run's staging schema `stg_<T>` in the `backorders_db` database, not XCom.
Runs are serialized (`max_active_runs=1`). Re-running the latest T gives identical tables; re-running an older T
alone is refused: clear it together with every later run.
"""

STAGE_TASKS = ["extract.extract_orders", "extract.extract_stock", "load.publish", "side_effects.queue_notifications"]

_schedule = load_schedule()
_crons = cron_expressions(_schedule)


def _timetable():
    if len(_crons) == 1:
        from airflow.timetables.trigger import CronTriggerTimetable

        return CronTriggerTimetable(_crons[0], timezone=_schedule.timezone)
    from airflow.timetables.trigger import MultipleCronTriggerTimetable

    return MultipleCronTriggerTimetable(*_crons, timezone=_schedule.timezone)


def _run_time() -> str:
    """T of the current run as ISO text."""
    from backorders.cycle import resolve_run_time

    ctx = get_current_context()
    return resolve_run_time(ctx.get("logical_date"), getattr(ctx["dag_run"], "run_after", None)).isoformat()


def _db_url() -> str:
    """URL of the business database from the Airflow connection backorders_db."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from backorders.db import url_from_parts

    c = PostgresHook.get_connection(CONN_ID)
    return url_from_parts(c.host, c.port, c.login, c.password, c.schema)


def _mark_failed(context) -> None:
    from backorders.cycle import fail_run

    try:
        fail_run(_db_url(), _run_time(), f"task {context['task_instance'].task_id} failed: {context.get('exception')}")
    except Exception:  # the failure itself is already reported by Airflow
        pass


@dag(
    dag_id="backorder_cycle",
    schedule=_timetable(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["backorders", "oms", "allocation"],
    default_args={
        "owner": "oms-data-engineering",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": _mark_failed,
    },
)
def backorder_cycle():
    @task_group(tooltip="Open the run; stage new orders, demand, stock at T and confirmations")
    def extract():
        @task
        def open_run() -> dict:
            from backorders.cycle import begin_run

            ctx = get_current_context()
            return begin_run(_db_url(), _run_time(), airflow_run_id=ctx["dag_run"].run_id)

        @task
        def extract_orders() -> dict:
            from backorders.cycle import extract_orders as stage

            return stage(_db_url(), _run_time())

        @task
        def extract_stock() -> dict:
            from backorders.cycle import extract_stock as stage

            return stage(_db_url(), _run_time())

        open_run() >> extract_orders() >> extract_stock()

    @task
    def check_extract() -> list:
        from backorders.cycle import check_extract as stage

        return stage(_db_url(), _run_time())

    @task_group(tooltip="Allocate each stock pool (mapped: pools run in parallel on several workers)")
    def allocate():
        @task
        def list_pools() -> list[str]:
            from backorders.cycle import list_pools as pools, prepare_allocation

            prepare_allocation(_db_url(), _run_time())
            return pools(_db_url(), _run_time())

        @task(map_index_template="{{ task.op_kwargs['pool'] }}")
        def allocate_pool(pool: str) -> dict:
            from backorders.cycle import allocate as stage

            return stage(_db_url(), _run_time(), pool)

        allocate_pool.expand(pool=list_pools())

    @task
    def check_allocation() -> list:
        from backorders.cycle import check_allocation as stage

        return stage(_db_url(), _run_time())

    @task_group(tooltip="Publish the run in one transaction")
    def load():
        @task
        def publish() -> dict:
            from backorders.cycle import publish as stage

            return stage(_db_url(), _run_time())

        publish()

    @task_group(tooltip="Outboxes: customer emails")
    def side_effects():
        @task
        def queue_notifications() -> dict:
            from backorders.cycle import queue_notifications as stage

            return stage(_db_url(), _run_time())

        queue_notifications()

    @task_group(tooltip="Figures of the run in oms.pipeline_runs")
    def report():
        @task
        def finish_run() -> dict:
            from backorders.cycle import finish_run as stage, format_summary

            ti = get_current_context()["ti"]
            figures = {t: ti.xcom_pull(task_ids=t) for t in STAGE_TASKS}
            summary = stage(_db_url(), _run_time(), figures)
            print(format_summary(summary))
            return summary

        finish_run()

    extract() >> check_extract() >> allocate() >> check_allocation() >> load() >> side_effects() >> report()


backorder_cycle()
