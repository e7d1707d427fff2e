"""Customer emails of a run, rendered from the Jinja2 templates in include/templates/email into the oms.notifications outbox."""
from __future__ import annotations

import hashlib
import io
import logging
from collections import namedtuple
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import psycopg2.errors

from backorders.settings import TEMPLATES_DIR

log = logging.getLogger(__name__)
EMAIL_TEMPLATES = TEMPLATES_DIR / "email"
PARTS = ("subject", "txt", "html")
NOT_BACKORDERABLE_TEXT = "not in stock and not available on backorder"


@lru_cache(maxsize=4)
def _environment(folder: str):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(folder), undefined=StrictUndefined, keep_trailing_newline=True,
                       autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False))


def template_names(kind: str, language: str | None, part: str, folder: Path = EMAIL_TEMPLATES) -> list[str]:
    """Candidate template files for a kind, part (subject/txt/html) and language: exact language, its base, English."""
    stem = kind.lower()
    names = []
    if language:
        names.append(f"{stem}.{language}.{part}.j2")
        base = language.split("_")[0].split("-")[0]
        if base != language:
            names.append(f"{stem}.{base}.{part}.j2")
    names.append(f"{stem}.{part}.j2")
    return names


def templates(kind: str, language: str | None, folder: Path = EMAIL_TEMPLATES) -> dict:
    """The compiled subject, txt and html templates of a kind in a language (None where a part has no template).

    Looked up afresh on each call (Jinja caches the compiled templates and reloads a changed file), so a batch
    resolves them once per kind and language and renders every email of the batch with them."""
    env = _environment(str(folder))
    out = {}
    for part in PARTS:
        name = next((n for n in template_names(kind, language, part, folder) if (folder / n).exists()), None)
        out[part] = None if name is None else env.get_template(name)
    if out["subject"] is None or out["txt"] is None:
        raise FileNotFoundError(f"{folder}: no subject/text template for {kind} (looked for {template_names(kind, language, 'txt', folder)})")
    return out


def _renderers(tpls: dict) -> list:
    """(part, function of a context dict to the rendered text) per part: what Template.render does, with the template's
    globals copied once instead of merged from their ChainMap for every email."""
    out = []
    for part in PARTS:
        tpl = tpls[part]
        if tpl is None:
            out.append((part, None))
            continue

        def run(context, tpl=tpl, base=dict(tpl.globals)):
            return tpl.environment.concat(tpl.root_render_func(tpl.new_context({**base, **context}, shared=True)))

        out.append((part, run))
    return out


def _render_with(renderers: list, context: dict) -> dict:
    out = {part: None if run is None else run(context) for part, run in renderers}
    out["subject"] = " ".join(out["subject"].split())
    return out


def render(kind: str, language: str | None, context: dict, folder: Path = EMAIL_TEMPLATES) -> dict:
    """Subject, text body and HTML body of one email; falls back to the English template where a language has none."""
    return _render_with(_renderers(templates(kind, language, folder)), context)


def idempotency_key(kind: str, order_id: str, run_at: datetime) -> str:
    return f"{kind}/{order_id}/{run_at.isoformat()}"


def notification_id(key: str) -> str:
    return "N-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def expected_by(run_at: datetime, lead_days) -> str | None:
    """The expected availability date shown to the customer: T plus the catalog's restock lead time, when known."""
    if lead_days is None or lead_days != lead_days:  # None or NaN
        return None
    return (run_at + timedelta(days=int(lead_days))).date().isoformat()


# ----------------------------------------------------------------------------------------------- the run's notices
BACKORDERED_SQL = """
    SELECT l.order_id, l.line_id, l.line_number, l.sku, l.product_name, l.qty_backordered,
           o.customer_email, o.customer_name, o.language, o.store, o.ship_by_date,
           (SELECT c.restock_lead_days FROM landing.catalog_items c WHERE c.sku = l.sku
              AND (c.updated_at IS NULL OR c.updated_at <= %(t)s) ORDER BY c.updated_at DESC NULLS LAST LIMIT 1)
              AS restock_lead_days
    FROM oms.order_lines l JOIN oms.orders o USING (order_id)
    WHERE l.is_backorder AND l.backordered_since = %(t)s
      AND NOT EXISTS (SELECT 1 FROM oms.notification_lines n
                      WHERE n.kind = 'BACKORDER_NOTICE' AND n.order_id = l.order_id AND n.line_id = l.line_id)"""
CANCELLED_SQL = """
    SELECT c.order_id, c.line_id, l.line_number, l.sku, l.product_name, c.quantity AS qty_cancelled, c.kind,
           c.reason, o.customer_email, o.customer_name, o.language, o.store, o.ship_by_date
    FROM oms.line_cancellations c JOIN oms.order_lines l USING (order_id, line_id) JOIN oms.orders o USING (order_id)
    WHERE c.run_at = %(t)s"""
