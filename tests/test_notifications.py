"""Email templates: rendering, language fallback and expected availability dates."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from backorders import notifications as nt

ORDER = {"order_id": "O-1", "customer_name": "Dana Reyes", "ftc_rule": True, "ship_by": "2026-04-01"}
LINES = [{"sku": "TENT", "product_name": "Tent", "qty_backordered": 2, "expected_by": "2026-03-12"},
         {"sku": "MUG", "product_name": None, "qty_backordered": 1, "expected_by": None}]


def test_english_backorder_notice():
    mail = nt.render("BACKORDER_NOTICE", "en_US", {"order": ORDER, "lines": LINES})
    assert mail["subject"] == "2 items of your order O-1 are on backorder"
    assert "2 x Tent (TENT), expected by 2026-03-12" in mail["txt"]
    assert "1 x MUG (MUG)\n" in mail["txt"]
    assert "If we cannot ship by 2026-04-01" in mail["txt"]
    assert "<td>to be confirmed</td>" in mail["html"]


def test_german_template_and_fallback_for_missing_html():
    mail = nt.render("BACKORDER_NOTICE", "de_DE", {"order": ORDER, "lines": LINES[:1]})
    assert mail["subject"] == "Ein Artikel Ihrer Bestellung O-1 ist nachbestellt"
    assert "voraussichtlich bis 2026-03-12" in mail["txt"]
    assert mail["html"].startswith("<!doctype html>")          # no German HTML: the English one
    assert nt.template_names("BACKORDER_NOTICE", "fr_FR", "txt") == [
        "backorder_notice.fr_FR.txt.j2", "backorder_notice.fr.txt.j2", "backorder_notice.txt.j2"]


def test_html_escapes_customer_text():
    mail = nt.render("BACKORDER_NOTICE", None, {"order": {**ORDER, "customer_name": "<b>x</b>"}, "lines": LINES})
    assert "&lt;b&gt;x&lt;/b&gt;" in mail["html"] and "<b>x</b>" in mail["txt"]


def test_expected_by_and_keys():
    t = datetime(2026, 3, 2, 22, 0, tzinfo=timezone.utc)
    assert nt.expected_by(t, 10) == "2026-03-12"
    assert nt.expected_by(t, None) is None and nt.expected_by(t, float("nan")) is None
    k = nt.idempotency_key("BACKORDER_NOTICE", "O-1", t)
    assert nt.notification_id(k) == nt.notification_id(k) != nt.notification_id(k + "x")


# ----------------------------------------------------------------------------------------------- a run's notices
import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from backorders.rules import load_rules  # noqa: E402

T = datetime(2026, 3, 2, 22, 0, tzinfo=timezone.utc)
RULES = load_rules()
NAN = np.nan
BO_COLUMNS = ["order_id", "line_id", "line_number", "sku", "product_name", "qty_backordered", "customer_email",
              "customer_name", "language", "store", "ship_by_date", "restock_lead_days"]
CA_COLUMNS = ["order_id", "line_id", "line_number", "sku", "product_name", "qty_cancelled", "kind", "reason",
              "customer_email", "customer_name", "language", "store", "ship_by_date"]


def frame(columns, rows):
    """A frame as db.read_frame returns the queries' rows: text as object (null: NaN), T as UTC timestamps."""
    f = pd.DataFrame(rows, columns=columns)
    for c in columns:
        if c in ("ship_by_date",):
            f[c] = pd.to_datetime(f[c], utc=True)
        elif c == "restock_lead_days":
            f[c] = f[c].astype("float64")
        elif c in ("line_number", "qty_backordered", "qty_cancelled"):
            f[c] = f[c].astype("int64")
        else:
            f[c] = f[c].astype(object).where(f[c].notna(), NAN)
    return f


