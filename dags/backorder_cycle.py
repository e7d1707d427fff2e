"""DAG backorder_cycle: wiring only. Every task calls one stage of backorders.cycle at the run time T."""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, dag, get_current_context, task, task_group

from backorders.rules import cron_expressions, load_outbox, load_schedule
from backorders.settings import CONN_ID, PAYMENTS_CONN_ID, SMTP_CONN_ID
from backorders.stock_feed import STOCK_FEED_NAME, STOCK_FEED_URI

DOC = """
### Backorder cycle

Three times a day (see `include/rules/schedule.yaml`), and whenever new stock lands (the asset
`backorders://landing/stock_levels`, emitted by the DAG `stock_feed_watch` or by a loader), the cycle takes every order message and stock level received up
to the run time **T** (the logical date; for a manual run without one, the time it was queued), decides which order
lines get stock, which wait as backorders, which are held or cancelled, and publishes the result to the `oms` schema.

| stage | what it does |
|---|---|
| **extract** | loads new files of the file drop (`BACKORDERS_LANDING_DIR`, each file once), opens the run (schema migrations, rules validation, rewind of an earlier execution of T), parses order messages into new orders and lines (bad ones go to `oms.quarantine`), stages the cancellations decided at T before allocation (buyer's requests, FTC deadlines, automatic cancellation), stages the on hand at T and the lines that wait from earlier runs (side by side with the orders), then demand, stock and shipment confirmations |
| **check_extract** | data-quality gate (Great Expectations on PostgreSQL, `include/rules/checks.yaml`) on the staged input: types, required fields, ranges, unique ids, stock not negative, dates not after T, nothing lost; a blocking failure stops the run before anything is published |
| **allocate** | beside or before the extract gate (it writes only staging; nothing is published unless the gate passed): one mapped task per stock pool (channels sharing sources): priority, FIFO, sourcing and split rules |
| **check_allocation** | invariants: no source over-allocated, quantities add up, no backorder where not allowed, shipment limits |
| **prepare_publish** | beside the allocation gate: the new shipment requests' numbers, the lines the run touches and their new quantities, prepared in staging so that `publish` only writes (reads `oms`, writes nothing there) |
| **load** | publishes orders, lines, shipment requests, cancellations, the attempts log and exceptions in one transaction (beside it, the run's shipment messages and its settlements, captures per shipment request and refunds, are built in staging: `prepare_shipment_messages`, `prepare_settlements`); then, side by side with the load gate, the FTC delay notices and consent, FTC exceptions and the orders' FTC trail (`apply_after_publish`), `oms.storefront_availability` (`refresh_storefront`) and the run's other payment requests, built in staging (`prepare_payment_requests`: captures of whole orders, re-authorizations) |
| **check_load** | data-quality gate on what `publish` wrote (it runs right after it): every staged row published, keys consistent, counts equal, nothing lost; a blocking failure stops the side effects |
| **side_effects** | three tasks side by side: customer emails in the `oms.notifications` outbox, captures, refunds and re-authorizations in `oms.payment_requests`, request_shipment messages in `oms.shipment_messages` (idempotency keys: never twice); the last two copy what `load` built in staging, so nothing reaches an outbox before the load gate has passed |
| **report** | records the run's figures in `oms.pipeline_runs` and drops the run's staging schema |
| **deliver** | sends the emails through `backorders_smtp`, posts the payment requests to `backorders_payments`, writes the shipment messages to the configured folder; temporary failures are retried with backoff (`include/rules/outbox.yaml`). A run whose T is older than the delivery window (a backfill) delivers nothing |

Data passes between tasks through the run's staging schema `stg_<T>` in the `backorders_db` database, not XCom.
Runs are serialized (`max_active_runs=1`, and the lease `oms.run_lock` against runs from anywhere else: a run that
finds it held waits, rescheduled). Re-running the latest T gives identical tables. Re-running an older T is allowed
when every later run is cleared too (they all run again, in order: `airflow tasks clear backorder_cycle -s <T> -y`,
or Clear with "Future" on open_run); alone it is refused, and the message says what to clear. A scheduled or
stock-triggered T that a later run has overtaken is skipped. Backfills: `--max-active-runs 1`. See
`docs/operations.md`. Each run's figures are in `oms.pipeline_runs` and in the run's note.
"""

