"""The stages of one backorder cycle at run time T: extract, check, allocate, check, publish, side effects, report.

Every stage is a plain function of (database URL, T) so that Airflow tasks, the CLI, the tests and the benchmark
run exactly the same code. Stages pass data through a run-scoped staging schema in PostgreSQL, never in memory.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timezone

import pandas as pd

from backorders import db, run_lock, schema
from backorders.rules import Rules, load_rules
from backorders.settings import read_sql

log = logging.getLogger(__name__)


class RunRefused(RuntimeError):
    """The run would corrupt state (for example a re-run of an old T while later runs exist)."""


class CheckFailed(RuntimeError):
    """A blocking data-quality check failed; nothing of the run is published."""


class ReferencesBroken(RuntimeError):
    """A row publish wrote references a row that does not exist; the publish is rolled back."""


# ----------------------------------------------------------------------------------------------- run identity
def as_run_time(value) -> datetime:
    """A run time T as an aware UTC datetime (accepts datetimes, pendulum objects and ISO strings)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise TypeError(f"run time: expected a datetime or ISO 8601 text, got {value!r}")
    if value.tzinfo is None:
        raise ValueError(f"run time {value.isoformat()}: a time zone is required")
    return datetime.fromtimestamp(value.timestamp(), tz=timezone.utc)


def resolve_run_time(logical_date=None, run_after=None) -> datetime:
    """T of an Airflow run: its logical date, or for a manual run without one, the time it was queued (run_after)."""
    if logical_date is not None:
        return as_run_time(logical_date)
    if run_after is not None:
        return as_run_time(run_after)
    raise ValueError("a run needs a logical date or a run_after time")


def run_id_for(t: datetime) -> str:
    return "cycle_" + t.strftime("%Y%m%dT%H%M%SZ")


def staging_schema(t: datetime) -> str:
    """Name of the run's staging schema (derived from T only, so every task of the run finds it)."""
    return "stg_" + t.strftime("%Y%m%dt%H%M%S")


def _sql(name: str, stg: str) -> str:
    return read_sql(name).replace("{stg}", stg)


def _counts(cur, sql: str, params=None) -> int:
    cur.execute(sql, params)
    return int(cur.fetchone()[0] or 0)


# ----------------------------------------------------------------------------------------------- begin
def _later_runs(cur, t: datetime) -> list[dict]:
    cur.execute("SELECT run_at, airflow_run_id, status FROM oms.pipeline_runs WHERE run_at > %s AND status <> 'FAILED' "
                "ORDER BY run_at", (t,))
    return [{"run_at": r[0], "airflow_run_id": r[1], "status": r[2]} for r in cur.fetchall()]