BO = frame(BO_COLUMNS, [
    ("O-2", "O-2-1", 1, "TENT", "Tent 2P", 2, "dana@example.com", "Dana Reyes", "en_US", "US_WEB",
     "2026-03-06T04:59:59Z", 10),
    ("O-1", "O-1-1", 1, "MUG", NAN, 1, "jonas@example.org", "Jonas Becker", "de_DE", "EU_WEB", None, 3),
    ("O-2", "O-2-2", 2, "STAKE", NAN, 4, "dana@example.com", "Dana Reyes", "en_US", "US_WEB",
     "2026-03-06T04:59:59Z", NAN),
    ("O-3", "O-3-1", 1, "LAMP", "Lamp <LED> & co", 1, "x@example.com", NAN, NAN, "NEW_STORE", None, NAN),
])
CA = frame(CA_COLUMNS, [
    ("O-4", "O-4-2", 2, "MUG", "Mug", 3, "NOT_BACKORDERABLE", "no stock", "a@example.com", "Ann", "fr_FR", "US_B2B",
     None),
    ("O-4", "O-4-1", 1, "TENT", NAN, 1, "AUTO_CANCEL", "waited more than 30 days", "a@example.com", "Ann", "fr_FR",
     "US_B2B", None),
    ("O-5", "O-5-1", 1, "LAMP", "Lamp", 2, "CUSTOMER", NAN, "b@example.com", NAN, "de_DE", "EU_WEB", None),
])


def by_order(rows):
    return {r[2]: dict(zip(nt.NOTIFICATION_COLUMNS, r)) for r in rows}


def test_backorder_notices_of_a_run_literal_text():
    rows, links = nt.build_notices("BACKORDER_NOTICE", BO, T, RULES)
    assert [r[2] for r in rows] == ["O-1", "O-2", "O-3"]                 # one email per order, by order id
    assert links == [(rows[0][0], "BACKORDER_NOTICE", "O-1", "O-1-1"),
                     (rows[1][0], "BACKORDER_NOTICE", "O-2", "O-2-1"), (rows[1][0], "BACKORDER_NOTICE", "O-2", "O-2-2"),
                     (rows[2][0], "BACKORDER_NOTICE", "O-3", "O-3-1")]
    m = by_order(rows)
    o2 = m["O-2"]
    assert o2["idempotency_key"] == "BACKORDER_NOTICE/O-2/2026-03-02T22:00:00+00:00"
    assert o2["notification_id"] == "N-" + hashlib.sha256(o2["idempotency_key"].encode()).hexdigest()[:20]
    assert (o2["kind"], o2["recipient"], o2["language"], o2["created_at"]) == (
        "BACKORDER_NOTICE", "dana@example.com", "en_US", T)
    assert o2["subject"] == "2 items of your order O-2 are on backorder"
    assert o2["body"] == (
        "Hello Dana Reyes,\n\n"
        "Thank you for your order O-2. Some items are not in stock right now and will ship as soon as they arrive:\n\n"
        "- 2 x Tent 2P (TENT), expected by 2026-03-12\n"
        "- 4 x STAKE (STAKE)\n\n"
        "You will not be charged for these items until they ship. The rest of your order is on its way or will follow "
        "separately.\n"
        "If we cannot ship by 2026-03-06, we will ask for your consent to the delay; you may cancel the backordered "
        "items at any time for a full refund.\n\n"
        "Kind regards,\nCustomer service\n")
    assert ("<tr><td>Tent 2P <small>(TENT)</small></td><td align=\"right\">2</td><td>2026-03-12</td></tr>\n"
            "<tr><td>STAKE <small>(STAKE)</small></td><td align=\"right\">4</td><td>to be confirmed</td></tr>\n"
            "</table>") in o2["body_html"]
    assert "<p>If we cannot ship by 2026-03-06," in o2["body_html"]
    o1 = m["O-1"]                                                        # German text, English HTML, no FTC rule
    assert o1["subject"] == "Ein Artikel Ihrer Bestellung O-1 ist nachbestellt"
    assert o1["body"] == (
        "Guten Tag Jonas Becker,\n\n"
        "vielen Dank für Ihre Bestellung O-1. Folgende Artikel sind derzeit nicht vorrätig und werden versandt, "
        "sobald sie eintreffen:\n\n"
        "- 1 x MUG (MUG), voraussichtlich bis 2026-03-05\n\n"
        "Diese Artikel werden erst bei Versand berechnet.\n\n"
        "Mit freundlichen Grüßen\nIhr Kundenservice\n")
    assert o1["body_html"].startswith("<!doctype html>\n<html lang=\"en\">") and "ship by" not in o1["body_html"]
    o3 = m["O-3"]                                                        # no name, no language, unlisted channel
    assert o3["language"] is None and o3["subject"] == "An item of your order O-3 is on backorder"
    assert o3["body"].startswith("Hello there,\n") and "- 1 x Lamp <LED> & co (LAMP)\n" in o3["body"]
    assert "Lamp &lt;LED&gt; &amp; co <small>(LAMP)</small>" in o3["body_html"]
    assert "If we cannot ship" not in o3["body"]