STOCK_FEED = Asset(name=STOCK_FEED_NAME, uri=STOCK_FEED_URI, group="backorders")
LOCK_WAIT_SECONDS = 30          # wait this long in the task for the run lock, then reschedule the task
LOCK_RESCHEDULE_SECONDS = 60
NOTE_KEY = "run_note"           # XCom that plugins/backorders_ui/run_notes.py copies into the run's note

STAGE_TASKS = ["extract.load_files", "extract.extract_orders", "extract.stage_cancellations", "extract.stage_on_hand",
               "extract.stage_open_lines", "extract.extract_stock", "prepare_publish", "load.publish",
               "load.prepare_shipment_messages", "load.prepare_settlements", "load.apply_after_publish",
               "load.refresh_storefront", "load.prepare_payment_requests",
               "side_effects.queue_notifications", "side_effects.queue_payment_requests",
               "side_effects.queue_shipment_messages"]

_schedule = load_schedule()
_crons = cron_expressions(_schedule)
_delivery = load_outbox().delivery
# the delivery tasks retry on their own: with the rows' backoff, until a row's last attempt (outbox.yaml); a failed
# delivery never fails the cycle (it runs after report, and without _mark_failed)
DELIVERY_TASK_ARGS = {
    "retries": max(1, _delivery.max_attempts - 1),
    "retry_delay": timedelta(seconds=_delivery.backoff_seconds),
    "retry_exponential_backoff": float(_delivery.backoff_factor),
    "max_retry_delay": timedelta(seconds=_delivery.backoff_max_seconds),
    "on_failure_callback": None,
}


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