def later_runs(url: str, t) -> list[dict]:
    """The runs after T that changed the tables (status RUNNING or SUCCESS): a run at T would have to undo them."""
    t = as_run_time(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('oms.pipeline_runs')")
        if cur.fetchone()[0] is None:
            return []
        return _later_runs(cur, t)


def has_run(url: str, t) -> bool:
    """Whether T has a row in oms.pipeline_runs (ran before, in any status)."""
    t = as_run_time(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('oms.pipeline_runs')")
        if cur.fetchone()[0] is None:
            return False
        cur.execute("SELECT 1 FROM oms.pipeline_runs WHERE run_at = %s", (t,))
        return cur.fetchone() is not None


def replay_refusal(t: datetime, later: list[dict], states: dict[str, str] | None = None,
                   dag_id: str = "backorder_cycle", no_logical_date: list[str] | None = None) -> str:
    """The message of a refused re-run of an old T: which later runs stand in the way and exactly what to clear.
    no_logical_date: the Airflow runs among them without a logical date (not cleared by `tasks clear -s`); when not
    known, the stock-triggered ones (asset_triggered__...)."""
    states = states or {}
    shown = later[:8]
    listed = "; ".join(
        f"{r['run_at'].isoformat()} ({r['status']}"
        + (f", Airflow run {r['airflow_run_id']}" if r.get("airflow_run_id") else ", run outside Airflow")
        + (f", Airflow state {states[r['airflow_run_id']]}" if r.get("airflow_run_id") in states else "") + ")"
        for r in shown) + ("; ..." if len(later) > len(shown) else "")
    no_logical = [r["airflow_run_id"] for r in later if r.get("airflow_run_id")
                  and (r["airflow_run_id"] in no_logical_date if no_logical_date is not None
                       else r["airflow_run_id"].startswith("asset_triggered__"))]
    text = (f"run at {t.isoformat()} refused: {len(later)} later run(s) changed the tables after it and would not "
            f"run again: {listed}. Re-running an old T alone would undo them and leave the tables wrong. "
            f"Clear this run together with every later run so that they all run again, in order: "
            f"`airflow tasks clear {dag_id} -s {t.isoformat()} -y` (clears every run with a logical date from T on; "
            f"in the UI: Clear on this run's open_run task with 'Future' ticked)")
    if no_logical:
        text += ("; runs without a logical date (stock-triggered or manual) are not covered by that and must be "
                 f"cleared each (UI: the Dag run > Clear Run; REST: POST /api/v2/dags/{dag_id}/dagRuns/<run_id>/clear): "
                 + ", ".join(no_logical[:8]) + (", ..." if len(no_logical) > 8 else ""))
    return text + ". Outside Airflow: run the times again in order, the first with allow_rewind_later (--rewind-later)."


RERUNNING_STATES = ("queued", "running")


def replay_decision(later: list[dict], states: dict[str, str | None], run_type: str | None, ran_before: bool) -> str:
    """What an Airflow run at T does about the runs after it (later_runs), given the Airflow states of their runs:

    * ``run``: there is none;
    * ``rewind``: every one of them will run again (cleared together with this run: queued or running), so T may undo
      them first (allow_rewind_later); the run lock keeps a running one from being undone under its feet;
    * ``skip``: this is a scheduled or stock-triggered T that never ran and a later run already took everything up
      to a later time: it is superseded (nothing to do, no harm);
    * ``refuse``: anything else (re-running an old T alone would corrupt the state).
    """
    if not later:
        return "run"
    if all(r.get("airflow_run_id") and (states.get(r["airflow_run_id"]) or "").lower() in RERUNNING_STATES
           for r in later):
        return "rewind"
    if not ran_before and (run_type or "").lower() in ("scheduled", "asset_triggered"):
        return "skip"
    return "refuse"


def begin_run(url: str, t, airflow_run_id: str | None = None, rules: Rules | None = None,
              allow_rewind_later: bool = False, lock_wait: float = 0.0) -> dict:
    """Bring the schema up to date, validate the rules, take the run lock, rewind an earlier execution of T, open the
    run and its staging schema.

    A run at T when runs after T exist would have to undo them too: refused (RunRefused) unless allow_rewind_later.
    While another run holds the run lock (oms.run_lock) this one waits up to lock_wait seconds, then raises
    run_lock.RunLocked; nothing is written meanwhile.
    """
    t = as_run_time(t)
    rules = rules or load_rules()
    schema.upgrade(url)
    stg = staging_schema(t)
    holder = airflow_run_id or run_lock.in_process_holder()
    deadline = time.monotonic() + max(0.0, lock_wait)
    said = 0.0
    while True:
        try:
            rewound = _open_run(url, t, stg, rules, airflow_run_id, holder, allow_rewind_later)
            break
        except run_lock.RunLocked as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%s", exc)
                raise
            if time.monotonic() - said >= 30 or said == 0:
                log.warning("waiting up to %.0f s for the run lock: %s", left, exc)
                said = time.monotonic()
            time.sleep(min(1.0, left))
    if rewound:                 # the rewind deleted the run's rows: statistics for the stages that follow
        analyze_published(url)
    return {"run_at": t.isoformat(), "run_id": run_id_for(t), "staging": stg}


def _open_run(url: str, t: datetime, stg: str, rules: Rules, airflow_run_id: str | None, holder: str,
              allow_rewind_later: bool) -> bool:
    """One attempt to open the run, in one transaction (rolled back whole on a refusal or a held lock); True when it
    rewound an earlier execution of T (or later runs)."""
    rewound = False
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (run_lock.RUN_LOCK_KEY,))
        later = _later_runs(cur, t)
        if later and not allow_rewind_later:
            raise RunRefused(replay_refusal(t, later))
        run_lock.acquire(cur, t, holder)
        cur.execute("SELECT count(*) FROM oms.pipeline_runs WHERE run_at >= %s", (t,))
        if cur.fetchone()[0]:
            log.warning("rewinding the effects of runs at or after %s before running it again", t.isoformat())
            cur.execute(read_sql("rewind_runs"), {"t": t})
            rewound = True
            cur.execute(f"DROP SCHEMA IF EXISTS {stg} CASCADE; CREATE SCHEMA {stg}; "
                        f"CREATE TABLE {stg}.touched AS SELECT order_id, line_id FROM rewind_touched")
            # the rewound state's timestamps are those of the last remaining run
            cur.execute("SELECT max(run_at) FROM oms.pipeline_runs")
            prev = cur.fetchone()[0] or t
            cur.execute(_sql("refresh_lines", stg), {"t": prev})
        cur.execute(f"DROP SCHEMA IF EXISTS {stg} CASCADE; CREATE SCHEMA {stg}")
        cur.execute(
            "INSERT INTO oms.pipeline_runs (run_id, run_at, started_at, status, airflow_run_id) "
            "VALUES (%s, %s, clock_timestamp(), 'RUNNING', %s)",
            (run_id_for(t), t, airflow_run_id),
        )
        # the run's settings, as small staging tables the SQL stages join to
        cur.execute(f"""CREATE TABLE {stg}.channels (store text PRIMARY KEY, sources text[], max_shipments integer,
                        hold_incomplete boolean, exception_days integer, backorders_enabled boolean)""")
        cur.execute(f"CREATE TABLE {stg}.pools (store text PRIMARY KEY, pool text NOT NULL)")
        _channel_rows(cur, stg, rules, sorted(rules.channels))
        cur.execute(f"CREATE TABLE {stg}.sources (source_code text PRIMARY KEY)")
        for s in rules.sources:
            cur.execute(f"INSERT INTO {stg}.sources VALUES (%s)", (s,))
        cur.execute(f"CREATE TABLE {stg}.safety_stock (source_code text, sku text, qty bigint)")
        ss = rules.safety_stock
        rows = [("*", "*", ss.default)] + [(src, "*", q) for src, q in ss.sources.items()] \
            + [("*", sku, q) for sku, q in ss.skus.items()] \
            + [(src, sku, q) for src, m in ss.source_skus.items() for sku, q in m.items()]
        cur.executemany(f"INSERT INTO {stg}.safety_stock VALUES (%s, %s, %s)", rows)
    return rewound


# ----------------------------------------------------------------------------------------------- extract
# the messages of T not consumed before (ids only, one pass over the landing table; the chunks then read theirs by key)
_RUN_MESSAGES_SQL = """
CREATE TEMP TABLE run_messages ON COMMIT DROP AS
SELECT m.message_id FROM landing.order_messages m
WHERE m.received_at <= %(t)s
  AND NOT EXISTS (SELECT 1 FROM oms.consumed_messages c WHERE c.message_id = m.message_id);
ALTER TABLE run_messages ADD PRIMARY KEY (message_id);
ANALYZE run_messages"""
# the messages of one chunk: those after the previous chunk's last message id, up to this chunk's last
_MESSAGE_SQL = """
SELECT m.message_id, m.received_at, m.body
FROM run_messages r JOIN landing.order_messages m ON m.message_id = r.message_id
WHERE (%(after)s::bigint IS NULL OR r.message_id > %(after)s) AND r.message_id <= %(upto)s
ORDER BY m.message_id"""
# messages parsed and staged at a time: the stage's memory follows the chunk, not the backlog (a first load of
# 500,000 messages in one run held 7 GB at once; a message and what is parsed from it take about 10 KB)
EXTRACT_CHUNK_MESSAGES = 20_000
_ORDER_COLS = ["order_id", "store", "origin_date", "customer_id", "customer_type", "customer_segment",
               "customer_email", "customer_name", "language", "country_code", "payment_method", "payment_reference",
               "currency", "authorized_amount", "authorization_status", "gateway_id", "transaction_id",
               "last_authorized_at", "shipping_method", "priority_tier", "promised_date", "ship_by_date", "status",
               "message_id", "content_hash", "order_attributes", "created_run_at", "updated_at"]
_LINE_COLS = ["order_id", "line_id", "line_number", "sku", "product_name", "qty_ordered", "qty_held", "status",
              "backorderable", "backorder_decided_by", "auto_cancel_at", "gross_amount", "net_amount", "tax_amount",
              "promise_delivery_date", "created_run_at", "updated_at"]


def extract_orders(url: str, t, rules: Rules | None = None, chunk_messages: int | None = None) -> dict:
    """Parse the order messages received up to T and not yet consumed into new orders and lines; quarantine the rest.

    The messages are read, parsed and staged chunk_messages (default EXTRACT_CHUNK_MESSAGES) at a time, in message id
    order, in one transaction: the first message of an order id makes the order, a later one with the same content is
    a duplicate and one with other content a conflict, whichever chunk each is in."""
    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    figures = dict.fromkeys(["messages_in", "orders_created", "lines_created", "messages_quarantined",
                             "messages_duplicate"], 0)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE TABLE {stg}.new_orders (LIKE oms.orders INCLUDING DEFAULTS);
            CREATE TABLE {stg}.new_order_documents (LIKE oms.order_documents INCLUDING DEFAULTS);
            CREATE TABLE {stg}.new_lines (LIKE oms.order_lines INCLUDING DEFAULTS);
            CREATE TABLE {stg}.quarantine (LIKE oms.quarantine INCLUDING DEFAULTS);
            CREATE TABLE {stg}.consumed (LIKE oms.consumed_messages INCLUDING DEFAULTS);
        """)
        cur.execute(_RUN_MESSAGES_SQL, {"t": t})
        bounds = db.key_ranges(cur, "run_messages", "message_id", chunk_messages or EXTRACT_CHUNK_MESSAGES)
        first_seen: dict[str, tuple[str, int]] = {}     # order id: (content hash, message id) of its first message
        for i, (after, upto) in enumerate(bounds):
            chunk = _extract_chunk(conn, cur, stg, t, rules, after, upto, first_seen)
            for k, v in chunk.items():
                figures[k] += v
            if len(bounds) > 1:
                log.info("extract orders at %s: chunk %d of %d staged: %s", t.isoformat(), i + 1, len(bounds), chunk)
        # statistics for the gate's and publish's plans, rather than whatever autovacuum has done by then: a first
        # load of 500,000 orders whose gate started before autovacuum had analyzed the documents was still in one
        # check (extract.orders_required) after 14 minutes; with the statistics its NOT EXISTS is one hash lookup a row
        cur.execute(f"ANALYZE {stg}.new_orders, {stg}.new_order_documents, {stg}.new_lines, {stg}.quarantine, "
                    f"{stg}.consumed")
    log.info("extract orders at %s: %s", t.isoformat(), figures)
    return figures


def _extract_chunk(conn, cur, stg: str, t: datetime, rules: Rules, after: int | None, upto: int,
                   first_seen: dict[str, tuple[str, int]]) -> dict:
    """Parse and stage the messages of T with after < message_id <= upto (after None: from the first); first_seen: the orders of earlier chunks and
    of oms.orders met so far, updated with this chunk's."""
    from backorders.messages import parse_messages

    msgs = db.read_frame(conn, _MESSAGE_SQL, {"after": after, "upto": upto},
                         dtypes={"message_id": "int64", "body": "object"}, parse_dates=["received_at"])
    log.info("extract orders at %s: read %d order messages received up to T, not consumed before; parsing",
             t.isoformat(), len(msgs))
    batch = parse_messages(msgs)
    log.info("extract orders at %s: parsed %d orders with %d lines, %d messages rejected", t.isoformat(),
             len(batch.orders), len(batch.lines), len(batch.rejects))
    orders, lines, rejects = batch.orders, batch.lines, batch.rejects

    # duplicates (same order, same content) are consumed once; same id with other content is a conflict
    ids = sorted(set(orders["order_id"]) - first_seen.keys())
    if ids:
        cur.execute("SELECT order_id, content_hash, message_id FROM oms.orders WHERE order_id = ANY(%s)", (ids,))
        first_seen.update({oid: (h, mid) for oid, h, mid in cur.fetchall()})
    orders = orders.sort_values("message_id", kind="stable")
    outcome, conflict_reason = [], {}
    for mid, oid, h in zip(orders["message_id"], orders["order_id"], orders["content_hash"]):
        if oid not in first_seen:
            first_seen[oid] = (h, mid)
            outcome.append("PROCESSED")
        elif first_seen[oid][0] == h:
            outcome.append("DUPLICATE")
        else:
            outcome.append("CONFLICT")
            conflict_reason[mid] = (f"conflict: order {oid} was already received in message "
                                    f"{first_seen[oid][1]} with different content")
    orders = orders.assign(outcome=outcome)
    conflicts = orders[orders.outcome == "CONFLICT"]
    good = orders[orders.outcome == "PROCESSED"].copy()
    dupes = orders[orders.outcome == "DUPLICATE"]
    lines = lines[lines["message_id"].isin(good["message_id"])].copy()

    raw_by_id = msgs.set_index("message_id")
    quarantine = pd.concat([
        rejects[["message_id", "received_at", "reason", "raw"]],
        pd.DataFrame({
            "message_id": conflicts["message_id"].to_numpy(),
            "received_at": raw_by_id.loc[conflicts["message_id"], "received_at"].to_numpy(),
            "reason": [conflict_reason[m] for m in conflicts["message_id"]],
            "raw": raw_by_id.loc[conflicts["message_id"], "body"].to_numpy(),
        }),
    ], ignore_index=True).sort_values("message_id")
    quarantine = quarantine.assign(
        quarantine_id="Q-msg-" + quarantine["message_id"].astype(str),
        source="landing.order_messages",
        source_ref=quarantine["message_id"].astype(str),
        run_at=t,
    )
    consumed = pd.concat([
        pd.DataFrame({"message_id": good["message_id"], "outcome": "PROCESSED", "order_id": good["order_id"]}),
        pd.DataFrame({"message_id": dupes["message_id"], "outcome": "DUPLICATE", "order_id": dupes["order_id"]}),
        pd.DataFrame({"message_id": quarantine["message_id"], "outcome": "QUARANTINED",
                      "order_id": rejects.set_index("message_id")["order_id"].reindex(quarantine["message_id"]).to_numpy()
                      if len(rejects) else None}),
    ], ignore_index=True).assign(run_at=t)
    # conflicts keep their order id for tracing
    if len(conflicts):
        consumed.loc[consumed.message_id.isin(conflicts.message_id), "order_id"] = \
            consumed.loc[consumed.message_id.isin(conflicts.message_id), "message_id"].map(
                conflicts.set_index("message_id")["order_id"])

    good, lines = _enrich(conn, good, lines, rules, t)

    db.copy_frame(conn, good, f"{stg}.new_orders", _ORDER_COLS)
    db.copy_frame(conn, good, f"{stg}.new_order_documents", ["order_id", "raw_order", "created_run_at"])
    db.copy_frame(conn, lines, f"{stg}.new_lines", _LINE_COLS)
    quarantine_cols = ["quarantine_id", "source", "source_ref", "received_at", "reason", "raw", "run_at"]
    db.copy_frame(conn, quarantine, f"{stg}.quarantine", quarantine_cols)
    consumed_cols = ["message_id", "run_at", "outcome", "order_id"]
    db.copy_frame(conn, consumed, f"{stg}.consumed", consumed_cols)
    return {"messages_in": len(msgs), "orders_created": len(good), "lines_created": len(lines),
            "messages_quarantined": len(quarantine), "messages_duplicate": len(dupes)}


def _enrich(conn, orders: pd.DataFrame, lines: pd.DataFrame, rules: Rules, t: datetime):
    """Add the run's decisions to new orders and lines: priority tier, ship-by date, backorderability, auto-cancel date."""
    from backorders.eligibility import decide_backorderable, priority_tiers

    orders = orders.copy()
    stores = orders["store"]
    promise_days = stores.map(lambda s: rules.channel(s).ship_promise_days).astype("int64")
    orders["priority_tier"] = priority_tiers(orders, rules.priority) if len(orders) else []
    orders["ship_by_date"] = orders["promised_date"].fillna(
        orders["origin_date"] + pd.to_timedelta(promise_days, unit="D"))
    orders["last_authorized_at"] = orders["origin_date"]
    orders["status"] = "NEW"
    orders["created_run_at"] = t
    orders["updated_at"] = t

    skus = sorted(set(lines["sku"]))
    catalog = db.read_frame(conn, """
        SELECT DISTINCT ON (sku) sku, backorders_allowed FROM landing.catalog_items
        WHERE sku = ANY(%(skus)s) AND (updated_at IS NULL OR updated_at <= %(t)s)
        ORDER BY sku, updated_at DESC NULLS LAST""", {"skus": skus, "t": t},
        dtypes={"sku": "object", "backorders_allowed": "object"})
    flag = catalog.set_index("sku")["backorders_allowed"].map({"t": True, "f": False})
    lines = lines.merge(orders[["order_id", "store", "origin_date"]], on="order_id", how="left")
    decision = decide_backorderable(
        lines["allow_backorders"].astype("boolean"),
        lines["sku"].map(flag).astype("boolean"),
        lines["store"].map(lambda s: rules.channel(s).backorders_enabled).astype(bool),
    )
    lines["backorderable"] = decision["backorderable"].to_numpy()
    lines["backorder_decided_by"] = decision["backorder_decided_by"].to_numpy()
    cancel_days = lines["store"].map(lambda s: rules.channel(s).auto_cancel_after_days)
    lines["auto_cancel_at"] = lines["origin_date"] + pd.to_timedelta(cancel_days.astype("float64"), unit="D")
    lines.loc[~lines["backorderable"], "auto_cancel_at"] = pd.NaT
    lines["qty_ordered"] = lines["qty"].astype("int64")
    lines["qty_held"] = lines["qty_ordered"]          # placeholder until publish computes the real split
    lines["status"] = "NEW"
    lines["created_run_at"] = t
    lines["updated_at"] = t
    return orders, lines


def stage_on_hand(url: str, t, rules: Rules | None = None) -> dict:
    """Classify the stock rows received for run T ({stg}.stock_intake) and stage the on hand at T of every SKU and
    source with its safety stock ({stg}.on_hand). Reads no order: the DAG runs it next to extract_orders and
    stage_cancellations. Running it again replaces what it staged."""
    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        _stage_on_hand(cur, stg, t, rules)
        figures = {"stock_rows_received": _counts(cur, f"SELECT count(*) FROM {stg}.stock_intake"),
                   "on_hand_rows": _counts(cur, f"SELECT count(*) FROM {stg}.on_hand")}
    log.info("on hand at %s: %s", t.isoformat(), figures)
    return figures


def _stage_on_hand(cur, stg: str, t: datetime, rules: Rules) -> None:
    cur.execute(f"DROP TABLE IF EXISTS {stg}.on_hand, {stg}.stock_intake; "
                f"DROP FUNCTION IF EXISTS {stg}.stock_problem(text, text, numeric, timestamptz)")
    cur.execute(_sql("stage_on_hand", stg), {"t": t, "sources": sorted(rules.sources)})


def stage_open_lines(url: str, t) -> dict:
    """Stage the lines of earlier runs that wait (backordered or held quantity) with their orders' store, priority and
    origin date, pool and shipments so far ({stg}.open_lines): the part of the demand that reads only oms. The DAG runs
    it next to extract_orders and stage_cancellations; extract_stock makes it the demand. Running it again replaces
    what it staged."""
    stg = staging_schema(as_run_time(t))
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(_sql("stage_open_lines", stg))
        figures = {"open_lines": cur.rowcount}
    log.info("waiting lines of earlier runs at %s: %s", as_run_time(t).isoformat(), figures)
    return figures


def extract_stock(url: str, t, rules: Rules | None = None) -> dict:
    """Stage the demand (the open lines of stage_open_lines less the cancellations of T, and the new lines), the
    shipment confirmations to apply and the stock available at T (from the on hand of stage_on_hand). Stages the on
    hand and the open lines first when their stages have not run."""
    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT to_regclass('{stg}.on_hand'), to_regclass('{stg}.open_lines'), "
                    f"to_regclass('{stg}.confirmations')")
        on_hand, open_lines, staged = cur.fetchone()
        if staged is not None:
            # its open lines became the demand, and the allocation and publish may have used them since
            raise RunRefused(f"extract_stock of {t.isoformat()} already ran ({stg} holds its demand, stock and "
                             "confirmations): to stage the run's input again, clear the run from open_run (in "
                             f"Airflow: the run > task open_run > Clear, with Downstream), or run ./dev.sh run --at "
                             f"{t.isoformat()}; see docs/operations.md")
        if on_hand is None:
            _stage_on_hand(cur, stg, t, rules)
        if open_lines is None:
            cur.execute(_sql("stage_open_lines", stg))
        cur.execute(_sql("stage_demand", stg), {"t": t})
        _add_unlisted_stores(cur, stg, rules)
        cur.execute(_sql("stage_confirmations", stg), {"t": t})
        cur.execute(_sql("stage_stock", stg), {"t": t})
        cur.execute(f"ANALYZE {stg}.demand; ANALYZE {stg}.stock")
        figures = {
            "demand_lines": _counts(cur, f"SELECT count(*) FROM {stg}.demand"),
            "stock_rows": _counts(cur, f"SELECT count(*) FROM {stg}.stock"),
            "shipments_confirmed": _counts(cur, f"SELECT count(*) FROM {stg}.confirmations"),
        }
    log.info("extract stock at %s: %s", t.isoformat(), figures)
    return figures


