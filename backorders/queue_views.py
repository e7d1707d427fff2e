"""Read-only queries behind the queue view (the Airflow UI plugin `backorders_ui`): the allocation queue, the exception
queue, a line's attempts history, the aging histogram and the fill-rate trend.

Every function takes an open psycopg2 connection; `read_only(url)` opens one whose transaction is READ ONLY, so the
view cannot change anything even by mistake. No Airflow import: the tests run it against PostgreSQL directly.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

SEVERITIES = ("high", "medium", "low")
LABELS = ("BACKORDER", "ON HOLD")
AGE_BUCKETS = [(0, 1, "0-1 d"), (1, 3, "1-3 d"), (3, 7, "3-7 d"), (7, 14, "7-14 d"), (14, None, "14+ d")]
PAGE_SIZE = 100


@contextmanager
def read_only(url: str) -> Iterator:
    """A connection in a READ ONLY transaction, rolled back at the end."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        conn.set_session(readonly=True, autocommit=False)
        yield conn
    finally:
        conn.rollback()
        conn.close()


@dataclass
class Filters:
    """What the person asked to see (query parameters of the pages). Empty values mean no filter."""
    channel: str | None = None
    sku: str | None = None
    severity: str | None = None
    label: str | None = None
    kind: str | None = None
    min_age: float | None = None
    max_age: float | None = None
    page: int = 1

    @classmethod
    def from_params(cls, params) -> "Filters":
        def text(name):
            v = (params.get(name) or "").strip()
            return v or None

        def number(name):
            v = text(name)
            try:
                return float(v) if v is not None else None
            except ValueError:
                return None

        severity = text("severity")
        label = text("label")
        try:
            page = max(1, int(params.get("page") or 1))
        except ValueError:
            page = 1
        return cls(channel=text("channel"), sku=text("sku"),
                   severity=severity.lower() if severity and severity.lower() in SEVERITIES else None,
                   label=label.upper() if label and label.upper() in LABELS else None,
                   kind=text("kind"), min_age=number("min_age"), max_age=number("max_age"), page=page)

    def as_params(self, **override) -> dict:
        values = {"channel": self.channel, "sku": self.sku, "severity": self.severity, "label": self.label,
                  "kind": self.kind, "min_age": self.min_age, "max_age": self.max_age, "page": self.page}
        values.update(override)
        return {k: (f"{v:g}" if isinstance(v, float) else str(v)) for k, v in values.items()
                if v is not None and not (k == "page" and v == 1)}


