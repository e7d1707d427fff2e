"""Lifecycle stages of a run at T: cancellations decided before allocation (buyer, FTC, automatic) and, after publish,
the FTC delay notices and consent, lifecycle exceptions, the order's FTC trail and the storefront availability."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime

import numpy as np
import pandas as pd

from backorders import db, ftc
from backorders.rules import Rules, load_rules
from backorders.settings import read_sql

log = logging.getLogger(__name__)

NOTICE_KINDS = {"FIRST": "DELAY_OPTION_NOTICE", "RENEWED": "RENEWED_DELAY_NOTICE"}


def _sql(name: str, stg: str) -> str:
    return read_sql(name).replace("{stg}", stg)


def _stores(cur, stg: str, rules: Rules) -> list[str]:
    """Channels the lifecycle looks at: every listed channel, the stores of this run's new orders and of open lines."""
    cur.execute(f"""
        SELECT store FROM {stg}.new_orders
        UNION SELECT o.store FROM (SELECT DISTINCT order_id FROM oms.order_lines
                                   WHERE qty_backordered + qty_held + qty_allocated > 0) l
              CROSS JOIN LATERAL (SELECT o.store FROM oms.orders o WHERE o.order_id = l.order_id OFFSET 0) o""")
    return sorted(set(rules.channels) | {r[0] for r in cur.fetchall()})


