"""DAG stock_feed_watch: turns new stock in landing.stock_levels into an event of the asset that backorder_cycle is
scheduled on (besides its three daily times), so that backorders are allocated as soon as stock lands.

Every few minutes one cheap task asks for the rows that landed after the watermark (an indexed range query); when
there are some it emits the asset event with the new watermark in its extra, otherwise it is skipped and emits none.
The watermark is read back from the asset's own latest events, so it moves exactly with the events (no other state).
A loader can also announce a drop itself: POST /api/v2/assets/events with the asset's URI (see docs/operations.md).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

from backorders.stock_feed import STOCK_FEED_NAME, STOCK_FEED_URI

STOCK_FEED = Asset(name=STOCK_FEED_NAME, uri=STOCK_FEED_URI, group="backorders")
WATCH_EVERY = "*/5 * * * *"


def _db_url() -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from backorders.db import url_from_parts
    from backorders.settings import CONN_ID

    c = PostgresHook.get_connection(CONN_ID)
    return url_from_parts(c.host, c.port, c.login, c.password, c.schema)


def last_watermark(events) -> str | None:
    """The watermark of the latest event that carries one (events: newest first)."""
    for ev in events:
        mark = (getattr(ev, "extra", None) or {}).get("watermark")
        if mark:
            return mark
    return None


@dag(
    dag_id="stock_feed_watch",
    schedule=WATCH_EVERY,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["backorders", "stock"],
    doc_md=__doc__,
    default_args={"owner": "oms-data-engineering", "retries": 1},
)
def stock_feed_watch():
    @task(inlets=[STOCK_FEED], outlets=[STOCK_FEED])
    def detect_new_stock() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from backorders.cycle import as_run_time
        from backorders.stock_feed import new_stock

        ctx = get_current_context()
        events = ctx["inlet_events"][STOCK_FEED].ascending(False).limit(20)
        mark = last_watermark(events)
        found = new_stock(_db_url(), as_run_time(mark) if mark else None)
        if not found["rows"]:
            raise AirflowSkipException(f"no stock landed after {mark or 'the start'}: no event")
        print(f"{found['rows']} stock rows for {found['skus']} SKUs at {found['sources']} sources landed after "
              f"{mark or 'the start'}: emitting {STOCK_FEED_URI} (watermark {found['watermark']})")
        ctx["outlet_events"][STOCK_FEED].extra = found
        return found

    detect_new_stock()


stock_feed_watch()
