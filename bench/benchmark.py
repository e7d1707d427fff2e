"""Benchmark of the backorder cycle at retail scale: the cycle's stages against a SQL FIFO floor, memory and history.

What is measured (see docs/performance.md):

1. *Prepare* (child processes, not part of the figures of the cycle): the demo generator writes the landing tables
   (``--open-lines`` lines, ``--skus`` SKUs, 5 sources, 3 channels). The messages received before T0 (all but the
   last ``--new-share`` of them) are ingested by a first cycle at T0 that sees no stock at all: every backorderable
   line waits, the others are cancelled. That run is reported as "first ingest". The stock of the demo (its latest
   level per source and SKU) arrives as one restock just before T1.
2. *The measured cycle* at T1 (a child process, so that its peak RSS is the cycle's own): the new messages received
   after T0 plus every waiting line, against the restock. ``cycle.run_cycle`` runs every stage in-process, exactly
   the DAG's functions without Airflow's task start-up. Repeated ``--repeat`` times (each repeat rewinds T1 first,
   untimed), medians reported.
3. *The floor*, on the same database and the same staged input of the measured cycle: a single-statement SQL FIFO
   allocation (a window function cumulating the open quantity per pool and SKU in priority order, against the pool's
   stock), and a bare COPY of the cycle's input rows (staged demand and stock) out of PostgreSQL and of its output
   rows (allocations, line results) into it. The first cycle's staged tables are kept in ``bench_floor``, and the floor
   is sampled after it and before and after every later cycle (with the history too): each cycle's ratios are taken to
   the floor samples next to it, so that a host whose speed moves during the run moves both. Beside the floor, not a
   target's denominator: *the bound of the writes*, the rows the first cycle wrote to the oms tables written again
   (INSERT ... SELECT into empty tables with the same indexes), once a sample set: what writing the output alone takes.
4. *History*: ``--history-lines`` closed lines (shipped or cancelled orders, their shipment requests and lines,
   cancellations and backorder attempts, all before T0) are inserted, then T1 is rewound and measured again.
5. *The history ratio by alternation* (``--alternate-with``): two kept databases of the same scale and seed, one
   without history and one with it, their T1 cycles measured in turns, each after its own floor sample.

Run: ``python -m bench.benchmark`` (or ``./dev.sh bench``); ``--help`` for the scale flags.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
# stage groups of the report, by the names cycle.run_cycle times its stages with
GROUPS = ["extract", "checks", "allocate", "load", "side_effects", "report"]
FLOOR_SAMPLES = 3           # the floor is measured at least this often (median)


def stage_group(name: str) -> str:
    if name in ("begin", "load_files") or name.startswith("extract") or name.startswith("stage_"):
        return "extract"
    if name.startswith("check"):
        return "checks"
    if name.startswith("allocate") or name in ("prepare_allocation", "list_pools"):
        return "allocate"
    if name in ("publish", "prepare_publish"):
        return "load"
    if name in ("finish", "finish_run"):
        return "report"
    return "side_effects"


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- database
def bench_database(url: str | None, name: str, fresh: bool = True) -> str:
    """The database `name` on the server of `url` (default: the embedded server), dropped and created again when
    `fresh`; returns its URL."""
    import psycopg2

    if url is None:
        from backorders import embedded_pg

        url = embedded_pg.ensure_database()
    parts = urlsplit(url)
    if fresh:
        admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
    return urlunsplit(parts._replace(path="/" + name))


# what a prepared benchmark database remembers about itself, so that --reuse-database can measure it again
BENCH_STATE = "public.bench_state"


def save_state(url: str, state: dict) -> None:
    from backorders import db

    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {BENCH_STATE} (doc jsonb NOT NULL)")
        cur.execute(f"DELETE FROM {BENCH_STATE}")
        cur.execute(f"INSERT INTO {BENCH_STATE} VALUES (%s)", (json.dumps(state, default=str),))


def load_state(url: str) -> dict:
    """The state of a database kept by an earlier run (--keep-database); a clear error when there is none."""
    import psycopg2

    try:
        conn = psycopg2.connect(url)
    except psycopg2.OperationalError as exc:
        raise SystemExit(f"--reuse-database: cannot connect to {url}: {exc}".strip())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (BENCH_STATE,))
            if cur.fetchone()[0] is None:
                raise SystemExit(f"--reuse-database: {url} was not prepared by this benchmark (no {BENCH_STATE}); "
                                 "run once with --keep-database first")
            cur.execute(f"SELECT doc FROM {BENCH_STATE}")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _child(args: list[str], timeout: float = 3600) -> dict:
    """Run `python -m bench.benchmark <args>` in a new process; return the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "bench.benchmark", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- prepare
def landing_for_benchmark(data, new_share: float):
    """The demo's landing data arranged for the benchmark: T0, T1 and the frames to write.

    T0: the time by which all but the last `new_share` of the messages are received. T1: one hour after the last
    message (whole hour). Stock: the latest level of each (source, SKU) of the demo, as of T1 - 30 minutes, so the
    first cycle at T0 sees no stock and the cycle at T1 sees a restock.
    """
    import pandas as pd

    msgs = data.order_messages
    received = pd.to_datetime(msgs["received_at"], utc=True)
    t0 = received.quantile(1.0 - new_share).ceil("min").to_pydatetime()
    t1 = (received.max() + pd.Timedelta(hours=1)).ceil("h").to_pydatetime()
    stock = data.stock_levels.sort_values("as_of", kind="stable").drop_duplicates(["source_code", "sku"], keep="last")
    at = pd.Timestamp(t1 - timedelta(minutes=30))
    stock = stock.assign(as_of=at, received_at=at).reset_index(drop=True)
    data.stock_levels = stock
    return t0, t1, data