_TEXT = {"order_id": "object", "line_id": "object", "sku": "object", "product_name": "object",
         "customer_email": "object", "customer_name": "object", "language": "object", "store": "object"}


def _values(column) -> list:
    """A column as Python values, NaN as None (what a row's to_dict gives, NaN read as null)."""
    out = column.tolist()
    if column.dtype.kind in "Of":
        out = [None if isinstance(v, float) and v != v else v for v in out]
    return out


def build_notices(kind: str, frame, t: datetime, rules, folder: Path = EMAIL_TEMPLATES) -> tuple[list, list]:
    """The outbox rows of one kind of notice: one email per order of the frame (one row per line, as the queries
    above return them), and the (notification_id, kind, order_id, line_id) rows of the lines each one tells about.

    An email's context: order {order_id, customer_name, ftc_rule, ship_by} and its lines in frame order, each with
    every column of its row plus expected_by (T + restock_lead_days) and reason_text."""
    if frame is None or len(frame) == 0:
        return [], []
    frame = frame.sort_values("order_id", kind="stable")
    columns = list(frame.columns)
    values = [_values(frame[c]) for c in columns]
    col = dict(zip(columns, values))
    n = len(frame)

    lead = col.get("restock_lead_days")
    dates: dict = {}
    expected = [None] * n if lead is None else \
        [None if d is None else dates[d] if d in dates else dates.setdefault(d, expected_by(t, d)) for d in lead]
    kinds, reasons = col.get("kind"), col.get("reason")
    if kinds is None:
        reason_text = [reasons[i] or "cancelled" for i in range(n)] if reasons is not None else ["cancelled"] * n
    else:
        reason_text = [NOT_BACKORDERABLE_TEXT if k == "NOT_BACKORDERABLE" else (r or "cancelled")
                       for k, r in zip(kinds, reasons if reasons is not None else [None] * n)]
    # lines are read by attribute (Jinja tries getattr before [] and a dict's miss costs an exception per field)
    line_type = namedtuple("Line", [*columns, "expected_by", "reason_text"], rename=True)
    lines = list(map(line_type._make, zip(*values, expected, reason_text)))

    order_ids, line_ids = col["order_id"], col["line_id"]
    starts = [i for i in range(n) if i == 0 or order_ids[i] != order_ids[i - 1]]
    ends = starts[1:] + [n]
    ship = frame["ship_by_date"].iloc[starts]
    ship_by = [None if na else d.isoformat() for na, d in zip(ship.isna().tolist(), ship.dt.date.tolist())]

    run_at = t.isoformat()
    ftc_rule: dict = {}
    resolved: dict = {}
    rows, links = [], []
    emails, names, languages, stores = col["customer_email"], col["customer_name"], col["language"], col["store"]
    for s, e, ship_date in zip(starts, ends, ship_by):
        order_id, language, store = order_ids[s], languages[s], stores[s]
        if store not in ftc_rule:
            ftc_rule[store] = rules.channel(store).ftc_rule
        tpls = resolved.get(language)
        if tpls is None:
            tpls = resolved[language] = _renderers(templates(kind, language, folder))
        order = _Order(order_id, names[s], ftc_rule[store], ship_date)
        mail = _render_with(tpls, {"order": order, "lines": lines[s:e]})
        key = f"{kind}/{order_id}/{run_at}"
        nid = notification_id(key)
        rows.append((nid, key, order_id, kind, emails[s], mail["subject"], mail["txt"], mail["html"], language, t))
        links.extend((nid, kind, order_id, lid) for lid in line_ids[s:e])
    return rows, links


_Order = namedtuple("Order", ["order_id", "customer_name", "ftc_rule", "ship_by"])

NOTIFICATION_COLUMNS = ("notification_id", "idempotency_key", "order_id", "kind", "recipient", "subject", "body",
                        "body_html", "language", "created_at")


def _copy_field(v) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, datetime):
        return v.isoformat()
    v = str(v)
    if "\\" in v:
        v = v.replace("\\", "\\\\")
    return v.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_text(rows: list) -> io.StringIO:
    """Rows as COPY text format: tab-separated, one line a row, backslash escapes, \\N for null."""
    field = _copy_field
    buf = io.StringIO()
    buf.writelines([("\t".join([field(v) for v in r]) + "\n") for r in rows])
    buf.seek(0)
    return buf