def _channel_rows(cur, stg: str, rules: Rules, stores) -> None:
    from backorders.allocation import ChannelPolicy
    from backorders.pools import stock_pools

    for s in stores:
        c = rules.channel(s)
        cur.execute(f"INSERT INTO {stg}.channels VALUES (%s, %s, %s, %s, %s, %s)",
                    (s, list(c.sources), c.max_shipments_per_order, c.hold_incomplete_orders,
                     c.backorder_exception_days, c.backorders_enabled))
    everything = sorted(set(rules.channels) | set(stores))
    pools = stock_pools({s: ChannelPolicy(sources=tuple(rules.channel(s).sources)) for s in everything})
    for s in stores:
        cur.execute(f"INSERT INTO {stg}.pools VALUES (%s, %s)", (s, pools[s]))


def _add_unlisted_stores(cur, stg: str, rules: Rules) -> None:
    """Orders of a store that channels.yaml does not list use the defaults (data contract): give the stores of this
    run's new orders and of its demand that have none their channel and pool rows, and their demand its pool. (The
    demand is staged with a pool where the store has one: a store without is found in it, not by reading every open
    line again.)"""
    cur.execute(f"""
        SELECT store FROM {stg}.new_orders
        UNION
        SELECT DISTINCT store FROM {stg}.demand WHERE pool IS NULL
        EXCEPT SELECT store FROM {stg}.channels""")
    unlisted = sorted(r[0] for r in cur.fetchall())
    if unlisted:
        log.warning("stores not listed in channels.yaml use the defaults: %s", ", ".join(unlisted))
        _channel_rows(cur, stg, rules, unlisted)
        cur.execute(f"UPDATE {stg}.demand d SET pool = p.pool FROM {stg}.pools p WHERE d.pool IS NULL AND p.store = d.store")