def prepare(url: str, open_lines: int, skus: int, days: int, seed: int, new_share: float) -> dict:
    """Generate the demo and write the landing tables (runs in its own process: the generator's memory is not the cycle's)."""
    from backorders import cycle, db, demo_data, schema

    schema.upgrade(url)
    started = time.perf_counter()
    data = demo_data.generate_demo(open_lines, seed=seed, days=days, n_skus=skus)
    gen = time.perf_counter() - started
    t0, t1, data = landing_for_benchmark(data, new_share)
    started = time.perf_counter()
    with db.transaction(url) as conn:
        counts = demo_data.write_landing(conn, data)
    with db.transaction(url) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE landing.order_messages, landing.stock_levels, landing.catalog_items")
    return {"t0": t0.isoformat(), "t1": t1.isoformat(), "generate_seconds": round(gen, 2),
            "write_landing_seconds": round(time.perf_counter() - started, 2), "landing_rows": counts,
            "generator_peak_rss_mb": cycle.peak_rss_mb()}


# ----------------------------------------------------------------------------------------------- cycle
def measure_cycle(url: str, t: str, keep_staging: bool) -> dict:
    """One cycle at T in this process (a child of the benchmark): per-stage seconds, wall time, peak RSS."""
    from backorders import cycle
    from backorders.rules import load_rules

    rules = load_rules()
    # process start-up, like Airflow's task start-up, is not part of the stages: the libraries are imported first and
    # their import time is reported on its own (Great Expectations alone takes seconds)
    started = time.perf_counter()
    import backorders.allocation, backorders.messages, backorders.notifications  # noqa: F401
    import great_expectations  # noqa: F401
    imports = time.perf_counter() - started

    rss_before = cycle.peak_rss_mb()
    started = time.perf_counter()
    summary = cycle.run_cycle(url, t, rules=rules, keep_staging=keep_staging)
    wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 3), "seconds": summary["seconds"], "parallel": summary.get("parallel", {}),
            "peak_rss_mb": cycle.peak_rss_mb(),
            "stage_peak_rss_mb": summary.get("peak_rss_mb", {}),
            "import_seconds": round(imports, 3),
            "rss_after_imports_mb": round(rss_before, 1),
            "summary": {k: v for k, v in summary.items() if k not in ("seconds", "parallel", "peak_rss_mb")}}


