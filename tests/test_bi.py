"""BI-ready: every oms column has a comment, the read-only role backorders_bi sees oms and nothing else and cannot
write, the views answer the common questions, and docs/schema.md covers every oms table and view."""
from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest

from backorders import cycle, db
from tests.conftest import order_message, table_rows, utc

ROOT = Path(__file__).resolve().parent.parent
T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"
BI_VIEWS = ["backorders_by_sku_age", "fill_rate_per_run", "exceptions_per_kind"]


def test_every_oms_column_has_a_comment(migrated_url):
    missing = table_rows(migrated_url, """
        SELECT c.relname || '.' || a.attname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'oms' AND (c.relkind IN ('r', 'p') OR c.relname = ANY(%(views)s))
          AND col_description(c.oid, a.attnum) IS NULL
        ORDER BY 1""".replace("%(views)s", "ARRAY[" + ", ".join(f"'{v}'" for v in BI_VIEWS) + "]"))
    assert [m for (m,) in missing] == []


def test_an_earlier_migration_s_column_comment_is_kept(migrated_url):
    # 0001 documents order_lines.wait_reason itself; 0005 only fills the gaps
    assert table_rows(migrated_url, "SELECT col_description('oms.order_lines'::regclass, attnum) FROM pg_attribute "
                                    "WHERE attrelid = 'oms.order_lines'::regclass AND attname = 'wait_reason'") == [
        ("Why the line waits, in words for a support agent.",)]


@pytest.fixture
def bi_url(migrated_url):
    """A LOGIN user in the group role backorders_bi, as an operator creates one (docs/schema.md)."""
    name = "bi_reader_" + re.sub(r"\W", "_", migrated_url.rsplit("/", 1)[1].split("?")[0])[-20:]
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {name}")
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'bi' IN ROLE backorders_bi")
    url = re.sub(r"postgresql://[^@]*@", f"postgresql://{name}:bi@", migrated_url)
    yield url
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE IF EXISTS {name}")


def bi_query(url: str, sql: str):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        conn.rollback()
        conn.close()


def test_the_bi_role_reads_oms_only_and_cannot_write(migrated_url, bi_url):
    assert table_rows(migrated_url, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'backorders_bi'") == [(False,)]
    for rel in ["orders", "order_lines", "pipeline_runs", "allocation_queue", "exception_queue", *BI_VIEWS]:
        bi_query(bi_url, f"SELECT count(*) FROM oms.{rel}")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        bi_query(bi_url, "SELECT count(*) FROM landing.order_messages")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        bi_query(bi_url, "SELECT count(*) FROM public.alembic_version")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        bi_query(bi_url, "DELETE FROM oms.orders")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        bi_query(bi_url, "CREATE TABLE oms.mine (x int)")
    # a table a later migration adds is readable too (default privileges)
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE oms.added_later (x int); INSERT INTO oms.added_later VALUES (1)")
    assert bi_query(bi_url, "SELECT x FROM oms.added_later") == [(1,)]


def test_views_answer_the_common_questions(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("B1", origin="2026-02-20T09:00:00+00:00", lines=[("SKU-A", 2, None)]),
                    "2026-02-20T09:00:00Z")
    landing.message(order_message("B2", origin="2026-03-02T05:00:00+00:00",
                                  lines=[("SKU-A", 1, None), ("SKU-B", 3, None)]), "2026-03-02T05:00:00Z")
    landing.message("garbage", "2026-03-02T05:30:00Z")
    landing.stock([("WH_PDX", "SKU-B", 3)], "2026-03-01T00:00:00Z")
    cycle.run_cycle(url, T1)
    landing.stock([("WH_PDX", "SKU-A", 1)], "2026-03-02T10:00:00Z")
    cycle.run_cycle(url, T2)

    # backorders by SKU and age (since backordered, at the latest run): B1 got the unit, 1 left; B2 waits
    assert table_rows(url, "SELECT sku, age_bucket, lines, orders, qty_backordered, as_of FROM "
                           "oms.backorders_by_sku_age ORDER BY sku, age_bucket_order") == [
        ("SKU-A", "0-1 d", 2, 2, 2, utc(T2))]
    # fill rate per run
    rates = table_rows(url, "SELECT run_at, demand_lines, lines_allocated, line_fill_rate, waiting_lines, "
                            "waiting_lines_filled, backorder_fill_rate FROM oms.fill_rate_per_run ORDER BY run_at")
    assert [r[:3] for r in rates] == [(utc(T1), 3, 1), (utc(T2), 2, 1)]
    assert float(rates[0][3]) == pytest.approx(1 / 3, abs=1e-4)
    assert rates[1][4:6] == (2, 1) and float(rates[1][6]) == 0.5
    # exceptions per kind: the garbage message
    per_kind = {(k, s): (o, c, t) for k, s, o, c, t in table_rows(
        url, "SELECT kind, severity, open, closed, total FROM oms.exceptions_per_kind")}
    assert per_kind[("REJECTED_MESSAGE", "medium")][0] == 1


def test_schema_page_covers_every_table_and_view(migrated_url):
    page = (ROOT / "docs" / "schema.md").read_text()
    assert "```mermaid" in page and "erDiagram" in page
    rels = [r for (r,) in table_rows(migrated_url, "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                                                   "ON n.oid = c.relnamespace WHERE n.nspname = 'oms' "
                                                   "AND c.relkind IN ('r', 'v') ORDER BY 1")]
    assert [r for r in rels if f"oms.{r}" not in page] == []
    assert "backorders_bi" in page and "CREATE ROLE" in page