# ----------------------------------------------------------------------------------------------- checks
# The data-quality gates are Great Expectations checks run on PostgreSQL: backorders/quality.py (the checks, their
# SQL, results, report) and include/rules/checks.yaml (which block and which warn).
def run_checks(url: str, t, stage: str, rules: Rules | None = None) -> list[dict]:
    """Run one gate's checks; record them in oms.dq_results and oms.pipeline_runs.dq_results, log them, write the
    run's report; raise CheckFailed if a blocking one fails."""
    from backorders import quality

    return quality.run_stage(url, t, stage, rules)


def check_extract(url: str, t) -> list[dict]:
    return run_checks(url, t, "extract")


def check_allocation(url: str, t) -> list[dict]:
    index_allocations(url, t)
    return run_checks(url, t, "allocate")


def check_load(url: str, t) -> list[dict]:
    """After publish: every staged row published, keys consistent, counts equal, nothing lost."""
    return run_checks(url, t, "load")


# ----------------------------------------------------------------------------------------------- allocate
def list_pools(url: str, t) -> list[str]:
    """The stock pools that have demand in this run (one allocation task each)."""
    t = as_run_time(t)
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT pool FROM {stg}.demand ORDER BY pool")
        return [r[0] for r in cur.fetchall()]


def prepare_allocation(url: str, t) -> None:
    """Create the staging tables the pool allocations write to."""
    stg = staging_schema(as_run_time(t))
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE TABLE IF NOT EXISTS {stg}.allocations (pool text, order_id text, line_id text, sku text,
                source_code text, qty bigint);
            CREATE TABLE IF NOT EXISTS {stg}.line_results (pool text, order_id text, line_id text, qty_allocated bigint,
                qty_backordered bigint, qty_held bigint, qty_cancelled bigint, qty_available_seen bigint,
                outcome text, reason text);
        """)
        _invalidate_prepared_publish(cur, stg)


def index_allocations(url: str, t) -> None:
    """Index the pools' allocations by line once they are all written (the allocation checks and publish look them up
    per line: without it, n lines x n allocations). One sorted build after the last pool costs a fraction of keeping
    the index up to date row by row while the pools COPY their results in."""
    stg = staging_schema(as_run_time(t))
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE INDEX IF NOT EXISTS allocations_line ON {stg}.allocations (order_id, line_id); "
                    f"ANALYZE {stg}.allocations, {stg}.line_results")


# the columns of {stg}.demand the engine reads (stage_demand.sql), as the allocate stage reads them: booleans as 0/1,
# the origin date as microseconds since the epoch (the pool is the one it allocates)
DEMAND_READ = ("order_id, line_id, line_number, sku, store, priority_tier, "
               "(extract(epoch FROM origin_date) * 1000000)::bigint AS origin_us, qty_open, backorderable::int "
               "AS backorderable, shipments_used, is_new::int AS is_new")


def allocate(url: str, t, pool: str, rules: Rules | None = None) -> dict:
    """Allocate one stock pool: read its demand and stock from staging, run the engine, write the results back."""
    from backorders.allocation import ChannelPolicy, allocate_pool

    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    started = time.perf_counter()
    with db.transaction(url) as conn, conn.cursor() as cur:
        # booleans as 0/1 and the origin date as microseconds since the epoch: cheaper to parse than their text
        demand = db.read_frame(conn, f"SELECT {DEMAND_READ} FROM {stg}.demand WHERE pool = %(p)s", {"p": pool},
                               dtypes={"order_id": "object", "line_id": "object", "sku": "object", "store": "object"})
        demand["origin_date"] = pd.to_datetime(demand.pop("origin_us"), unit="us", utc=True)
        demand["backorderable"] = demand["backorderable"].astype(bool)
        demand["is_new"] = demand["is_new"].astype(bool)
        demand["pool"] = pool
        stock = db.read_frame(conn, f"""
            SELECT s.source_code, s.sku, s.qty_available FROM {stg}.stock s
            WHERE s.source_code IN (SELECT unnest(c.sources) FROM {stg}.channels c JOIN {stg}.pools p USING (store)
                                    WHERE p.pool = %(p)s)""", {"p": pool},
                              dtypes={"source_code": "object", "sku": "object", "qty_available": "int64"})
        stores = sorted(set(demand["store"]))
        policies = {}
        for s in stores:
            c = rules.channel(s)
            policies[s] = ChannelPolicy(sources=tuple(c.sources), max_shipments_per_order=c.max_shipments_per_order,
                                        hold_incomplete_orders=c.hold_incomplete_orders,
                                        allow_partial_lines=c.allow_partial_lines,
                                        allow_split_lines=c.allow_split_lines)
        log.info("allocating pool %s at %s: %d demand lines of %d channels against %d stock rows", pool,
                 t.isoformat(), len(demand), len(stores), len(stock))
        result = allocate_pool(demand, stock, policies)
        _invalidate_prepared_publish(cur, stg)   # (a pool allocated again after prepare_publish)
        cur.execute(f"DELETE FROM {stg}.allocations WHERE pool = %(p)s; DELETE FROM {stg}.line_results WHERE pool = %(p)s",
                    {"p": pool})
        db.copy_frame(conn, result.allocations.assign(pool=pool), f"{stg}.allocations",
                      ["pool", "order_id", "line_id", "sku", "source_code", "qty"])
        db.copy_frame(conn, result.lines.assign(pool=pool), f"{stg}.line_results",
                      ["pool", "order_id", "line_id", "qty_allocated", "qty_backordered", "qty_held", "qty_cancelled",
                       "qty_available_seen", "outcome", "reason"])
    lines = result.lines
    figures = {"pool": pool, "demand_lines": len(demand), "allocations": len(result.allocations),
               "qty_allocated": int(lines["qty_allocated"].sum()) if len(lines) else 0,
               "seconds": round(time.perf_counter() - started, 3)}
    log.info("allocated pool %s at %s: %s", pool, t.isoformat(), figures)
    return figures


# ----------------------------------------------------------------------------------------------- publish
# the tables publish inserts into that have foreign keys (publish.sql checks their references set-based)
REFERENCING_TABLES = ("oms.order_documents", "oms.order_lines", "oms.shipment_requests",
                      "oms.shipment_request_lines", "oms.line_cancellations", "oms.backorder_attempts")


# what prepare_publish leaves in staging for publish; the marker table is written last, and dropped by every
# allocation of the run (a pool allocated again makes the prepared tables stale: publish then prepares them itself)
PUBLISH_PREPARED = "publish_prepared"


def is_prepared(cur, stg: str, marker: str) -> bool:
    """Whether the marker table of a preparation (PUBLISH_PREPARED, outbox.PREPARED_MARKERS) is in staging schema stg
    (False when the schema itself is not there)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{stg}.{marker}",))
    return cur.fetchone()[0]