def _connection(conn_id: str, hook_class):
    """The fields of an Airflow connection, read with its provider's hook, as a backorders.delivery.Connection (the
    package has no Airflow import); None when the connection is not defined."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from backorders.delivery import Connection

    try:
        c = hook_class.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return Connection(host=c.host or None, port=c.port, login=c.login or None, password=c.password or None,
                      schema=c.schema or None, conn_type=c.conn_type, extra=dict(c.extra_dejson))


def _delivered(figures: dict) -> dict:
    """Fail the task (so that Airflow retries it after the backoff) while rows failed temporarily or the server could
    not be reached; rows already SENT are never sent again by the retry."""
    from backorders.delivery import needs_retry

    problem = needs_retry(figures)
    if problem:
        raise RuntimeError(f"delivery incomplete: {problem}; figures: {figures}")
    return figures


def _mark_failed(context) -> None:
    from backorders.cycle import fail_run

    try:
        fail_run(_db_url(), _run_time(), f"task {context['task_instance'].task_id} failed: {context.get('exception')}",
                 airflow_run_id=context["dag_run"].run_id)
    except Exception:  # the failure itself is already reported by Airflow
        pass


def _state(value) -> str | None:
    return None if value is None else str(getattr(value, "value", value)).lower()


def _open_run() -> dict:
    """Open the run at T. When later runs changed the tables already, ask Airflow whether each of them will run again
    (cleared with this one): then T may rewind them; otherwise the run is refused with what to clear (or skipped when
    a scheduled or stock-triggered T was overtaken). Another run holding the run lock: wait, then reschedule."""
    import logging
    from datetime import datetime, timezone

    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException

    from backorders import cycle
    from backorders.run_lock import RunLocked

    log = logging.getLogger("backorder_cycle.open_run")
    ctx = get_current_context()
    dr, ti = ctx["dag_run"], ctx["ti"]
    url, t = _db_url(), cycle.as_run_time(_run_time())
    later = cycle.later_runs(url, t)
    states: dict[str, str | None] = {}
    for r in later:
        rid = r.get("airflow_run_id")
        if rid and rid not in states:
            try:
                states[rid] = _state(ti.get_dagrun_state(dag_id=dr.dag_id, run_id=rid))
            except Exception:  # noqa: BLE001 - not a run of this Airflow (deleted, or another deployment)
                states[rid] = None
    decision = cycle.replay_decision(later, states, _state(dr.run_type), cycle.has_run(url, t))
    if decision == "skip":
        raise AirflowSkipException(
            f"run at {t.isoformat()} skipped: a later run ({later[-1]['run_at'].isoformat()}) already took every "
            "input up to its time; this scheduled or stock-triggered time has nothing left to do")
    if decision == "refuse":
        # which of them `airflow tasks clear -s T` does not reach: the runs without a logical date
        no_logical_date = []
        for r in later:
            rid = r.get("airflow_run_id")
            if rid and states.get(rid) is not None:
                try:
                    if not ti.get_dr_count(dag_id=dr.dag_id, run_ids=[rid], logical_dates=[r["run_at"]]):
                        no_logical_date.append(rid)
                except Exception:  # noqa: BLE001 - the message then guesses from the run id
                    no_logical_date = None
                    break
        raise AirflowFailException(cycle.replay_refusal(t, later, states, dr.dag_id, no_logical_date))
    if decision == "rewind":
        log.warning("re-running %s with %d later run(s) cleared to run again after it (%s): rewinding them first",
                    t.isoformat(), len(later), ", ".join(f"{r['airflow_run_id']}={states[r['airflow_run_id']]}"
                                                         for r in later))
    try:
        return cycle.begin_run(url, t, airflow_run_id=dr.run_id, allow_rewind_later=decision == "rewind",
                               lock_wait=LOCK_WAIT_SECONDS)
    except RunLocked as exc:
        when = datetime.now(timezone.utc) + timedelta(seconds=LOCK_RESCHEDULE_SECONDS)
        log.warning("%s -- rescheduled to %s", exc, when.isoformat())
        raise AirflowRescheduleException(reschedule_date=when) from exc


def _note(summary: dict) -> str:
    """The Airflow run's note: the run's figures (at most 1000 characters, the note's size)."""
    from backorders.cycle import format_summary

    return f"**backorder_cycle at {summary['run_at']}**\n\n{format_summary(summary)}"[:1000]


@dag(
    dag_id="backorder_cycle",
    schedule=AssetOrTimeSchedule(timetable=_timetable(), assets=[STOCK_FEED]),
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
            return _open_run()

        @task
        def extract_orders() -> dict:
            from backorders.cycle import extract_orders as stage

            return stage(_db_url(), _run_time())

        @task
        def extract_stock() -> dict:
            from backorders.cycle import extract_stock as stage

            return stage(_db_url(), _run_time())

        @task
        def load_files() -> dict:
            from backorders.file_drop import load_folder

            return load_folder(_db_url(), _run_time())

        @task
        def stage_cancellations() -> dict:
            from backorders.lifecycle import stage_cancellations as stage

            return stage(_db_url(), _run_time())

        @task
        def stage_on_hand() -> dict:
            from backorders.cycle import stage_on_hand as stage

            return stage(_db_url(), _run_time())

        @task
        def stage_open_lines() -> dict:
            from backorders.cycle import stage_open_lines as stage

            return stage(_db_url(), _run_time())

        # the stock intake and on hand read no order, the open lines only oms: they run next to the orders' extract
        # and cancellations
        opened = load_files() >> open_run()
        cancellations = opened >> extract_orders() >> stage_cancellations()
        on_hand = opened >> stage_on_hand()
        open_lines = opened >> stage_open_lines()
        [cancellations, on_hand, open_lines] >> extract_stock()

    def _gate(name: str) -> list:
        """A data-quality gate; a blocking failure fails the task at once (retrying would find the same data)."""
        from airflow.sdk.exceptions import AirflowFailException

        from backorders import cycle

        try:
            return getattr(cycle, name)(_db_url(), _run_time())
        except cycle.CheckFailed as exc:
            raise AirflowFailException(f"data-quality gate {name} failed: {exc}") from exc

    @task
    def check_extract() -> list:
        return _gate("check_extract")

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
        return _gate("check_allocation")

    @task
    def prepare_publish() -> dict:
        """What publish needs that the staged run determines, prepared beside the allocation gate (reads oms)."""
        from backorders.cycle import prepare_publish as stage

        return stage(_db_url(), _run_time())

    @task
    def check_load() -> list:
        return _gate("check_load")

    @task_group(tooltip="Publish the run in one transaction; then the lifecycle and the storefront; the outbox rows "
                        "built in staging (queued only after the load gate)")
    def load():
        @task
        def publish() -> dict:
            from backorders.cycle import publish as stage

            return stage(_db_url(), _run_time())

        @task
        def prepare_shipment_messages() -> dict:
            """The run's request_shipment messages built in staging beside publish (queued after the load gate)."""
            from backorders.outbox import prepare_shipment_messages as stage

            return stage(_db_url(), _run_time())

        @task
        def prepare_settlements() -> dict:
            """The run's captures per shipment request and refunds built in staging beside publish."""
            from backorders.outbox import prepare_settlements as stage

            return stage(_db_url(), _run_time())

        @task
        def prepare_payment_requests() -> dict:
            """The run's payment requests in staging: the settlements, and what follows from what publish wrote
            (queued after the load gate)."""
            from backorders.outbox import prepare_payment_requests as stage

            return stage(_db_url(), _run_time())

        @task
        def apply_after_publish() -> dict:
            from backorders.lifecycle import apply_after_publish as stage

            return stage(_db_url(), _run_time())

        @task
        def refresh_storefront() -> dict:
            from backorders.lifecycle import refresh_storefront as stage

            return stage(_db_url(), _run_time())

        # beside publish: the shipment messages and the settlements read the staged run, not what publish writes
        prepare_shipment_messages()
        published, settlements = publish(), prepare_settlements()
        published >> [apply_after_publish(), refresh_storefront()]
        [published, settlements] >> prepare_payment_requests()

    @task_group(tooltip="Outboxes: customer emails, payment requests, shipment messages")
    def side_effects():
        @task
        def queue_notifications() -> dict:
            from backorders.cycle import queue_notifications as stage

            return stage(_db_url(), _run_time())

        @task
        def queue_payment_requests() -> dict:
            from backorders.outbox import queue_payment_requests as stage

            return stage(_db_url(), _run_time())

        @task
        def queue_shipment_messages() -> dict:
            from backorders.outbox import queue_shipment_messages as stage

            return stage(_db_url(), _run_time())

        queue_notifications()       # three independent tasks: they run at the same time
        queue_payment_requests()
        queue_shipment_messages()

    @task_group(tooltip="Figures of the run in oms.pipeline_runs")
    def report():
        @task
        def finish_run() -> dict:
            from backorders.cycle import finish_run as stage, format_summary

            ti = get_current_context()["ti"]
            figures = {t: ti.xcom_pull(task_ids=t) for t in STAGE_TASKS}
            summary = stage(_db_url(), _run_time(), figures)
            print(format_summary(summary))
            ti.xcom_push(key=NOTE_KEY, value=_note(summary))    # becomes the run's note (run_notes listener)
            return summary

        finish_run()

    @task_group(tooltip="Deliver the outboxes: SMTP, the payment service (HTTP), the shipment message folder")
    def deliver():
        @task(**DELIVERY_TASK_ARGS)
        def deliver_notifications() -> dict:
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            from backorders import delivery, outbox

            url = _db_url()
            window = outbox.apply_delivery_window(url, _run_time())
            figures = delivery.deliver_notifications(url, _connection(SMTP_CONN_ID, SmtpHook))
            return _delivered({**figures, "window": window})

        @task(**DELIVERY_TASK_ARGS)
        def dispatch_payments() -> dict:
            from airflow.providers.http.hooks.http import HttpHook

            from backorders import delivery

            return _delivered(delivery.dispatch_payments(_db_url(), _connection(PAYMENTS_CONN_ID, HttpHook)))

        @task(**DELIVERY_TASK_ARGS)
        def write_shipment_messages() -> dict:
            from backorders import delivery

            return _delivered(delivery.deliver_shipment_messages(_db_url()))

        deliver_notifications()
        dispatch_payments()
        write_shipment_messages()

    loaded, load_gate = load(), check_load()
    extracted = extract()
    # the extract gate may run beside the pools' allocations or after them (the pools, the allocation gate and the
    # preparation of publish write only the run's staging schema); publish waits for the three of them
    gate, allocated, prepared = check_extract(), allocate(), [check_allocation(), prepare_publish()]
    extracted >> [gate, allocated]
    allocated >> prepared
    [gate, *prepared] >> loaded
    # the load gate checks what publish wrote, next to the lifecycle and the storefront; the side effects wait for all
    loaded.get_child_by_label("publish") >> load_gate
    [loaded, load_gate] >> side_effects() >> report() >> deliver()


backorder_cycle()