def test_cancellation_notices_of_a_run_literal_text():
    rows, links = nt.build_notices("CANCELLATION_NOTICE", CA, T, RULES)
    m = by_order(rows)
    assert list(m) == ["O-4", "O-5"]
    assert [li[3] for li in links] == ["O-4-2", "O-4-1", "O-5-1"]         # lines in the query's order
    assert m["O-4"]["subject"] == "Items of your order O-4 were cancelled"
    assert m["O-4"]["language"] == "fr_FR"                               # no French template: English
    assert m["O-4"]["body"] == (
        "Hello Ann,\n\n"
        "We are sorry: the following items of your order O-4 could not be supplied and were cancelled:\n\n"
        "- 3 x Mug (MUG): not in stock and not available on backorder\n"
        "- 1 x TENT (TENT): waited more than 30 days\n\n"
        "You will not be charged for them; any amount already paid for them will be refunded.\n\n"
        "Kind regards,\nCustomer service\n")
    assert "<ul><li>3 x Mug <small>(MUG)</small>: not in stock and not available on backorder</li><li>1 x TENT " \
           "<small>(TENT)</small>: waited more than 30 days</li></ul>" in m["O-4"]["body_html"]
    assert "- 2 x Lamp (LAMP): cancelled\n" in m["O-5"]["body"] and m["O-5"]["body"].startswith("Hello there,")
    assert nt.build_notices("CANCELLATION_NOTICE", CA.iloc[0:0], T, RULES) == ([], [])


# An independent reference: per order, a dict per line, Jinja's own Template.render, as the cycle first did it.
def reference_notices(kind, f, t, rules):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    folder = nt.EMAIL_TEMPLATES
    env = Environment(loader=FileSystemLoader(str(folder)), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False))

    def none(v):
        return None if isinstance(v, float) and v != v else v

    rows, links = [], []
    for order_id, g in f.groupby("order_id", sort=True):
        first = g.iloc[0]
        lines = []
        for rec in g.to_dict("records"):
            rec = {k: none(v) for k, v in rec.items()}
            lead = rec.get("restock_lead_days")
            rec["expected_by"] = None if lead is None else (t + timedelta(days=int(lead))).date().isoformat()
            rec["reason_text"] = "not in stock and not available on backorder" \
                if rec.get("kind") == "NOT_BACKORDERABLE" else (rec.get("reason") or "cancelled")
            lines.append(rec)
        language = none(first["language"])
        order = {"order_id": order_id, "customer_name": none(first["customer_name"]),
                 "ftc_rule": rules.channel(first["store"]).ftc_rule,
                 "ship_by": None if pd.isna(first["ship_by_date"]) else first["ship_by_date"].date().isoformat()}
        mail = {}
        for part in ("subject", "txt", "html"):
            name = next((n for n in nt.template_names(kind, language, part) if (folder / n).exists()), None)
            mail[part] = None if name is None else env.get_template(name).render(order=order, lines=lines)
        key = f"{kind}/{order_id}/{t.isoformat()}"
        nid = "N-" + hashlib.sha256(key.encode()).hexdigest()[:20]
        rows.append((nid, key, order_id, kind, first["customer_email"], " ".join(mail["subject"].split()),
                     mail["txt"], mail["html"], language, t))
        links.extend((nid, kind, order_id, lid) for lid in g["line_id"])
    return rows, links


def test_fixed_frames_match_the_reference():
    for kind, f in (("BACKORDER_NOTICE", BO), ("CANCELLATION_NOTICE", CA)):
        assert nt.build_notices(kind, f, T, RULES) == reference_notices(kind, f, T, RULES)