def rewind(url: str, t: str) -> None:
    """Undo the run at T (untimed): begin_run rewinds it; then the opened run is removed again."""
    from backorders import cycle, db

    from backorders import run_lock

    cycle.begin_run(url, t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        run_lock.release(cur, cycle.as_run_time(t))
        cur.execute("DELETE FROM oms.pipeline_runs WHERE run_at = %s", (cycle.as_run_time(t),))
        cur.execute(f"DROP SCHEMA IF EXISTS {cycle.staging_schema(cycle.as_run_time(t))} CASCADE")


def vacuum_analyze(url: str) -> None:
    """What autovacuum and the checkpointer would have done between runs (hours apart): visibility maps and statistics
    of the oms tables, and the dirty pages of what came before written out (checkpoint)."""
    from backorders import db

    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'oms'")
        for (table,) in cur.fetchall():
            cur.execute(f"VACUUM ANALYZE oms.{table}")
    conn.close()
    checkpoint(url)


def checkpoint(url: str) -> None:
    """Write out the dirty pages of what came before. Without it, the gigabytes that the first ingest or the history
    insert wrote are flushed during the measured cycle that follows, and charged to it (a superuser, or on PostgreSQL
    15+ a member of pg_checkpoint, may run it; otherwise it is left to the server)."""
    import psycopg2

    from backorders import db

    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        try:
            cur.execute("CHECKPOINT")
        except psycopg2.errors.InsufficientPrivilege as exc:
            _say(f"no CHECKPOINT before the cycle ({exc.pgerror.strip()}): its figures include the server's own")
    conn.close()


# ----------------------------------------------------------------------------------------------- floor
FIFO_SQL = """
CREATE TABLE {stg}.floor_fifo AS
WITH pool_sources AS (
    SELECT DISTINCT p.pool, unnest(c.sources) AS source_code FROM {stg}.pools p JOIN {stg}.channels c USING (store)
),
supply AS (
    SELECT ps.pool, s.sku, sum(s.qty_available) AS qty
    FROM {stg}.stock s JOIN pool_sources ps USING (source_code) GROUP BY ps.pool, s.sku
),
d AS (
    SELECT d.pool, d.order_id, d.line_id, d.sku, d.qty_open,
           sum(d.qty_open) OVER (PARTITION BY d.pool, d.sku
                                 ORDER BY d.priority_tier, d.origin_date, d.order_id COLLATE "C", d.line_number,
                                          d.line_id COLLATE "C"
                                 ROWS UNBOUNDED PRECEDING) AS cum
    FROM {stg}.demand d
)
SELECT d.pool, d.order_id, d.line_id, d.sku, d.qty_open,
       least(d.qty_open, greatest(coalesce(s.qty, 0) - (d.cum - d.qty_open), 0))::bigint AS qty_allocated
FROM d LEFT JOIN supply s USING (pool, sku)
"""


def fifo_floor(conn, stg: str) -> float:
    """Seconds of the single-statement SQL FIFO allocation of the staged demand against the staged stock."""
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {stg}.floor_fifo")
        started = time.perf_counter()
        cur.execute(FIFO_SQL.replace("{stg}", stg))
        conn.commit()
        return time.perf_counter() - started


def copy_floor(conn, stg: str) -> dict:
    """Seconds of a bare COPY of the cycle's input rows out (demand, stock) and of its output rows in."""
    out = {}
    with conn.cursor() as cur:
        started = time.perf_counter()
        for table in ("demand", "stock"):
            buf = io.StringIO()
            cur.copy_expert(f"COPY {stg}.{table} TO STDOUT WITH (FORMAT csv)", buf)
        out["copy_out"] = time.perf_counter() - started
        bufs = {}
        for table in ("allocations", "line_results"):
            bufs[table] = io.StringIO()
            cur.copy_expert(f"COPY {stg}.{table} TO STDOUT WITH (FORMAT csv)", bufs[table])
            cur.execute(f"DROP TABLE IF EXISTS {stg}.floor_{table}; "
                        f"CREATE TABLE {stg}.floor_{table} (LIKE {stg}.{table})")
        conn.commit()
        started = time.perf_counter()
        for table, buf in bufs.items():
            buf.seek(0)
            cur.copy_expert(f"COPY {stg}.floor_{table} FROM STDIN WITH (FORMAT csv)", buf)
        conn.commit()
        out["copy_in"] = time.perf_counter() - started
    out["copy"] = out["copy_out"] + out["copy_in"]
    return out


# the staged input and output of the first measured cycle, kept for the floor samples taken around every cycle
FLOOR_SCHEMA = "bench_floor"
FLOOR_TABLES = ("demand", "stock", "pools", "channels", "allocations", "line_results")


# the oms tables a cycle writes, which of their rows run T wrote (its new rows, and the last version of those it
# updated), and whether publish writes them (in one transaction: on one core, whatever the cores)
WRITTEN = {
    "orders": ("updated_at = %(t)s", True),
    "order_documents": ("created_run_at = %(t)s", True),
    "order_lines": ("updated_at = %(t)s", True),
    "shipment_requests": ("requested_at = %(t)s OR shipped_run_at = %(t)s", True),
    "shipment_request_lines": ("shipment_request_id IN (SELECT shipment_request_id FROM oms.shipment_requests "
                               "WHERE requested_at = %(t)s)", True),
    "line_cancellations": ("run_at = %(t)s", True),
    "backorder_attempts": ("checked_at = %(t)s", True),
    "quarantine": ("run_at = %(t)s", True),
    "consumed_messages": ("run_at = %(t)s", True),
    "exceptions": ("opened_at = %(t)s OR closed_at = %(t)s", False),
    "delay_notices": ("sent_at = %(t)s OR decided_at = %(t)s", False),
    "notifications": ("created_at = %(t)s", False),
    "notification_lines": ("notification_id IN (SELECT notification_id FROM oms.notifications "
                           "WHERE created_at = %(t)s)", False),
    "payment_requests": ("created_at = %(t)s", False),
    "shipment_messages": ("created_at = %(t)s", False),
    "storefront_availability": ("updated_at = %(t)s", False),
}


def keep_floor_input(url: str, t: str) -> str:
    """Copy the staged tables the floor reads (of a cycle run with keep_staging) to FLOOR_SCHEMA, which rewinds leave
    alone: the floor can then be measured before and after every later cycle, on the very same rows. The rows the
    cycle wrote to the oms tables (WRITTEN) are kept there too, as written_<table>, for writes_floor."""
    from backorders import cycle, db

    stg = cycle.staging_schema(cycle.as_run_time(t))
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE; CREATE SCHEMA {FLOOR_SCHEMA}")
        for table in FLOOR_TABLES:
            cur.execute(f"CREATE TABLE {FLOOR_SCHEMA}.{table} AS TABLE {stg}.{table}; ANALYZE {FLOOR_SCHEMA}.{table}")
        for table, (rows, _) in WRITTEN.items():
            cur.execute(f"CREATE TABLE {FLOOR_SCHEMA}.written_{table} AS SELECT * FROM oms.{table} WHERE {rows}",
                        {"t": t})
    return FLOOR_SCHEMA


def writes_floor(conn, schema: str) -> dict | None:
    """Seconds of writing the rows the kept cycle wrote (keep_floor_input's written_<table>) into empty tables shaped
    as their oms tables: every index, unique and check constraint and default (LIKE ... INCLUDING ALL), no foreign key.
    An INSERT ... SELECT of the kept rows, so the server copies each row as it is stored (a COPY of their text would
    parse every value again, the JSON documents too, which no update of the cycle does). What writing the cycle's
    output costs with nothing computed: a lower bound, since an update writes a new row version and (unless HOT) an
    entry in every index as these inserts do, after finding the row, and the real tables' indexes are deeper. None when
    `schema` keeps no written rows (kept by an older benchmark)."""
    out = {"tables": {}}
    with conn.cursor() as cur:
        cur.execute("SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t",
                    ([f"{schema}.written_{table}" for table in WRITTEN],))
        if not cur.fetchone()[0]:
            conn.commit()
            return None
        for table, (_, in_publish) in WRITTEN.items():
            cur.execute(f"DROP TABLE IF EXISTS {schema}.floor_written; "
                        f"CREATE TABLE {schema}.floor_written (LIKE oms.{table} INCLUDING ALL); "
                        f"SELECT count(*), pg_total_relation_size('{schema}.written_{table}') "
                        f"FROM {schema}.written_{table}")      # and so its pages are in the cache, as the cycle's are
            rows, size = cur.fetchone()
            conn.commit()
            started = time.perf_counter()
            cur.execute(f"INSERT INTO {schema}.floor_written SELECT * FROM {schema}.written_{table}")
            conn.commit()
            seconds = time.perf_counter() - started
            out["tables"][table] = {"rows": rows, "mb": round(size / 1e6, 1), "seconds": round(seconds, 3),
                                    "publish": in_publish}
            cur.execute(f"DROP TABLE {schema}.floor_written")
            conn.commit()
    out["seconds"] = sum(x["seconds"] for x in out["tables"].values())
    out["publish_seconds"] = sum(x["seconds"] for x in out["tables"].values() if x["publish"])
    return out


def measure_floor(url: str, schema: str, repeat: int, writes: bool = True) -> dict:
    """The floor, `repeat` samples of each part (medians), on the staged tables in `schema`; with writes, one sample of
    writes_floor too."""
    from backorders import db

    conn = db.connect(url)
    try:
        fifo = [fifo_floor(conn, schema) for _ in range(repeat)]
        copies = [copy_floor(conn, schema) for _ in range(repeat)]
        writes = writes_floor(conn, schema) if writes else None    # once a set: it is no target's denominator
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*), coalesce(sum(qty_allocated), 0) FROM {schema}.floor_fifo")
            rows, qty = cur.fetchone()
            cur.execute(f"SELECT (SELECT count(*) FROM {schema}.demand), (SELECT count(*) FROM {schema}.stock), "
                        f"(SELECT count(*) FROM {schema}.allocations), (SELECT count(*) FROM {schema}.line_results)")
            sizes = dict(zip(["demand", "stock", "allocations", "line_results"], cur.fetchone()))
    finally:
        conn.close()
    return {"sql_fifo": statistics.median(fifo), "sql_fifo_runs": [round(x, 3) for x in fifo],
            "copy": statistics.median(c["copy"] for c in copies),
            "copy_runs": [round(c["copy"], 3) for c in copies],
            "copy_out": statistics.median(c["copy_out"] for c in copies),
            "copy_in": statistics.median(c["copy_in"] for c in copies),
            "fifo_lines": int(rows), "fifo_qty_allocated": int(qty), "rows": sizes,
            **({"writes": writes} if writes else {})}