@dataclass
class Page:
    rows: list[dict]
    total: int
    page: int
    page_size: int = PAGE_SIZE
    extra: dict = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _dicts(cur) -> list[dict]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def as_of(conn) -> datetime | None:
    """T of the latest successful run: ages are measured there (nothing reads the wall clock)."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(run_at) FROM oms.pipeline_runs WHERE status = 'SUCCESS'")
        return cur.fetchone()[0]


_SEVERITY_RANK = "CASE {col} WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 END"

# The open exceptions of a line (or of its order, when the exception names no line), most severe first.
_LINE_SEVERITY = f"""
    (SELECT e.severity FROM oms.exceptions e
     WHERE e.closed_at IS NULL AND e.order_id = q.order_id AND (e.line_id = q.line_id OR e.line_id IS NULL)
     ORDER BY {_SEVERITY_RANK.format(col='e.severity')} LIMIT 1)"""


def _queue_where(f: Filters) -> tuple[str, dict]:
    where, params = ["true"], {}
    if f.channel:
        where.append("q.store = %(channel)s")
        params["channel"] = f.channel
    if f.sku:
        where.append("q.sku ILIKE %(sku)s")
        params["sku"] = f.sku.replace("*", "%") if "*" in f.sku else f"%{f.sku}%"
    if f.label:
        where.append("q.label = %(label)s")
        params["label"] = f.label
    if f.min_age is not None:
        where.append("q.age_days >= %(min_age)s")
        params["min_age"] = f.min_age
    if f.max_age is not None:
        where.append("q.age_days <= %(max_age)s")
        params["max_age"] = f.max_age
    if f.severity:
        where.append(f"{_LINE_SEVERITY} = %(severity)s")
        params["severity"] = f.severity
    return " AND ".join(where), params


def allocation_queue(conn, f: Filters, page_size: int = PAGE_SIZE) -> Page:
    """Lines waiting for stock or held, oldest first, with the label, why they wait, attempts so far and the most
    severe open exception of the line."""
    where, params = _queue_where(f)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*), coalesce(sum(q.qty_backordered), 0), coalesce(sum(q.qty_held), 0) "
                    f"FROM oms.allocation_queue q WHERE {where}", params)
        total, qty_bo, qty_held = cur.fetchone()
        cur.execute(f"""
            SELECT q.order_id, q.line_id, q.line_number, q.store, q.sku, q.product_name, q.qty_ordered,
                   q.qty_allocated, q.qty_backordered, q.qty_held, q.label, q.status, q.backordered_since,
                   q.origin_date, q.age_days, q.attempts, q.last_attempt_at, q.last_outcome, q.auto_cancel_at,
                   q.wait_reason, q.ship_by_date, q.priority_tier, {_LINE_SEVERITY} AS severity
            FROM oms.allocation_queue q WHERE {where}
            ORDER BY q.age_days DESC NULLS LAST, q.origin_date, q.order_id, q.line_number
            LIMIT %(limit)s OFFSET %(offset)s""",
                    {**params, "limit": page_size, "offset": (f.page - 1) * page_size})
        rows = _dicts(cur)
    return Page(rows, int(total), f.page, page_size, {"qty_backordered": int(qty_bo), "qty_held": int(qty_held)})


def exception_queue(conn, f: Filters, page_size: int = PAGE_SIZE) -> Page:
    """Open exceptions, most severe and oldest first, with their age at the latest run and the line's SKU."""
    where, params = ["true"], {}
    if f.channel:
        where.append("x.store = %(channel)s")
        params["channel"] = f.channel
    if f.severity:
        where.append("x.severity = %(severity)s")
        params["severity"] = f.severity
    if f.kind:
        where.append("x.kind = %(kind)s")
        params["kind"] = f.kind
    if f.sku:
        where.append("x.sku ILIKE %(sku)s")
        params["sku"] = f.sku.replace("*", "%") if "*" in f.sku else f"%{f.sku}%"
    if f.min_age is not None:
        where.append("x.age_days >= %(min_age)s")
        params["min_age"] = f.min_age
    if f.max_age is not None:
        where.append("x.age_days <= %(max_age)s")
        params["max_age"] = f.max_age
    base = f"""
        SELECT e.exception_id, e.order_id, e.line_id, e.kind, e.severity, e.opened_at, e.details, e.store,
               l.sku, round((extract(epoch FROM (a.t - e.opened_at)) / 86400.0)::numeric, 1) AS age_days
        FROM oms.exception_queue e
        CROSS JOIN (SELECT coalesce(max(run_at), now()) AS t FROM oms.pipeline_runs WHERE status = 'SUCCESS') a
        LEFT JOIN oms.order_lines l ON l.order_id = e.order_id AND l.line_id = e.line_id"""
    cond = " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({base}) x WHERE {cond}", params)
        total = cur.fetchone()[0]
        cur.execute(f"""SELECT * FROM ({base}) x WHERE {cond}
                        ORDER BY {_SEVERITY_RANK.format(col='x.severity')}, x.opened_at, x.exception_id
                        LIMIT %(limit)s OFFSET %(offset)s""",
                    {**params, "limit": page_size, "offset": (f.page - 1) * page_size})
        rows = _dicts(cur)
    return Page(rows, int(total), f.page, page_size)


def line_detail(conn, order_id: str, line_id: str) -> dict | None:
    """One line with its order, every allocation attempt, its shipments, cancellations and exceptions."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT l.*, o.store, o.origin_date, o.ship_by_date, o.priority_tier, o.status AS order_status,
                   o.customer_name
            FROM oms.order_lines l JOIN oms.orders o USING (order_id)
            WHERE l.order_id = %s AND l.line_id = %s""", (order_id, line_id))
        found = _dicts(cur)
        if not found:
            return None
        out = {"line": found[0]}
        cur.execute("""SELECT checked_at, qty_needed, qty_available, qty_allocated, qty_backordered, qty_held,
                              qty_cancelled, outcome, reason
                       FROM oms.backorder_attempts WHERE order_id = %s AND line_id = %s ORDER BY checked_at""",
                    (order_id, line_id))
        out["attempts"] = _dicts(cur)
        cur.execute("""SELECT r.shipment_request_id, r.source_code, r.requested_at, r.status, r.shipped_at, s.quantity
                       FROM oms.shipment_request_lines s JOIN oms.shipment_requests r USING (shipment_request_id)
                       WHERE s.order_id = %s AND s.line_id = %s ORDER BY r.requested_at""", (order_id, line_id))
        out["shipments"] = _dicts(cur)
        cur.execute("""SELECT run_at, quantity, kind, reason FROM oms.line_cancellations
                       WHERE order_id = %s AND line_id = %s ORDER BY run_at""", (order_id, line_id))
        out["cancellations"] = _dicts(cur)
        cur.execute("""SELECT exception_id, kind, severity, opened_at, closed_at, details FROM oms.exceptions
                       WHERE order_id = %s AND (line_id = %s OR line_id IS NULL) ORDER BY opened_at""",
                    (order_id, line_id))
        out["exceptions"] = _dicts(cur)
    return out