TEXT = st.text(alphabet=st.sampled_from(list("aZ09 <>&\"'\\\t\n\r-éß%{}")), min_size=1, max_size=12)
MAYBE = st.one_of(st.just(NAN), TEXT)
ORDER_ST = st.tuples(st.sampled_from(["O-1", "O-10", "O-2", "B-1", "o-1", "Ö-3"]), MAYBE,
                  st.sampled_from([NAN, "en_US", "de_DE", "de", "de-AT", "fr_FR", "pt_BR"]),
                  st.sampled_from(["US_WEB", "US_B2B", "EU_WEB", "NEW_STORE"]),
                  st.sampled_from([None, "2026-03-06T04:59:59Z", "2026-04-01T00:00:00Z", "2026-03-31T23:30:00-05:00"]))
LINE_ST = st.tuples(st.integers(0, 5), TEXT, MAYBE, st.integers(1, 99), st.one_of(st.just(NAN), st.integers(0, 400)),
                 st.sampled_from(["NOT_BACKORDERABLE", "AUTO_CANCEL", "CUSTOMER", "FTC"]), MAYBE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders=st.lists(ORDER_ST, min_size=1, max_size=6, unique_by=lambda o: o[0]),
       lines=st.lists(LINE_ST, min_size=1, max_size=25))
def test_batch_rendering_equals_the_per_order_reference(orders, lines):
    bo, ca = [], []
    for n, (o, sku, name, qty, lead, kind, reason) in enumerate(lines):
        order_id, customer, language, store, ship_by = orders[o % len(orders)]
        common = (f"{order_id.lower()}@example.com", customer, language, store, ship_by)
        bo.append((order_id, f"{order_id}-{n}", n, sku, name, qty, *common, lead))
        ca.append((order_id, f"{order_id}-{n}", n, sku, name, qty, kind, reason, *common))
    for kind, f in (("BACKORDER_NOTICE", frame(BO_COLUMNS, bo)), ("CANCELLATION_NOTICE", frame(CA_COLUMNS, ca))):
        assert nt.build_notices(kind, f, T, RULES) == reference_notices(kind, f, T, RULES)


def test_write_outbox_copies_any_text_and_keeps_the_first_email(migrated_url):
    from backorders import db
    from tests.conftest import table_rows

    body = "tab\there\nnew line\r\nback\\slash \\N \\. end\\"
    row = ("N-1", "K/1", "O-1", "BACKORDER_NOTICE", "a@example.com", "Subject é", body, None, None, T)
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        nt.write_outbox(cur, [row, ("N-2", "K/2", "O-2", "BACKORDER_NOTICE", "b@example.com", "s", "b", "<p>\\</p>",
                                    "de_DE", T)],
                        [("N-1", "BACKORDER_NOTICE", "O-1", "L1"), ("N-1", "BACKORDER_NOTICE", "O-1", "L2")])
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:       # again: nothing changes
        nt.write_outbox(cur, [(*row[:6], "other", *row[7:])], [("N-1", "BACKORDER_NOTICE", "O-1", "L1")])
    got = table_rows(migrated_url, "SELECT notification_id, idempotency_key, order_id, kind, recipient, subject, body, "
                                   "body_html, language, created_at, status FROM oms.notifications ORDER BY 1")
    assert got == [(*row, "PENDING"),
                   ("N-2", "K/2", "O-2", "BACKORDER_NOTICE", "b@example.com", "s", "b", "<p>\\</p>", "de_DE", T,
                    "PENDING")]
    assert table_rows(migrated_url, "SELECT * FROM oms.notification_lines ORDER BY line_id") == [
        ("N-1", "BACKORDER_NOTICE", "O-1", "L1"), ("N-1", "BACKORDER_NOTICE", "O-1", "L2")]


def test_write_outbox_falls_back_to_on_conflict(migrated_url):
    """A key the outbox did not have before but gets twice (here: twice in the batch, as with a concurrent writer)."""
    from backorders import db
    from tests.conftest import table_rows

    first = ("N-1", "K/1", "O-1", "BACKORDER_NOTICE", "a@example.com", "first", "b", None, None, T)
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        nt.write_outbox(cur, [first, (*first[:5], "second", *first[6:])], [("N-1", "BACKORDER_NOTICE", "O-1", "L1")])
    assert table_rows(migrated_url, "SELECT subject FROM oms.notifications") == [("first",)]
    assert table_rows(migrated_url, "SELECT line_id FROM oms.notification_lines") == [("L1",)]