def mark_prepared(cur, stg: str, marker: str, t) -> None:
    """Write a preparation's marker table, last in its transaction."""
    cur.execute(f"CREATE TABLE {stg}.{marker} AS SELECT %s::timestamptz AS run_at", (t,))


def prepare_publish(url: str, t) -> dict:
    """Prepare in staging what publish needs that the run's staged rows and the state before the run determine: the new
    shipment requests with their numbers, the lines the run touches, and the new quantities of those it can derive
    (prepare_publish.sql, derive_lines.sql). Reads oms and writes only the staging schema, so it runs beside
    check_allocation (both after the allocation): publish, one transaction on one core, then only writes."""
    t = as_run_time(t)
    stg = staging_schema(t)
    started = time.perf_counter()
    with db.transaction(url) as conn, conn.cursor() as cur:
        figures = _prepare_publish(cur, stg, t)
    figures["seconds"] = round(time.perf_counter() - started, 3)
    log.info("prepared the publish of %s: %s", t.isoformat(), figures)
    return figures


def _prepare_publish(cur, stg: str, t) -> dict:
    _invalidate_prepared_publish(cur, stg)
    cur.execute(_sql("prepare_publish", stg), {"t": t})
    cur.execute(_sql("derive_lines", stg), {"t": t})
    cur.execute(f"""CREATE TABLE {stg}.{PUBLISH_PREPARED} AS SELECT
        (SELECT count(*) FROM {stg}.new_shipments) AS shipment_requests,
        (SELECT count(*) FROM {stg}.touched) AS lines_touched,
        (SELECT count(*) FROM {stg}.derived) AS lines_derived""")
    cur.execute(f"SELECT * FROM {stg}.{PUBLISH_PREPARED}")
    return dict(zip([d[0] for d in cur.description], (int(v) for v in cur.fetchone())))