def _channel_table(cur, stg: str, rules: Rules, t: datetime) -> None:
    """{stg}.lifecycle_channels: the settings the lifecycle SQL joins to, and the run's refund due date per channel."""
    cur.execute(f"""CREATE TABLE {stg}.lifecycle_channels (store text PRIMARY KEY, ftc_rule boolean,
                    auto_cancel_days integer, backorders_enabled boolean, sources text[], timezone text,
                    availability_message text, refund_due_at timestamptz)""")
    rows = []
    for s in _stores(cur, stg, rules):
        c = rules.channel(s)
        rows.append((s, c.ftc_rule, c.auto_cancel_after_days, c.backorders_enabled, list(c.sources), c.timezone,
                     c.availability_message, ftc.refund_due(t, c.timezone)))
    cur.executemany(f"INSERT INTO {stg}.lifecycle_channels VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)


# ----------------------------------------------------------------------------------------------- before allocation
def stage_cancellations(url: str, t, rules: Rules | None = None) -> dict:
    """Stage the cancellations decided at T into {stg}.cancellations (before extract_stock, so that the demand and
    hence the allocation leave them out): buyer's cancel requests, FTC deadlines passed, automatic cancellation."""
    from backorders.cycle import as_run_time, staging_schema

    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {stg}.lifecycle_channels, {stg}.cancellations")
        _channel_table(cur, stg, rules, t)
        cur.execute(_sql("lifecycle_cancellations", stg), {"t": t})
        cur.execute(f"SELECT kind, count(*), coalesce(sum(qty), 0) FROM {stg}.cancellations GROUP BY kind")
        by_kind = {k: (int(n), int(q)) for k, n, q in cur.fetchall()}
    figures = {"cancellations": sum(n for n, _ in by_kind.values()),
               **{f"cancelled_{k.lower()}": q for k, (_, q) in sorted(by_kind.items())}}
    log.info("staged cancellations at %s: %s", t.isoformat(), figures)
    return figures


# ----------------------------------------------------------------------------------------------- after publish
_CANDIDATES = """
SELECT l.order_id, o.store, o.ship_by_date, o.customer_email, o.customer_name, o.language,
       d.notice_kind, d.deadline, d.deadline_kind,
       l.line_id, l.line_number, l.sku, l.product_name, l.qty_backordered + l.qty_held AS qty_open,
       (SELECT c.restock_lead_days FROM landing.catalog_items c WHERE c.sku = l.sku
          AND (c.updated_at IS NULL OR c.updated_at <= %(t)s) ORDER BY c.updated_at DESC NULLS LAST LIMIT 1)
          AS restock_lead_days
FROM oms.order_lines l
CROSS JOIN LATERAL (         -- the open lines' orders by key, not by a scan of every order of the history
    SELECT o.store, o.ship_by_date, o.customer_email, o.customer_name, o.language
    FROM oms.orders o WHERE o.order_id = l.order_id OFFSET 0) o
JOIN {stg}.lifecycle_channels ch ON ch.store = o.store AND ch.ftc_rule
LEFT JOIN oms.ftc_deadlines d ON d.order_id = l.order_id
WHERE l.qty_backordered + l.qty_held > 0
  AND (d.order_id IS NULL OR d.deadline_kind = 'REVISED')
ORDER BY l.order_id, l.line_number
"""


def _order_lead(lines: list[dict]) -> int | None:
    """Restock lead time of an order's delayed lines: the longest; unknown if any line's is unknown."""
    leads = [r["restock_lead_days"] for r in lines]
    return None if any(pd.isna(x) for x in leads) else int(max(leads))


def _decide_notices(frame: pd.DataFrame, t: datetime) -> list[dict]:
    """Which orders get a first or renewed delay notice at T, with their revised date and consent deadline.

    frame: the candidate lines (_CANDIDATES), every open line of the FTC channels' orders. Whether a notice is due is
    decided for all orders at once (the conditions of ftc.first_notice_due and ftc.renewed_notice_due, on columns);
    the few orders that are due then go through the ftc module's functions one by one."""
    if frame.empty:
        return []
    order_ids = frame["order_id"]
    firsts = frame.loc[~order_ids.duplicated()].set_index("order_id")
    leads = frame["restock_lead_days"]
    lead = leads.groupby(order_ids, sort=False).max().where(~leads.isna().groupby(order_ids, sort=False).any())
    lead = lead.reindex(firsts.index)
    now = pd.Timestamp(t)
    ship_by, deadline = firsts["ship_by_date"], firsts["deadline"]
    waiting_first = firsts["notice_kind"].isna()
    first_due = waiting_first & ((now >= ship_by - ftc.NOTICE_MARGIN)
                                 | (lead.notna() & (now + pd.to_timedelta(lead.fillna(0), unit="D") > ship_by)))
    renewed_due = ~waiting_first & deadline.notna() & (now >= deadline - ftc.NOTICE_MARGIN)
    due = sorted(firsts.index[(first_due | renewed_due).to_numpy()])
    if not due:
        return []
    # the due orders' lines as plain dicts, converted at once: reading pandas rows one by one costs a few
    # milliseconds an order (most of this stage's time at 200k lines, before)
    rows = order_ids.groupby(order_ids, sort=False).indices
    lines_of: dict[str, list[dict]] = {}
    for r in frame.iloc[np.concatenate([rows[o] for o in due])].to_dict("records"):
        lines_of.setdefault(r["order_id"], []).append(r)
    out = []
    for order_id in due:
        g = lines_of[order_id]
        first = g[0]
        ship_by = first["ship_by_date"].to_pydatetime()
        lead = _order_lead(g)
        if pd.isna(first["notice_kind"]):
            if not ftc.first_notice_due(t, ship_by, lead):
                continue
            kind, replaced = "FIRST", ship_by
        else:
            replaced = first["deadline"].to_pydatetime()
            if not ftc.renewed_notice_due(t, replaced):
                continue
            kind = "RENEWED"
        revised = ftc.revised_date(t, lead, replaced)
        deadline = ftc.consent_deadline(kind, ship_by, revised, replaced)
        out.append({"order_id": order_id, "kind": kind, "ship_by": ship_by, "replaced": replaced, "revised": revised,
                    "consent_deadline": deadline, "lead_days": lead, "lines": g})
    return out


def _fmt(d: datetime | None, tz: str) -> str | None:
    from zoneinfo import ZoneInfo

    return None if d is None else d.astimezone(ZoneInfo(tz)).date().isoformat()


def _send_notices(conn, cur, stg: str, t: datetime, rules: Rules) -> int:
    """Record the delay notices due at T in oms.delay_notices and queue their emails in oms.notifications."""
    from psycopg2.extras import execute_values

    from backorders import notifications as nt

    frame = db.read_frame(conn, _CANDIDATES.replace("{stg}", stg), {"t": t},
                          dtypes={"order_id": "object", "store": "object", "customer_email": "object",
                                  "customer_name": "object", "language": "object", "notice_kind": "object",
                                  "deadline_kind": "object", "line_id": "object", "sku": "object",
                                  "product_name": "object", "restock_lead_days": "float64"},
                          parse_dates=["ship_by_date", "deadline"])
    notices, mails, links = [], [], []
    for n in _decide_notices(frame, t):
        g, first = n["lines"], n["lines"][0]
        channel = rules.channel(first["store"])
        email_kind = NOTICE_KINDS[n["kind"]]
        language = None if pd.isna(first["language"]) else first["language"]
        context = {
            "order": {"order_id": n["order_id"],
                      "customer_name": None if pd.isna(first["customer_name"]) else first["customer_name"],
                      "ship_by": _fmt(n["ship_by"], channel.timezone),
                      "replaced": _fmt(n["replaced"], channel.timezone),
                      "revised": _fmt(n["revised"], channel.timezone),
                      "consent_deadline": _fmt(n["consent_deadline"], channel.timezone),
                      "silence_is_consent": n["consent_deadline"] is None},
            "lines": [{"sku": r["sku"], "product_name": None if pd.isna(r["product_name"]) else r["product_name"],
                       "qty": int(r["qty_open"])} for r in g],
        }
        mail = nt.render(email_kind, language, context)
        key = nt.idempotency_key(email_kind, n["order_id"], t)
        nid = nt.notification_id(key)
        mails.append((nid, key, n["order_id"], email_kind, first["customer_email"], mail["subject"], mail["txt"],
                      mail["html"], language, t))
        links.extend((nid, email_kind, n["order_id"], r["line_id"]) for r in g)
        notices.append((n["order_id"], n["kind"], t, n["ship_by"], n["revised"], n["consent_deadline"], nid,
                        n["lead_days"]))
    if notices:
        execute_values(cur, """
            INSERT INTO oms.notifications (notification_id, idempotency_key, order_id, kind, recipient, subject, body,
                body_html, language, created_at) VALUES %s ON CONFLICT (idempotency_key) DO NOTHING""", mails)
        execute_values(cur, "INSERT INTO oms.notification_lines VALUES %s ON CONFLICT DO NOTHING", links)
        execute_values(cur, """
            INSERT INTO oms.delay_notices (order_id, kind, sent_at, original_ship_by, revised_ship_by,
                consent_deadline, notification_id, lead_days) VALUES %s ON CONFLICT DO NOTHING""", notices)
    return len(notices)


def _ensure_channel_table(cur, stg: str, rules: Rules, t: datetime) -> None:
    """{stg}.lifecycle_channels as stage_cancellations left it; in a partial run where it did not run, made here (once:
    apply_after_publish and refresh_storefront run at the same time)."""
    # pg_class is read with the statement's snapshot: to_regclass could answer from a cache not yet told of the table
    # the other transaction committed while this one waited for the lock
    exists = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE n.nspname = %s AND c.relname = 'lifecycle_channels'")
    cur.execute(exists, (stg,))
    if not cur.fetchone()[0]:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{stg}.lifecycle_channels",))
        cur.execute(exists, (stg,))
        if not cur.fetchone()[0]:
            _channel_table(cur, stg, rules, t)


@contextmanager
def _after_publish(url: str, t, rules: Rules | None):
    """One transaction of a stage after publish at T, the run's channel settings in place: (cur, conn, T, rules, stg)."""
    from backorders.cycle import as_run_time, staging_schema

    t = as_run_time(t)
    rules = rules or load_rules()
    stg = staging_schema(t)
    with db.transaction(url) as conn, conn.cursor() as cur:
        _ensure_channel_table(cur, stg, rules, t)
        yield cur, conn, t, rules, stg


def apply_after_publish(url: str, t, rules: Rules | None = None) -> dict:
    """After publish at T: consent to earlier notices, the delay notices due now (with their emails), the FTC_DEADLINE
    and CANCEL_REQUEST_ALLOCATED exceptions and the FTC trail on oms.orders."""
    with _after_publish(url, t, rules) as (cur, conn, t, rules, stg):
        cur.execute(_sql("lifecycle_consent", stg), {"t": t})
        sent = _send_notices(conn, cur, stg, t, rules)
        params = {"t": t, "margin": ftc.NOTICE_MARGIN}
        cur.execute(f"DROP TABLE IF EXISTS {stg}.ftc_near, {stg}.cancel_allocated")
        cur.execute(_sql("lifecycle_exceptions", stg), params)
        cur.execute(_sql("lifecycle_order_trail", stg), params)
        cur.execute("""SELECT
            (SELECT count(*) FROM oms.delay_notices WHERE decided_at = %(t)s AND consent = 'EXPRESS'),
            (SELECT count(*) FROM oms.delay_notices WHERE decided_at = %(t)s AND consent = 'IMPLIED')""", params)
        express, implied = (int(v) for v in cur.fetchone())
    figures = {"delay_notices": sent, "consent_express": express, "consent_implied": implied}
    log.info("lifecycle after publish at %s: %s", t.isoformat(), figures)
    return figures


def refresh_storefront(url: str, t, rules: Rules | None = None) -> dict:
    """After publish at T: oms.storefront_availability recomputed from the on hand at T and the open shipment
    requests. Reads nothing apply_after_publish writes: the DAG runs the two (and the load gate) at the same time."""
    with _after_publish(url, t, rules) as (cur, conn, t, rules, stg):
        cur.execute(_sql("lifecycle_storefront", stg), {"t": t})
        cur.execute("SELECT count(*) FROM oms.storefront_availability")
        figures = {"storefront_rows": int(cur.fetchone()[0])}
    log.info("storefront availability at %s: %s", t.isoformat(), figures)
    return figures