def write_outbox(cur, rows: list, links: list) -> None:
    """Add emails (NOTIFICATION_COLUMNS tuples) and their lines to the outbox with COPY: an email whose idempotency
    key is there already, and a line already linked for its kind, are left as they are (ON CONFLICT DO NOTHING)."""
    if not rows and not links:
        return
    cols = ", ".join(NOTIFICATION_COLUMNS)
    if rows:
        cur.execute("SELECT idempotency_key FROM oms.notifications WHERE idempotency_key = ANY(%s)",
                    ([r[1] for r in rows],))
        known = {k for (k,) in cur.fetchall()}
        new = [r for r in rows if r[1] not in known] if known else rows
        # straight into the outbox; should another transaction add one of the keys meanwhile, through a temporary
        # table with ON CONFLICT DO NOTHING instead
        cur.execute("SAVEPOINT queue_notifications")
        try:
            cur.copy_expert(f"COPY oms.notifications ({cols}) FROM STDIN", _copy_text(new))
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT queue_notifications")
            cur.execute(f"""CREATE TEMP TABLE queued_notifications ON COMMIT DROP AS
                            SELECT {cols} FROM oms.notifications WITH NO DATA""")
            cur.copy_expert(f"COPY queued_notifications ({cols}) FROM STDIN", _copy_text(new))
            cur.execute(f"""INSERT INTO oms.notifications ({cols}) SELECT {cols} FROM queued_notifications
                            ON CONFLICT (idempotency_key) DO NOTHING; DROP TABLE queued_notifications""")
        cur.execute("RELEASE SAVEPOINT queue_notifications")
    if links:
        cur.execute("""CREATE TEMP TABLE queued_notification_lines ON COMMIT DROP AS
                       SELECT notification_id, kind, order_id, line_id FROM oms.notification_lines WITH NO DATA""")
        cur.copy_expert("COPY queued_notification_lines FROM STDIN", _copy_text(links))
        cur.execute("""INSERT INTO oms.notification_lines (notification_id, kind, order_id, line_id)
                       SELECT notification_id, kind, order_id, line_id FROM queued_notification_lines
                       ON CONFLICT DO NOTHING; DROP TABLE queued_notification_lines""")


# orders whose emails are rendered and written at a time: the stage's memory follows the chunk, not the run (a first
# load that backorders 350,000 orders at once renders as many emails)
NOTICE_CHUNK_ORDERS = 20_000
_NOTICE_KINDS = (("BACKORDER_NOTICE", BACKORDERED_SQL, _TEXT),
                 ("CANCELLATION_NOTICE", CANCELLED_SQL, {**_TEXT, "reason": "object", "kind": "object"}))


def queue_notices(conn, t: datetime, rules, chunk_orders: int | None = None) -> dict:
    """Queue the customer emails of the run at T in the outbox, in the connection's transaction: one backorder notice
    per order for lines newly backordered (never twice for a line), one cancellation notice per order for quantity
    cancelled at T. The lines of each kind are selected once (a temporary table), then read, rendered and written
    chunk_orders orders (default NOTICE_CHUNK_ORDERS) at a time, in order id order.
    Returns {emails_queued, backorder_notices, cancellation_notices}."""
    from backorders import db

    queued, orders = 0, {}
    with conn.cursor() as cur:
        for kind, sql, dtypes in _NOTICE_KINDS:
            cur.execute(f"CREATE TEMP TABLE notice_lines ON COMMIT DROP AS {sql}", {"t": t})
            ranges = db.key_ranges(cur, "notice_lines", "order_id", chunk_orders or NOTICE_CHUNK_ORDERS)
            if len(ranges) > 1:       # more than one chunk: each reads its orders by key
                cur.execute("CREATE INDEX ON notice_lines (order_id); ANALYZE notice_lines")
            orders[kind] = 0
            for i, (after, upto) in enumerate(ranges):
                frame = db.read_frame(conn, """
                    SELECT * FROM notice_lines
                    WHERE (%(after)s::text IS NULL OR order_id > %(after)s) AND order_id <= %(upto)s
                    ORDER BY order_id, line_number""", {"after": after, "upto": upto}, dtypes=dtypes,
                    parse_dates=["ship_by_date"])
                rows, links = build_notices(kind, frame, t, rules)
                write_outbox(cur, rows, links)
                queued += len(rows)
                orders[kind] += int(frame["order_id"].nunique()) if len(frame) else 0
                if len(ranges) > 1:
                    log.info("%s at %s: chunk %d of %d queued: %d emails", kind, t.isoformat(), i + 1, len(ranges),
                             len(rows))
            cur.execute("DROP TABLE notice_lines")
    return {"emails_queued": queued, "backorder_notices": orders["BACKORDER_NOTICE"],
            "cancellation_notices": orders["CANCELLATION_NOTICE"]}