def _invalidate_prepared_publish(cur, stg: str) -> None:
    """Drop the markers of what was prepared from the allocation: publish's, and the shipment messages' (built from
    the new shipment requests) and payment requests' (built from what publish wrote) in outbox."""
    from backorders.outbox import PREPARED_MARKERS

    cur.execute(f"DROP TABLE IF EXISTS {stg}.{PUBLISH_PREPARED}, "
                + ", ".join(f"{stg}.{marker}" for marker in PREPARED_MARKERS))


def publish(url: str, t, set_based_references: bool = True) -> dict:
    """Publish the run in one transaction: new orders and lines, shipment requests, cancellations, attempts, exceptions.
    What prepare_publish prepared is used as it is; when it is missing (not run, or a pool allocated again since),
    it is prepared here first, in the same transaction.

    Every inserted row's references are counted set-based in the same statement (publish.sql); PostgreSQL's row-by-row
    foreign-key triggers are switched off for these inserts when db.why_row_triggers_needed allows it and
    set_based_references (False: keep them on as well, as for a role that may not switch them off)."""
    from backorders import outbox

    t = as_run_time(t)
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        # under the run lock's advisory xact lock, and only while this run holds the lease: never two publishes at once
        run_lock.check_held(cur, t)
        started = time.perf_counter()
        cur.execute(f"DROP TABLE IF EXISTS {stg}.{outbox.PAYMENTS_PREPARED}")    # built from what publish writes
        if not is_prepared(cur, stg, PUBLISH_PREPARED):   # prepare_publish did not run, or a pool allocated again since
            log.info("publish %s: not prepared beforehand (prepare_publish): prepared now", t.isoformat())
            _prepare_publish(cur, stg, t)
        row_by_row = db.why_row_triggers_needed(cur, REFERENCING_TABLES) if set_based_references else "asked for"
        if row_by_row:
            log.info("publish %s: foreign keys checked row by row as well (%s)", t.isoformat(), row_by_row)
        cur.execute(_sql("publish", stg), {"t": t, "set_based_references": row_by_row is None})
        cur.execute(f"SELECT reference, orphans, example FROM {stg}.publish_orphans WHERE orphans > 0 ORDER BY 1")
        broken = cur.fetchall()
        if broken:
            raise ReferencesBroken(f"publish {t.isoformat()} rolled back: " + "; ".join(
                f"{ref}: {n} rows reference no row (e.g. {example})" for ref, n, example in broken))
        touched = _counts(cur, f"SELECT count(*) FROM {stg}.touched")
        log.info("publish %s: orders, lines, shipment requests, cancellations and attempts written (%.1f s); "
                 "%d lines touched", t.isoformat(), time.perf_counter() - started, touched)
        derived = _counts(cur, f"SELECT count(*) FROM {stg}.derived")
        cur.execute(_sql("refresh_lines", stg), {"t": t})
        log.info("publish %s: quantities, status and labels of the touched lines refreshed (%.1f s); %d derived from "
                 "the run's rows (prepare_publish), the others recomputed from their events", t.isoformat(),
                 time.perf_counter() - started, derived)
        cur.execute(_sql("exceptions", stg), {"t": t})
        written = _written_in_transaction(cur)
        figures = {
            "shipment_requests": _counts(cur, "SELECT count(*) FROM oms.shipment_requests WHERE requested_at = %s", (t,)),
            "exceptions_opened": _counts(cur, "SELECT count(*) FROM oms.exceptions WHERE opened_at = %s", (t,)),
            "exceptions_closed": _counts(cur, "SELECT count(*) FROM oms.exceptions WHERE closed_at = %s", (t,)),
            "lines_touched": touched,
            "lines_derived": derived,       # the others were recomputed from their events (derive_lines.sql)
        }
    log.info("published run %s: %s", t.isoformat(), figures)
    analyze_published(url, written)
    return figures


# the tables a publish writes many rows to; the stages after it plan their joins on these rows
PUBLISHED_TABLES = ("oms.orders", "oms.order_documents", "oms.order_lines", "oms.shipment_requests",
                    "oms.shipment_request_lines", "oms.line_cancellations", "oms.backorder_attempts")


def _written_in_transaction(cur) -> dict[str, int]:
    """The rows of each oms table inserted, updated or deleted so far in the current transaction
    (pg_stat_xact_user_tables: exact, and read before the commit, so no statistics flush can lag behind)."""
    cur.execute("SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables "
                "WHERE schemaname = 'oms'")
    return {table: int(n) for table, n in cur.fetchall()}