def sample_floor(url: str, when: str, samples: int, writes: bool = True) -> dict:
    """A floor sample set (`samples` of each part) on FLOOR_SCHEMA, labelled `when`, in the state the cycles start
    from: a sample before a cycle is that cycle's VACUUM ANALYZE. Right after a cycle, autovacuum and the checkpointer
    work on its writes (a 1M sample taken there took 5.8 s, against 3.9 and 4.1 s in this state)."""
    vacuum_analyze(url)
    sample = {"when": when, **measure_floor(url, FLOOR_SCHEMA, samples, writes)}
    writes = f", writing the cycle's rows {sample['writes']['seconds']:.2f} s" if sample.get("writes") else ""
    _say(f"floor {when}: SQL FIFO {sample['sql_fifo_runs']} s, COPY {sample['copy_runs']} s{writes}")
    return sample


def pooled_floor(samples: list[dict]) -> dict:
    """One floor of several sample sets (taken around several cycles): the medians of all their samples (the sets
    themselves stay with their cycles' runs)."""
    fifo = [x for s in samples for x in s["sql_fifo_runs"]]
    copies = [x for s in samples for x in s["copy_runs"]]
    out = {**{k: v for k, v in samples[-1].items() if k != "when"}, "sql_fifo": statistics.median(fifo),
           "sql_fifo_runs": fifo, "copy": statistics.median(copies), "copy_runs": copies}
    writes = [s["writes"] for s in samples if s.get("writes")]
    if writes:     # the sample set whose total is the median (the lower one of the middle two)
        out["writes"] = sorted(writes, key=lambda w: w["seconds"])[(len(writes) - 1) // 2]
        out["writes_runs"] = [round(w["seconds"], 3) for w in writes]
    return out


# ----------------------------------------------------------------------------------------------- history
HISTORY_SQL = """
SET LOCAL session_replication_role = replica;   -- generated consistent: skip the per-row foreign-key triggers
CREATE TEMP TABLE hist_skus ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY sku) - 1 AS i, sku FROM (SELECT DISTINCT sku FROM landing.catalog_items) s;
CREATE TEMP TABLE hist_orders ON COMMIT DROP AS
SELECT o, 'H' || lpad(o::text, 10, '0') AS order_id,
       (array['US_WEB', 'US_B2B', 'EU_WEB'])[1 + o %% 3] AS store,
       (array['WH_PDX', 'WH_DAL', 'WH_KOELN'])[1 + o %% 3] AS source_code,
       %(before)s::timestamptz - interval '3 days' - interval '400 days' * (1 - o::float8 / %(n_orders)s) AS origin,
       o %% 20 = 0 AS cancelled
FROM generate_series(1, %(n_orders)s) o;
INSERT INTO oms.orders (order_id, store, origin_date, customer_id, customer_email, customer_name, language,
                        country_code, payment_method, currency, authorized_amount, priority_tier, ship_by_date,
                        status, message_id, content_hash, created_run_at, updated_at)
SELECT order_id, store, origin, 'C' || (o %% 400000), 'customer' || (o %% 400000) || '@example.com',
       'Customer ' || (o %% 400000), 'en', CASE WHEN store = 'EU_WEB' THEN 'DE' ELSE 'US' END, 'CREDIT_CARD',
       CASE WHEN store = 'EU_WEB' THEN 'EUR' ELSE 'USD' END, 59.90, 2, origin + interval '3 days',
       CASE WHEN cancelled THEN 'CANCELLED' ELSE 'SHIPPED' END, -o, md5(order_id),
       origin + interval '1 hour', origin + interval '1 day'
FROM hist_orders ORDER BY o;
INSERT INTO oms.order_documents (order_id, raw_order, created_run_at)
SELECT order_id,
       jsonb_build_object('id', order_id, 'store', store, 'origin_date', origin, 'currency', 'USD',
                          'customer', jsonb_build_object('id', 'C' || (o %% 400000), 'type', 'B2C'),
                          'lines', jsonb_build_array(jsonb_build_object('id', order_id || '-1', 'quantity', 1),
                                                     jsonb_build_object('id', order_id || '-2', 'quantity', 1))),
       origin + interval '1 hour'
FROM hist_orders ORDER BY o;
INSERT INTO oms.order_lines (order_id, line_id, line_number, sku, product_name, qty_ordered, qty_shipped,
                             qty_cancelled, status, backorderable, backorder_decided_by, gross_amount, net_amount,
                             tax_amount, created_run_at, updated_at)
SELECT h.order_id, h.order_id || '-' || k, k, s.sku, 'Product ' || s.sku, q,
       CASE WHEN h.cancelled THEN 0 ELSE q END, CASE WHEN h.cancelled THEN q ELSE 0 END,
       CASE WHEN h.cancelled THEN 'CANCELLED' ELSE 'SHIPPED' END, NOT h.cancelled,
       CASE WHEN h.cancelled THEN 'catalog' ELSE 'channel' END, 29.95 * q, 25.17 * q, 4.78 * q,
       h.origin + interval '1 hour', h.origin + interval '1 day'
FROM hist_orders h CROSS JOIN generate_series(1, %(per_order)s) k
JOIN hist_skus s ON s.i = (h.o * 7 + k * 13) %% (SELECT count(*) FROM hist_skus)
CROSS JOIN LATERAL (SELECT 1 + (h.o + k) %% 3 AS q) qq
ORDER BY h.o, k;
INSERT INTO oms.shipment_requests (shipment_request_id, order_id, source_code, shipment_number, requested_at, status,
                                   shipped_at, shipped_run_at)
SELECT 'SR-' || order_id || '-1', order_id, source_code, 1, origin + interval '9 hours', 'SHIPPED',
       origin + interval '21 hours', origin + interval '1 day'
FROM hist_orders WHERE NOT cancelled ORDER BY o;
INSERT INTO oms.shipment_request_lines (shipment_request_id, order_id, line_id, sku, quantity)
SELECT 'SR-' || l.order_id || '-1', l.order_id, l.line_id, l.sku, l.qty_ordered
FROM oms.order_lines l WHERE l.order_id LIKE 'H%%' AND l.status = 'SHIPPED' ORDER BY l.order_id, l.line_id;
INSERT INTO oms.line_cancellations (order_id, line_id, run_at, quantity, kind, reason)
SELECT l.order_id, l.line_id, l.created_run_at, l.qty_ordered, 'NOT_BACKORDERABLE', 'not backorderable'
FROM oms.order_lines l WHERE l.order_id LIKE 'H%%' AND l.status = 'CANCELLED' ORDER BY l.order_id, l.line_id;
-- one line in five waited once before it shipped
INSERT INTO oms.backorder_attempts (order_id, line_id, checked_at, qty_needed, qty_available, qty_allocated,
                                    qty_backordered, qty_held, qty_cancelled, outcome, reason)
SELECT l.order_id, l.line_id, l.created_run_at, l.qty_ordered, 0, 0, l.qty_ordered, 0, 0, 'NO_STOCK',
       'no stock at any source of the channel'
FROM oms.order_lines l WHERE l.order_id LIKE 'H%%' AND l.status = 'SHIPPED' AND hashtext(l.line_id) %% 5 = 0
ORDER BY l.order_id, l.line_id;
"""


def add_history(url: str, lines: int, before: str) -> dict:
    """Insert `lines` closed order lines (2 per order) from before T0, with their events; untimed in the figures."""
    from backorders import db

    per_order = 2
    started = time.perf_counter()
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        cur.execute(HISTORY_SQL, {"before": before, "n_orders": max(1, lines // per_order), "per_order": per_order})
        cur.execute("""SELECT (SELECT count(*) FROM oms.orders), (SELECT count(*) FROM oms.order_lines),
                              (SELECT count(*) FROM oms.shipment_request_lines),
                              (SELECT count(*) FROM oms.backorder_attempts)""")
        counts = dict(zip(["orders", "order_lines", "shipment_request_lines", "backorder_attempts"], cur.fetchone()))
    insert = time.perf_counter() - started
    vacuum_analyze(url)
    return {"history_lines": lines, "insert_seconds": round(insert, 1),
            "vacuum_seconds": round(time.perf_counter() - started - insert, 1), "table_rows_after": counts}


# ----------------------------------------------------------------------------------------------- report
def grouped(seconds: dict, parallel: dict | None = None) -> dict:
    """Seconds per stage group, adding up to the cycle. Stages that ran at the same time (run_cycle's "parallel"
    blocks) share their block's wall time in proportion to their own seconds."""
    share = dict.fromkeys(seconds, 1.0)
    for block in (parallel or {}).values():
        total = sum(seconds.get(name, 0.0) for name in block["stages"])
        for name in block["stages"]:
            share[name] = block["wall"] / total if total else 0.0
    out = dict.fromkeys(GROUPS, 0.0)
    for name, s in seconds.items():
        out[stage_group(name)] += s * share[name]
    return out


def median_runs(runs: list[dict]) -> dict:
    stages = sorted({k for r in runs for k in r["seconds"]})
    groups = [grouped(r["seconds"], r.get("parallel")) for r in runs]
    return {
        "cycle": statistics.median(r["wall_seconds"] for r in runs),
        "stages": {k: statistics.median(r["seconds"].get(k, 0.0) for r in runs) for k in stages},
        "groups": {g: statistics.median(x[g] for x in groups) for g in GROUPS},
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "import_seconds": statistics.median(r.get("import_seconds", 0.0) for r in runs),
        "runs": runs,
    }


def report_table(res: dict) -> str:
    floor = res["floor"]["sql_fifo"]
    rows = [("floor: SQL FIFO (1 statement)", floor), ("floor: COPY in + out", res["floor"]["copy"])]
    writes = res["floor"].get("writes")
    if writes:
        rows += [("bound: writing the cycle's rows, computing nothing", writes["seconds"]),
                 ("bound: of which publish's (one transaction)", writes["publish_seconds"])]
    m = res["cycle"]
    rows += [(f"stage {g}", m["groups"][g]) for g in GROUPS]
    rows += [("whole cycle", m["cycle"])]
    rows += [("(process start-up: imports, not in the cycle)", m.get("import_seconds", 0.0))]
    if res.get("history_cycle"):
        rows += [(f"whole cycle + {res['history']['history_lines']:,} history lines", res["history_cycle"]["cycle"])]
    if res.get("first_ingest"):
        rows += [("first ingest (cycle at T0, not a target)", res["first_ingest"]["wall_seconds"])]
    width = max(len(r[0]) for r in rows)
    out = [f"{'figure'.ljust(width)}  {'seconds':>9}  {'x floor':>8}", "-" * (width + 21)]
    out += [f"{name.ljust(width)}  {s:9.2f}  {s / floor if floor else float('nan'):8.2f}" for name, s in rows]
    t = res["targets"]
    out += ["", f"demand lines {res['floor']['rows']['demand']:,}, stock rows {res['floor']['rows']['stock']:,}, "
                f"peak RSS of the cycle {m['peak_rss_mb']:.0f} MB"]
    if res.get("first_ingest"):
        first = res["first_ingest"]
        out += [f"first ingest: {first['summary'].get('messages_in', 0):,} messages, "
                f"peak RSS {first['peak_rss_mb']:.0f} MB (not a target)"]
    out += [f"target {k}: {v['value']:.2f} (limit {v['limit']}) {'OK' if v['met'] else 'NOT MET'}" for k, v in t.items()]
    out += ["", "floor samples (SQL FIFO, median of each set):"]
    out += [f"  {f['when']}: {f['sql_fifo']:.2f} s" for key in ("cycle", "history_cycle") if res.get(key)
            for r in res[key]["runs"] for f in r.get("floor_samples", [])]
    if writes:
        out += ["", "writing the cycle's rows, computing nothing (into empty tables with the oms tables' indexes):"]
        out += [f"  {name}{' (publish)' if w['publish'] else ''}: {w['rows']:,} rows, {w['mb']:.1f} MB, "
                f"{w['seconds']:.2f} s" for name, w in writes["tables"].items() if w["rows"]]
    d = res.get("diagnostics") or {}
    if d.get("floor_spread"):
        out += [f"floor spread (slowest / fastest sample): {d['floor_spread']:.2f}"]
    if d.get("history_ratio_over_floor"):
        out += [f"history ratio with each cycle over its own floor samples (not the target): "
                f"{d['history_ratio_over_floor']:.2f} (the floor itself moved {d['history_floor_ratio']:.2f}x)"]
    return "\n".join(out)


def allocate_seconds(stages: dict) -> float:
    """The allocate stages' own seconds: were they to run side by side with another stage, their group's share of the
    block's wall time would hide what sharing the cores costs them."""
    return sum(v for k, v in stages.items() if stage_group(k) == "allocate")


def floor_ratios(res: dict, key: str = "cycle") -> dict:
    """Allocate stage and whole cycle over the floor: the median over the cycles of each one's seconds over the floor
    sampled around it (so a host that slows down for a while slows both); the pooled floor without per-cycle samples."""
    m = res[key]
    runs = [r for r in m.get("runs", []) if r.get("floor")]
    if runs:
        return {"allocate": statistics.median(allocate_seconds(r["seconds"]) / r["floor"] for r in runs),
                "cycle": statistics.median(r["wall_seconds"] / r["floor"] for r in runs)}
    floor = res["floor"]["sql_fifo"]
    return {"allocate": allocate_seconds(m["stages"]) / floor, "cycle": m["cycle"] / floor}


def targets(res: dict) -> dict:
    m = res["cycle"]
    ratios = floor_ratios(res)
    out = {
        "allocate_vs_fifo": {"value": ratios["allocate"], "limit": 3.0},
        "cycle_vs_fifo": {"value": ratios["cycle"], "limit": 10.0},
        "peak_rss_gb": {"value": m["peak_rss_mb"] / 1024, "limit": 2.0},
    }
    if res.get("history_cycle"):
        out["history_ratio"] = {"value": res["history_cycle"]["cycle"] / m["cycle"], "limit": 1.2}
    for v in out.values():
        v["met"] = v["value"] <= v["limit"] if v["limit"] != 2.0 else v["value"] < v["limit"]
    return out


def diagnostics(res: dict) -> dict:
    """Not targets: how far the host's speed moved during the run (the floor's spread), and the history ratio with
    each cycle taken over the floor sampled around it (what is left of the history's cost if the floor's own change
    is the host's); writing the cycle's rows over the SQL FIFO (how much of the cycle target the output alone takes)."""
    fifo = res["floor"]["sql_fifo_runs"] + (res.get("history_floor") or {}).get("sql_fifo_runs", [])
    out = {"floor_spread": max(fifo) / min(fifo) if fifo and min(fifo) else None}
    if res.get("history_cycle"):
        out["history_floor_ratio"] = res["history_floor"]["sql_fifo"] / res["floor"]["sql_fifo"]
        out["history_ratio_over_floor"] = floor_ratios(res, "history_cycle")["cycle"] / floor_ratios(res)["cycle"]
    writes = res["floor"].get("writes")
    if writes and res["floor"]["sql_fifo"]:
        out["writes_over_fifo"] = writes["seconds"] / res["floor"]["sql_fifo"]
        out["publish_writes_over_fifo"] = writes["publish_seconds"] / res["floor"]["sql_fifo"]
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        info["memory_gb"] = round(int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
                                  / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    return info


# ----------------------------------------------------------------------------------------------- main
def run(args, out: Path) -> dict:
    url = bench_database(args.url, args.database, fresh=not args.reuse_database)
    if args.reuse_database:
        state = load_state(url)
        if state.get("history_lines"):
            raise SystemExit(f"--reuse-database: {args.database} already holds {state['history_lines']:,} history "
                             "lines, so its cycle without history cannot be measured again; prepare a new one")
        args.open_lines, args.skus, args.days, args.seed, args.new_share = (
            state["scale"][k] for k in ("open_lines_requested", "skus", "days", "seed", "new_share"))
    skus = args.skus or max(200, args.open_lines // 5)
    res: dict = {"command": " ".join(["python -m bench.benchmark", *sys.argv[1:]]), "machine": machine(),
                 "scale": {"open_lines_requested": args.open_lines, "skus": skus, "days": args.days, "seed": args.seed,
                           "new_share": args.new_share, "history_lines": args.history_lines,
                           "repeat": args.repeat},
                 "started_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.reuse_database:
        _say(f"reusing {url}, prepared {state['prepared_at_utc']}: its first ingest is not measured again")
        res["prepare"], res["first_ingest_earlier"] = state["prepare"], state["first_ingest"]
        t0, t1 = state["prepare"]["t0"], state["prepare"]["t1"]
        rewind(url, t1)
        vacuum_analyze(url)
    else:
        _say(f"preparing {args.open_lines:,} lines, {skus:,} SKUs in {url}")
        prep = _child(["_prepare", "--url", url, "--open-lines", str(args.open_lines), "--skus", str(skus),
                       "--days", str(args.days), "--seed", str(args.seed), "--new-share", str(args.new_share)])
        res["prepare"] = prep
        t0, t1 = prep["t0"], prep["t1"]
        _say(f"generated in {prep['generate_seconds']} s; first ingest at T0 {t0}")
        res["first_ingest"] = _child(["_cycle", "--url", url, "--t", t0])
        _save(out, res)
        _say(f"first ingest {res['first_ingest']['wall_seconds']} s: {res['first_ingest']['summary']}")
        vacuum_analyze(url)
        save_state(url, {"scale": res["scale"], "prepare": prep, "first_ingest": res["first_ingest"],
                         "prepared_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "history_lines": 0})

    # the floor is sampled around every measured cycle (the host's speed moves by 20 % within an hour): each cycle's
    # ratios are taken to the samples next to it; at least three samples a time, whatever --repeat (one moved by 30 %)
    samples = max(FLOOR_SAMPLES, args.repeat)

    def measured_cycle(name: str, keep_staging: bool = False, before: list | None = None) -> dict:
        if before:
            checkpoint(url)      # the floor's own writes are not charged to the cycle
        run_ = _child(["_cycle", "--url", url, "--t", t1] + (["--keep-staging"] if keep_staging else []))
        _say(f"{name} at T1 {run_['wall_seconds']} s {run_['seconds']}")
        if keep_staging:
            keep_floor_input(url, t1)
        run_["floor_samples"] = (before or []) + [sample_floor(url, f"after {name}", samples)]
        run_["floor"] = pooled_floor(run_["floor_samples"])["sql_fifo"]
        return run_

    runs = []
    for i in range(args.repeat):
        before = None
        if i:
            rewind(url, t1)          # then, in sample_floor, the state autovacuum would leave, as the first had
            before = [sample_floor(url, f"before cycle {i + 1}", samples)]
        runs.append(measured_cycle(f"cycle {i + 1}", keep_staging=i == 0, before=before))
        _save(out, res)
    res["floor"] = pooled_floor([f for r in runs for f in r["floor_samples"]])
    res["cycle"] = median_runs(runs)
    _save(out, res)

    if args.history_lines:
        rewind(url, t1)
        _say(f"adding {args.history_lines:,} closed lines of history")
        res["history"] = add_history(url, args.history_lines, t0)
        save_state(url, {**load_state(url), "history_lines": args.history_lines})
        _save(out, res)
        _say(f"history: {res['history']}")
        hruns = []
        for i in range(args.repeat):
            rewind(url, t1)
            before = [sample_floor(url, f"before history cycle {i + 1}", samples)]
            hruns.append(measured_cycle(f"history cycle {i + 1}", before=before))
        res["history_floor"] = pooled_floor([f for r in hruns for f in r["floor_samples"]])
        res["history_cycle"] = median_runs(hruns)
    res["targets"] = targets(res)
    res["diagnostics"] = diagnostics(res)
    res["finished_at_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not (args.keep_database or args.reuse_database):
        bench_database_drop(url)
    return res


def alternate(args, out: Path) -> dict:
    """The history ratio by alternation: the cycle at T1 on two kept databases of the same scale and seed, one without
    history (--database) and one with it (--alternate-with), measured one after the other, round after round, each
    rewound and after its own floor sample. A host whose speed moves by a fifth within an hour moves a ratio taken
    from one cycle before the history and one after it by as much; alternating puts both sides of every pair in the
    same minutes. Reported: each round's ratio and their median (the target's figure in this mode), the same with
    each cycle over its own floor sample, and every cycle's seconds."""
    urls = {"without": bench_database(args.url, args.database, fresh=False),
            "with": bench_database(args.url, args.alternate_with, fresh=False)}
    states = {side: load_state(url) for side, url in urls.items()}
    key = ("open_lines_requested", "skus", "days", "seed", "new_share")
    if [states["without"]["scale"].get(k) for k in key] != [states["with"]["scale"].get(k) for k in key]:
        raise SystemExit(f"--alternate-with: {args.database} and {args.alternate_with} were not prepared at the same "
                         "scale and seed")
    if states["without"].get("history_lines") or not states["with"].get("history_lines"):
        raise SystemExit(f"--alternate-with: {args.database} must hold no history and {args.alternate_with} some "
                         f"(they hold {states['without'].get('history_lines', 0):,} and "
                         f"{states['with'].get('history_lines', 0):,} history lines)")
    t1 = states["without"]["prepare"]["t1"]
    res: dict = {"command": " ".join(["python -m bench.benchmark", *sys.argv[1:]]), "machine": machine(),
                 "mode": "alternate", "scale": states["without"]["scale"],
                 "history_lines": states["with"]["history_lines"], "rounds": [],
                 "started_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    samples = max(FLOOR_SAMPLES, args.repeat)
    for i in range(args.repeat):
        round_ = {}
        for side in ("without", "with"):
            url = urls[side]
            rewind(url, t1)
            floor = sample_floor(url, f"before round {i + 1}, {side} history", samples, writes=False)
            checkpoint(url)
            run_ = _child(["_cycle", "--url", url, "--t", t1])
            run_["floor"] = floor
            round_[side] = run_
            _say(f"round {i + 1}, {side} history: cycle {run_['wall_seconds']} s")
        round_["history_ratio"] = round_["with"]["wall_seconds"] / round_["without"]["wall_seconds"]
        round_["history_ratio_over_floor"] = ((round_["with"]["wall_seconds"] / round_["with"]["floor"]["sql_fifo"])
                                              / (round_["without"]["wall_seconds"]
                                                 / round_["without"]["floor"]["sql_fifo"]))
        res["rounds"].append(round_)
        _save(out, res)
    ratios = [r["history_ratio"] for r in res["rounds"]]
    res["history_ratio"] = {"value": statistics.median(ratios), "limit": 1.2, "rounds": ratios,
                            "over_floor": statistics.median(r["history_ratio_over_floor"] for r in res["rounds"])}
    res["history_ratio"]["met"] = res["history_ratio"]["value"] <= 1.2
    res["finished_at_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return res


def alternate_table(res: dict) -> str:
    out = [f"{'round':>5}  {'without history':>15}  {'floor':>6}  {'with ' + format(res['history_lines'], ',') + ' lines':>22}"
           f"  {'floor':>6}  {'ratio':>6}  {'over floor':>10}", "-" * 84]
    for i, r in enumerate(res["rounds"], 1):
        out.append(f"{i:>5}  {r['without']['wall_seconds']:15.2f}  {r['without']['floor']['sql_fifo']:6.2f}  "
                   f"{r['with']['wall_seconds']:22.2f}  {r['with']['floor']['sql_fifo']:6.2f}  "
                   f"{r['history_ratio']:6.2f}  {r['history_ratio_over_floor']:10.2f}")
    h = res["history_ratio"]
    out += ["", f"target history_ratio: {h['value']:.2f} (limit {h['limit']}; median of the rounds) "
                f"{'OK' if h['met'] else 'NOT MET'}; over each cycle's own floor: {h['over_floor']:.2f}"]
    return "\n".join(out)


def _save(out: Path, res: dict) -> None:
    """Write the results so far (a long run leaves its figures even if stopped later)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))


def bench_database_drop(url: str) -> None:
    import psycopg2

    parts = urlsplit(url)
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    admin.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_prepare":
        p = argparse.ArgumentParser()
        p.add_argument("_"); p.add_argument("--url"); p.add_argument("--open-lines", type=int)
        p.add_argument("--skus", type=int); p.add_argument("--days", type=int); p.add_argument("--seed", type=int)
        p.add_argument("--new-share", type=float)
        a = p.parse_args(argv)
        print(json.dumps(prepare(a.url, a.open_lines, a.skus, a.days, a.seed, a.new_share)))
        return 0
    if argv and argv[0] == "_cycle":
        p = argparse.ArgumentParser()
        p.add_argument("_"); p.add_argument("--url"); p.add_argument("--t"); p.add_argument("--keep-staging",
                                                                                            action="store_true")
        a = p.parse_args(argv)
        print(json.dumps(measure_cycle(a.url, a.t, a.keep_staging), default=str))
        return 0

    p = argparse.ArgumentParser(prog="python -m bench.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--open-lines", type=int, default=1_000_000, help="lines of the demo (default 1,000,000)")
    p.add_argument("--skus", type=int, default=None, help="SKUs (default open lines / 5: 200,000 at 1M)")
    p.add_argument("--history-lines", type=int, default=10_000_000, help="closed lines of history (0: skip)")
    p.add_argument("--repeat", type=int, default=3, help="measured cycles (medians reported)")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--new-share", type=float, default=0.02,
                   help="share of the messages received after T0: the new orders of the measured cycle")
    p.add_argument("--url", default=None, help="server URL (default: the embedded PostgreSQL)")
    p.add_argument("--database", default="backorders_bench", help="database created (dropped first) for the run")
    p.add_argument("--keep-database", action="store_true")
    p.add_argument("--reuse-database", action="store_true",
                   help="measure again a database kept by an earlier run (--keep-database, no history yet): skips "
                        "generating it and its first ingest; the scale options are taken from it")
    p.add_argument("--alternate-with", default=None, metavar="DATABASE",
                   help="measure the history ratio by alternation: the cycle on --database (kept, no history) and on "
                        "this database (kept, same scale and seed, with history), one after the other, --repeat "
                        "rounds")
    p.add_argument("--out", default=None, help="JSON file (default bench-results/bench-<lines>-<time>.json)")
    args = p.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"bench-{args.open_lines}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    if args.alternate_with:
        res = alternate(args, out)
        _save(out, res)
        print(alternate_table(res))
        print(f"\nresults: {out}")
        return 0
    res = run(args, out)
    _save(out, res)
    print(report_table(res))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