def aging_histogram(conn, f: Filters) -> list[dict]:
    """Waiting lines of the (filtered) allocation queue per age bucket (age since the order, at the latest run)."""
    where, params = _queue_where(Filters(**{**f.__dict__, "min_age": None, "max_age": None, "page": 1}))
    cases = " ".join(f"WHEN q.age_days < {hi} THEN {i}" for i, (lo, hi, _) in enumerate(AGE_BUCKETS) if hi is not None)
    with conn.cursor() as cur:
        cur.execute(f"""
            SELECT CASE {cases} ELSE {len(AGE_BUCKETS) - 1} END AS bucket, count(*),
                   coalesce(sum(q.qty_backordered), 0), coalesce(sum(q.qty_held), 0)
            FROM oms.allocation_queue q WHERE {where} GROUP BY 1""", params)
        got = {b: (n, bo, held) for b, n, bo, held in cur.fetchall()}
    out = []
    for i, (lo, hi, name) in enumerate(AGE_BUCKETS):
        n, bo, held = got.get(i, (0, 0, 0))
        out.append({"bucket": name, "min_age": lo, "max_age": hi, "lines": int(n), "qty_backordered": int(bo),
                    "qty_held": int(held)})
    return out


def fill_rate_trend(conn, runs: int = 30) -> list[dict]:
    """The latest runs' fill rates, oldest first (oms.fill_rate_per_run)."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT * FROM (
                SELECT run_at, status, demand_lines, lines_allocated, line_fill_rate, waiting_lines,
                       waiting_lines_filled, backorder_fill_rate
                FROM oms.fill_rate_per_run WHERE status = 'SUCCESS' ORDER BY run_at DESC LIMIT %s) r
            ORDER BY run_at""", (runs,))
        rows = _dicts(cur)
    for r in rows:
        for k in ("line_fill_rate", "backorder_fill_rate"):
            r[k] = float(r[k]) if r[k] is not None else None
    return rows


def filter_options(conn) -> dict:
    """Values offered in the filter drop-downs."""
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT store FROM oms.orders ORDER BY 1")
        channels = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT DISTINCT kind FROM oms.exceptions WHERE closed_at IS NULL ORDER BY 1")
        kinds = [r[0] for r in cur.fetchall()]
    return {"channels": channels, "kinds": kinds, "severities": list(SEVERITIES), "labels": list(LABELS)}


def overview(conn) -> dict:
    """Head figures: waiting lines, open exceptions by severity, the latest run and the run lock."""
    with conn.cursor() as cur:
        cur.execute("""SELECT count(*) FILTER (WHERE label = 'BACKORDER'), count(*) FILTER (WHERE label = 'ON HOLD'),
                              coalesce(sum(qty_backordered), 0), coalesce(sum(qty_held), 0)
                       FROM oms.allocation_queue""")
        bo, held, qty_bo, qty_held = cur.fetchone()
        cur.execute("SELECT severity, count(*) FROM oms.exception_queue GROUP BY 1")
        sev = dict(cur.fetchall())
        cur.execute("""SELECT run_at, status, demand_lines, lines_allocated, lines_backordered, finished_at
                       FROM oms.pipeline_runs ORDER BY run_at DESC LIMIT 1""")
        latest = _dicts(cur)
        lock = None
        cur.execute("SELECT to_regclass('oms.run_lock')")
        if cur.fetchone()[0] is not None:
            cur.execute("SELECT held_by_run_at, airflow_run_id, acquired_at FROM oms.run_lock "
                        "WHERE held_by_run_at IS NOT NULL")
            found = _dicts(cur)
            lock = found[0] if found else None
    return {"backorder_lines": int(bo), "held_lines": int(held), "qty_backordered": int(qty_bo),
            "qty_held": int(qty_held), "exceptions": {s: int(sev.get(s, 0)) for s in SEVERITIES},
            "latest_run": latest[0] if latest else None, "run_lock": lock, "as_of": as_of(conn)}