def analyze_published(url: str, written: dict[str, int] | None = None) -> None:
    """Refresh the planner's statistics of the tables publish wrote to (what autovacuum does later on its own).

    Without it the stages after publish plan with statistics from before the run: a table that held no open shipment
    request then holds a hundred thousand, and a join planned for one row runs once per row. ANALYZE reads a fixed
    sample of rows (default_statistics_target x 300), but from pages all over the table: on a table ten times larger
    than the cache that is as many reads from disk (10 s a table with 10M closed lines, against 1 s without them).
    So with written (the rows publish wrote per table, _written_in_transaction), a table is analyzed only when
    autovacuum's own rule would analyze it now (tables_to_analyze); without it (a rewind), every table is. The tables
    are analyzed by two connections at the same time (every other one each)."""
    def analyze(tables):
        conn = db.connect(url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("ANALYZE " + ", ".join(tables))
        finally:
            conn.close()

    tables = list(PUBLISHED_TABLES)
    if written is not None:
        with db.transaction(url) as conn, conn.cursor() as cur:
            tables = tables_to_analyze(cur, written)
        skipped = [name for name in PUBLISHED_TABLES if name not in tables]
        if skipped:
            log.info("statistics kept for %s: this run changed less of them than autovacuum's analyze threshold",
                     ", ".join(skipped))
    groups = [g for g in (tables[i::2] for i in range(2)) if g]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="analyze") as pool:
        for f in [pool.submit(analyze, group) for group in groups]:
            f.result()


def tables_to_analyze(cur, written: dict[str, int], tables: tuple = PUBLISHED_TABLES) -> list[str]:
    """The tables of tables that autovacuum's rule would analyze now: those never analyzed, and those whose rows
    changed since their last analyze (pg_stat_user_tables.n_mod_since_analyze, plus written: this run's own rows,
    which may not be counted there yet; counting them twice only analyzes sooner) exceed autovacuum_analyze_threshold
    + autovacuum_analyze_scale_factor x the rows at the last analyze (the table's own settings where it has them).
    Below that, the statistics describe the table as well as autovacuum requires between runs."""
    cur.execute("""
        SELECT t.name
        FROM unnest(%(tables)s::text[], %(written)s::bigint[]) AS t(name, written)
        JOIN pg_class c ON c.oid = t.name::regclass
        LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
        CROSS JOIN LATERAL (     -- one row: the table's own setting (reloptions) where it has one, else the server's
            SELECT coalesce(max(o.value) FILTER (WHERE o.name = 'autovacuum_analyze_threshold'),
                            current_setting('autovacuum_analyze_threshold')::float8) AS base,
                   coalesce(max(o.value) FILTER (WHERE o.name = 'autovacuum_analyze_scale_factor'),
                            current_setting('autovacuum_analyze_scale_factor')::float8) AS scale
            FROM (SELECT option_name AS name, option_value::float8 AS value FROM pg_options_to_table(c.reloptions)
                  WHERE option_name LIKE 'autovacuum_analyze_%%') o) v
        WHERE c.reltuples < 0
           OR t.written + coalesce(s.n_mod_since_analyze, 0) > v.base + v.scale * c.reltuples
        ORDER BY array_position(%(tables)s::text[], t.name)""",
                {"tables": list(tables), "written": [written.get(name, 0) for name in tables]})
    return [name for name, in cur.fetchall()]


# ----------------------------------------------------------------------------------------------- side effects
def queue_notifications(url: str, t, rules: Rules | None = None) -> dict:
    """Queue the customer emails of the run in the outbox: one backorder notice per order for lines newly backordered
    (never twice for a line), one cancellation notice per order for quantity cancelled in this run."""
    from backorders import notifications as nt

    t = as_run_time(t)
    rules = rules or load_rules()
    with db.transaction(url) as conn:
        figures = nt.queue_notices(conn, t, rules)
    log.info("queued notifications at %s: %s", t.isoformat(), figures)
    return figures


# ----------------------------------------------------------------------------------------------- report
SUMMARY_FIELDS = ["messages_in", "orders_created", "lines_created", "messages_quarantined", "messages_duplicate",
                  "demand_lines", "lines_allocated", "lines_backordered", "lines_held", "lines_cancelled",
                  "qty_allocated", "shipment_requests", "shipments_confirmed", "emails_queued", "exceptions_opened",
                  "exceptions_closed"]


def finish_run(url: str, t, stage_figures: dict | None = None, keep_staging: bool = False) -> dict:
    """Record the run's figures in oms.pipeline_runs, mark it SUCCESS, drop its staging schema; return the summary."""
    t = as_run_time(t)
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"""
            SELECT
              (SELECT count(*) FROM {stg}.consumed),
              (SELECT count(*) FROM {stg}.new_orders),
              (SELECT count(*) FROM {stg}.new_lines),
              (SELECT count(*) FROM {stg}.quarantine WHERE source = 'landing.order_messages'),
              (SELECT count(*) FROM {stg}.consumed WHERE outcome = 'DUPLICATE'),
              (SELECT count(*) FROM {stg}.demand),
              (SELECT count(*) FROM {stg}.line_results WHERE qty_allocated > 0),
              (SELECT count(*) FROM {stg}.line_results WHERE qty_backordered > 0),
              (SELECT count(*) FROM {stg}.line_results WHERE qty_held > 0),
              (SELECT count(*) FROM {stg}.line_results WHERE qty_cancelled > 0),
              (SELECT coalesce(sum(qty_allocated), 0) FROM {stg}.line_results),
              (SELECT count(*) FROM oms.shipment_requests WHERE requested_at = %(t)s),
              (SELECT count(*) FROM {stg}.confirmations),
              (SELECT count(*) FROM oms.notifications WHERE created_at = %(t)s),
              (SELECT count(*) FROM oms.exceptions WHERE opened_at = %(t)s),
              (SELECT count(*) FROM oms.exceptions WHERE closed_at = %(t)s)
        """, {"t": t})
        summary = dict(zip(SUMMARY_FIELDS, (int(v) for v in cur.fetchone())))
        sets = ", ".join(f"{k} = %({k})s" for k in SUMMARY_FIELDS)
        cur.execute(f"UPDATE oms.pipeline_runs SET {sets}, stage_counts = %(stages)s::jsonb, status = 'SUCCESS', "
                    f"finished_at = clock_timestamp(), error = NULL WHERE run_at = %(t)s",
                    {**summary, "stages": json.dumps(stage_figures or {}, sort_keys=True), "t": t})
        if not keep_staging:
            cur.execute(f"DROP SCHEMA IF EXISTS {stg} CASCADE")
        run_lock.release(cur, t)
    summary["run_at"] = t.isoformat()
    return summary


def fail_run(url: str, t, error: str, airflow_run_id: str | None = None) -> None:
    """Mark the run FAILED with the error and give the run lock back; nothing of it was published (publish is one
    transaction). With airflow_run_id, only if that Airflow run is the one that opened T (a refused or waiting run
    must not fail the run that holds the lock)."""
    t = as_run_time(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE oms.pipeline_runs SET status = 'FAILED', finished_at = clock_timestamp(), error = %s "
                    "WHERE run_at = %s AND status = 'RUNNING' AND (%s::text IS NULL OR airflow_run_id = %s)",
                    (error[:4000], t, airflow_run_id, airflow_run_id))
        cur.execute("SELECT to_regclass('oms.run_lock')")
        if cur.fetchone()[0] is not None:
            run_lock.release(cur, t, airflow_run_id or run_lock.in_process_holder())


def format_summary(s: dict) -> str:
    """One readable line per run for the terminal."""
    return (f"{s['run_at']}: {s['messages_in']} messages ({s['orders_created']} orders, {s['messages_quarantined']} "
            f"quarantined, {s['messages_duplicate']} duplicate) | {s['demand_lines']} lines in demand: "
            f"{s['lines_allocated']} allocated, {s['lines_backordered']} backordered, {s['lines_held']} held, "
            f"{s['lines_cancelled']} cancelled | {s['shipment_requests']} shipment requests, "
            f"{s['shipments_confirmed']} confirmed | {s['emails_queued']} emails queued | "
            f"{s['exceptions_opened']} exceptions opened, {s['exceptions_closed']} closed")


# ----------------------------------------------------------------------------------------------- whole cycle
def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports kilobytes, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def run_cycle(url: str, t, rules: Rules | None = None, airflow_run_id: str | None = None,
              allow_rewind_later: bool = False, lock_wait: float = 600.0, keep_staging: bool = False,
              deliver: bool = False) -> dict:
    """Every stage of the cycle in this process, in the DAG's order (the CLI, tests and benchmark use it). The tasks
    the DAG runs side by side run here at the same time too, one thread and connection each: the on hand and the open
    lines next to the orders' extract and cancellations; the extract gate, the allocation gate and prepare_publish,
    after the pools' allocations (one after the other: they are Python, and threads share the interpreter lock);
    publish and the shipment messages' and settlements' preparation (one after the other); the lifecycle, the
    storefront, the load gate and the payment requests' preparation after publish; the three outboxes. The summary's
    "parallel" gives each such block's wall time ("seconds" has each stage's own), and "peak_rss_mb" the process's
    peak memory when each stage ended (it only grows: the stage where it jumps is the one that holds the most; stages
    of one block share the process).

    If another run holds the run lock, waits for it up to lock_wait seconds (then run_lock.RunLocked).
    keep_staging keeps the run's staging schema (the benchmark measures its floor on the same staged input).
    deliver: afterwards, deliver the outboxes (delivery.deliver_from_environment: the AIRFLOW_CONN_BACKORDERS_SMTP
    and AIRFLOW_CONN_BACKORDERS_PAYMENTS connections, outbox.yaml's folder); by default rows stay PENDING."""
    from backorders import lifecycle, outbox

    t = as_run_time(t)
    rules = rules or load_rules()
    timings: dict[str, float] = {}
    parallel: dict[str, dict] = {}
    peak_rss: dict[str, float] = {}

    def timed(name, fn, *args, **kw):
        started = time.perf_counter()
        out = fn(*args, **kw)
        timings[name] = round(time.perf_counter() - started, 3)
        peak_rss[name] = peak_rss_mb()
        return out

    def timed_together(block: str, *branches: list[tuple]) -> dict:
        """Run branches of stages at the same time, one thread (and connection) each, as the DAG runs their tasks:
        a branch is a list of (name, function, *args) run one after the other. The first failure is raised once
        every branch has ended. The common wall time goes to parallel[block], each stage's own to timings."""
        def run(branch):
            return {name: timed(name, fn, *args) for name, fn, *args in branch}

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(branches), thread_name_prefix=block) as pool:
            futures = [pool.submit(run, branch) for branch in branches]
            wait(futures)
        parallel[block] = {"wall": round(time.perf_counter() - started, 3),
                           "stages": [name for branch in branches for name, *_ in branch]}
        return {name: out for f in futures for name, out in f.result().items()}

    from backorders.file_drop import load_folder

    timed("load_files", load_folder, url, t)
    timed("begin", begin_run, url, t, airflow_run_id, rules, allow_rewind_later, lock_wait)
    try:
        timed_together("extract",
                       [("extract_orders", extract_orders, url, t, rules),
                        ("stage_cancellations", lifecycle.stage_cancellations, url, t, rules)],
                       [("stage_on_hand", stage_on_hand, url, t, rules),
                        ("stage_open_lines", stage_open_lines, url, t)])
        timed("extract_stock", extract_stock, url, t, rules)
        timed("prepare_allocation", prepare_allocation, url, t)
        # the pools' allocations with the two cores to themselves (the allocate target is taken on them), one after
        # the other: the engine is Python, and threads of one process share one interpreter lock. Then the extract
        # gate beside the allocation gate and prepare_publish (all three only read staging; publish waits for them),
        # first, so that its failure is the one raised. The DAG may run the extract gate beside the pools (they write
        # only staging); when an allocation fails, the extract gate runs all the same and its failure goes first, so
        # that bad input is reported by the gate that names it.
        try:
            for pool in list_pools(url, t):
                timed(f"allocate[{pool}]", allocate, url, t, pool, rules)
        except Exception:
            timed("check_extract", check_extract, url, t)
            raise
        timed_together("check_allocation",
                       [("check_extract", check_extract, url, t)],
                       [("check_allocation", check_allocation, url, t)],
                       [("prepare_publish", prepare_publish, url, t)])
        timed_together("publish",
                       [("publish", publish, url, t)],
                       [("prepare_shipment_messages", outbox.prepare_shipment_messages, url, t, rules),
                        ("prepare_settlements", outbox.prepare_settlements, url, t, rules)])
        timed_together("after_publish",
                       [("apply_after_publish", lifecycle.apply_after_publish, url, t, rules)],
                       [("refresh_storefront", lifecycle.refresh_storefront, url, t, rules)],
                       [("check_load", check_load, url, t)],
                       [("prepare_payment_requests", outbox.prepare_payment_requests, url, t, rules)])
        timed_together("side_effects",
                       [("queue_notifications", queue_notifications, url, t, rules)],
                       [("queue_payment_requests", outbox.queue_payment_requests, url, t, rules)],
                       [("queue_shipment_messages", outbox.queue_shipment_messages, url, t, rules)])
        timed("delivery_window", outbox.apply_delivery_window, url, t, rules)
        figures = {"seconds": timings, "parallel": parallel, "peak_rss_mb": peak_rss}
        summary = timed("finish", finish_run, url, t, figures, keep_staging) | figures
    except Exception as exc:
        fail_run(url, t, f"{type(exc).__name__}: {exc}", airflow_run_id)
        raise
    if deliver:
        from backorders import delivery

        summary["delivery"] = delivery.deliver_from_environment(url, rules.outbox)
    return summary
