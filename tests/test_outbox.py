"""Outboxes of a run: captures per shipment request (or one per order), refunds per cancellation, re-authorizations
and AUTHORIZATION_EXPIRED exceptions, request_shipment messages, the delivery window, outbox.yaml, the DAG wiring."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from backorders import db, delivery, outbox
from backorders.rules import OutboxFile, RulesError, RulesWarning, load_outbox, load_rules
from tests.conftest import order_message, snapshot_oms, table_rows, utc

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "include" / "rules"
D0 = utc("2026-03-02T00:30:00Z")        # a Monday


def rules_with(tmp_path: Path, **files: str):
    """The shipped rules with some files replaced (name without .yaml -> text)."""
    folder = tmp_path / "rules"
    if not folder.exists():
        shutil.copytree(RULES, folder)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return load_rules(folder)


# ----------------------------------------------------------------------------------------------- seeding oms directly
class Oms:
    """Writes oms orders, lines, shipment requests and cancellations as a published run would leave them."""

    def __init__(self, url: str):
        self.url = url

    def _run(self, sql: str, params=()) -> None:
        with db.transaction(self.url) as conn, conn.cursor() as cur:
            cur.execute(sql, params)

    def order(self, order_id: str, lines: list[tuple], method: str | None = "CREDIT_CARD", store: str = "US_WEB",
              origin: datetime = D0, currency: str = "USD", raw: dict | None = None) -> None:
        """lines: (line_id, qty, gross, tax); every quantity starts backordered."""
        self._run("""INSERT INTO oms.orders (order_id, store, origin_date, customer_email, payment_method,
                         payment_reference, currency, gateway_id, transaction_id, last_authorized_at, priority_tier,
                         status, message_id, content_hash, created_run_at, updated_at, shipping_method,
                         ship_by_date)
                     VALUES (%s, %s, %s, 'buyer@example.com', %s, 'PAY-1', %s, 'ADYEN', %s, %s, 100, 'BACKORDERED',
                             1, 'h', %s, %s, 'STANDARD', %s)""",
                  (order_id, store, origin, method, currency, f"TX-{order_id}", origin,
                   origin, origin, origin + timedelta(days=30)))
        self._run("INSERT INTO oms.order_documents (order_id, raw_order, created_run_at) VALUES (%s, %s, %s)",
                  (order_id, json.dumps(raw or {}), origin))
        for n, (line_id, qty, gross, tax) in enumerate(lines, 1):
            self._run("""INSERT INTO oms.order_lines (order_id, line_id, line_number, sku, product_name, qty_ordered,
                             qty_backordered, status, is_backorder, backorderable, backorder_decided_by, backordered_since,
                             gross_amount, net_amount, tax_amount, created_run_at, updated_at)
                         VALUES (%s, %s, %s, %s, %s, %s, %s, 'BACKORDERED', true, true, 'channel', %s, %s, %s, %s, %s, %s)""",
                      (order_id, line_id, n, f"SKU-{line_id}", f"Product {line_id}", qty, qty, origin, Decimal(gross),
                       Decimal(gross) - Decimal(tax), Decimal(tax), origin, origin))

    def ship(self, order_id: str, n: int, t: datetime, lines: list[tuple], source: str = "WH_PDX") -> str:
        """A shipment request SR-<order>-<n> at T for (line_id, qty); the quantity moves from backordered to allocated."""
        sr = f"SR-{order_id}-{n}"
        self._run("INSERT INTO oms.shipment_requests VALUES (%s, %s, %s, %s, %s, 'REQUESTED', NULL, NULL)",
                  (sr, order_id, source, n, t))
        for line_id, qty in lines:
            self._run("INSERT INTO oms.shipment_request_lines VALUES (%s, %s, %s, %s, %s)",
                      (sr, order_id, line_id, f"SKU-{line_id}", qty))
            self._run("UPDATE oms.order_lines SET qty_backordered = qty_backordered - %s, qty_allocated = qty_allocated + %s "
                      "WHERE order_id = %s AND line_id = %s", (qty, qty, order_id, line_id))
        return sr

    def cancel(self, order_id: str, line_id: str, t: datetime, qty: int, kind: str, reason: str = "cancelled") -> None:
        """A line_cancellations row of T of any kind (as publish and the lifecycle stage write them)."""
        self._run("INSERT INTO oms.line_cancellations (order_id, line_id, run_at, quantity, kind, reason) "
                  "VALUES (%s, %s, %s, %s, %s, %s)", (order_id, line_id, t, qty, kind, reason))
        self._run("UPDATE oms.order_lines SET qty_backordered = qty_backordered - %s, qty_cancelled = qty_cancelled + %s "
                  "WHERE order_id = %s AND line_id = %s", (qty, qty, order_id, line_id))


@pytest.fixture
def oms(migrated_url):
    return Oms(migrated_url)


def requests_of(url: str, kind: str | None = None) -> list[tuple]:
    return table_rows(url, f"""
        SELECT kind, order_id, shipment_request_id, line_id, amount::text, tax_amount::text, status,
               to_char(created_at AT TIME ZONE 'UTC', 'MM-DD HH24:MI'), idempotency_key
        FROM oms.payment_requests {"WHERE kind = '" + kind + "'" if kind else ""}
        ORDER BY created_at, kind, order_id, shipment_request_id, line_id, idempotency_key""")


def queue(url, t, rules=None, now=None):
    """The outboxes' side effects of run T, as run_cycle and the DAG queue them: queue_payment_requests and
    queue_shipment_messages at the same time (two threads, two connections), their figures merged; the wall clock
    set to T (every run recent) unless now is given."""
    t = utc(t) if isinstance(t, str) else t
    rules = rules or load_rules(RULES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stages = [pool.submit(stage, url, t, rules, now=now or t)
                  for stage in (outbox.queue_payment_requests, outbox.queue_shipment_messages)]
        payments, messages = (f.result() for f in stages)
    assert payments["status"] == messages["status"]
    return payments | messages


# ----------------------------------------------------------------------------------------------- captures
def test_partial_capture_per_shipment_request_adds_up_to_the_line_amounts(oms, migrated_url):
    url = migrated_url
    oms.order("O1", [("O1-1", 3, "10.00", "0.80"), ("O1-2", 1, "5.00", "0.40")])
    t1, t2, t3 = D0 + timedelta(hours=6), D0 + timedelta(days=1), D0 + timedelta(days=2)
    oms.ship("O1", 1, t1, [("O1-1", 1), ("O1-2", 1)])
    assert queue(url, t1)["captures"] == 1
    assert queue(url, t1)["payment_requests_inserted"] == 0          # the same stage again: nothing new
    oms.ship("O1", 2, t2, [("O1-1", 1)])
    queue(url, t2)
    oms.ship("O1", 3, t3, [("O1-1", 1)], source="WH_NJ")
    queue(url, t3)
    got = requests_of(url, "CAPTURE")
    assert [(r[2], r[4], r[5], r[8]) for r in got] == [
        ("SR-O1-1", "8.33", "0.67", "CAPTURE/SR-O1-1"),     # 10.00/3 + 5.00, tax 0.80/3 + 0.40
        ("SR-O1-2", "3.34", "0.26", "CAPTURE/SR-O1-2"),     # 6.67 - 3.33
        ("SR-O1-3", "3.33", "0.27", "CAPTURE/SR-O1-3")]
    assert sum(Decimal(r[4]) for r in got) == Decimal("15.00") and sum(Decimal(r[5]) for r in got) == Decimal("1.20")
    body = table_rows(url, "SELECT body FROM oms.payment_requests WHERE shipment_request_id = 'SR-O1-1'")[0][0]
    assert body["idempotency_key"] == "CAPTURE/SR-O1-1" and body["amount"] == "8.33" and body["currency"] == "USD"
    assert body["transaction_id"] == "TX-O1" and body["payment_method"] == "CREDIT_CARD"
    assert [(x["line_id"], x["quantity"], x["amount"]) for x in body["lines"]] == [("O1-1", 1, "3.33"),
                                                                                   ("O1-2", 1, "5.00")]
    assert table_rows(url, "SELECT DISTINCT status, payment_request_id LIKE 'PR-%' FROM oms.payment_requests") == [
        ("PENDING", True)]


def test_without_partial_capture_one_capture_with_the_last_shipment(oms, migrated_url, tmp_path):
    url = migrated_url
    rules = rules_with(tmp_path, payment_methods="""
defaults: {reauthorize: true, reauth_interval_days: 7, authorization_validity_days: 7, partial_capture: true}
methods: {INVOICE: {partial_capture: false, reauthorize: false}}
""")
    oms.order("O2", [("O2-1", 2, "20.00", "1.60"), ("O2-2", 1, "7.50", "0.60")], method="INVOICE")
    oms.order("O3", [("O3-1", 1, "12.00", "0.96"), ("O3-2", 2, "8.00", "0.64")], method="INVOICE")
    t1, t2 = D0 + timedelta(hours=6), D0 + timedelta(days=3)
    oms.ship("O2", 1, t1, [("O2-1", 2)])
    oms.ship("O3", 1, t1, [("O3-1", 1)])
    assert queue(url, t1, rules)["captures"] == 0                      # both still have a backorder
    oms.ship("O2", 2, t2, [("O2-2", 1)], source="WH_NJ")               # O2's last shipment
    oms.cancel("O3", "O3-2", t2, 2, "CUSTOMER", "the buyer cancelled")  # nothing left to ship for O3 either
    queue(url, t2, rules)
    assert [(r[1], r[2], r[4], r[5], r[8]) for r in requests_of(url, "CAPTURE")] == [
        ("O2", "SR-O2-2", "27.50", "2.20", "CAPTURE/O2"),
        ("O3", "SR-O3-1", "12.00", "0.96", "CAPTURE/O3")]
    assert [(r[1], r[3], r[4]) for r in requests_of(url, "REFUND")] == [("O3", "O3-2", "8.00")]
    queue(url, t2 + timedelta(hours=8), rules)                         # later runs never capture again
    assert len(requests_of(url, "CAPTURE")) == 2


# ----------------------------------------------------------------------------------------------- refunds
def test_refund_for_every_cancellation_row_of_the_run_whatever_its_kind(oms, migrated_url):
    url = migrated_url
    oms.order("O4", [("O4-1", 3, "30.00", "2.40"), ("O4-2", 2, "9.99", "0.80")])
    t = utc("2026-03-06T22:00:00Z")                                     # Friday 17:00 in New York (US_WEB)
    oms.cancel("O4", "O4-1", t, 1, "NOT_BACKORDERABLE", "not backorderable")
    oms.cancel("O4", "O4-1", t, 1, "CUSTOMER", "the buyer cancelled")
    oms.cancel("O4", "O4-2", t, 2, "FTC", "no consent to the delay")
    assert queue(url, t)["refunds"] == 3
    got = table_rows(url, """SELECT line_id, reason, amount::text, tax_amount::text, due_at, idempotency_key
                             FROM oms.payment_requests WHERE kind = 'REFUND' ORDER BY line_id, reason""")
    # 7 working days after Friday 17:00 EST: Tuesday 17 March 17:00 EDT (daylight saving time began on the 8th)
    due = utc("2026-03-17T21:00:00Z")
    assert got == [
        ("O4-1", "CUSTOMER: the buyer cancelled", "10.00", "0.80", due,
         "REFUND/O4/O4-1/2026-03-06T22:00:00+00:00/CUSTOMER"),
        ("O4-1", "NOT_BACKORDERABLE: not backorderable", "10.00", "0.80", due,
         "REFUND/O4/O4-1/2026-03-06T22:00:00+00:00/NOT_BACKORDERABLE"),
        ("O4-2", "FTC: no consent to the delay", "9.99", "0.80", due,
         "REFUND/O4/O4-2/2026-03-06T22:00:00+00:00/FTC")]
    # a cancellation of another kind written later in the same run: only that one is new
    oms.cancel("O4", "O4-1", t, 1, "AUTO_CANCEL", "not allocated within 30 days")
    assert queue(url, t)["payment_requests_inserted"] == 1
    assert sum(Decimal(r[4]) for r in requests_of(url, "REFUND") if r[3] == "O4-1") == Decimal("30.00")


def test_working_days():
    fri = utc("2026-03-06T12:00:00Z")
    assert outbox.add_working_days(fri, 7) == utc("2026-03-17T12:00:00Z")
    assert outbox.add_working_days(utc("2026-03-07T12:00:00Z"), 1) == utc("2026-03-09T12:00:00Z")   # Saturday
    assert outbox.add_working_days(fri, 0) == fri
    # 23:30 UTC Friday is already Saturday in Berlin: counted from the Monday there
    assert outbox.add_working_days(utc("2026-03-06T23:30:00Z"), 1, "Europe/Berlin") == utc("2026-03-08T23:30:00Z")


# ----------------------------------------------------------------------------------------------- re-authorizations
def test_reauthorization_every_interval_and_expired_authorizations(oms, migrated_url, tmp_path):
    url = migrated_url
    text = """
defaults: {reauthorize: true, reauth_interval_days: 7, authorization_validity_days: 7, partial_capture: true}
methods: {CARD: {}, SHORT: {reauth_interval_days: 10, authorization_validity_days: 5}, GIFT: {reauthorize: false}}
"""
    with pytest.warns(RulesWarning, match="SHORT: reauth_interval_days \\(10\\) is longer than "
                                          "authorization_validity_days \\(5\\)"):
        rules = rules_with(tmp_path, payment_methods=text)
    oms.order("C", [("C-1", 2, "40.00", "3.20"), ("C-2", 1, "10.00", "0.80")], method="CARD")
    oms.order("S", [("S-1", 1, "25.00", "2.00")], method="SHORT")
    oms.order("G", [("G-1", 1, "25.00", "2.00")], method="GIFT")
    oms.order("N", [("N-1", 1, "25.00", "2.00")], method=None)       # no payment: nothing to re-authorize
    oms.ship("C", 1, D0 + timedelta(hours=6), [("C-2", 1)])          # C keeps a backorder of 2 x 40.00/2
    days = [1, 5, 6, 7, 8, 10, 14, 15, 16, 20, 21]
    for d in days:
        queue(url, D0.replace(hour=6, minute=0) + timedelta(days=d), rules)
    got = [(r[1], r[7], r[4]) for r in requests_of(url, "REAUTHORIZE")]
    # C: every 7 days from the origin (day 0, 00:30): first run at or after day 7 00:30, then 7 days after that run
    # S: every 10 days; G: never (reauthorize false); N: no payment
    assert got == [("C", "03-09 06:00", "40.00"), ("S", "03-12 06:00", "25.00"), ("C", "03-16 06:00", "40.00"),
                   ("S", "03-22 06:00", "25.00"), ("C", "03-23 06:00", "40.00")]
    assert table_rows(url, "SELECT last_authorized_at FROM oms.orders WHERE order_id = 'C'") == [
        (utc("2026-03-23T06:00:00Z"),)]
    body = table_rows(url, "SELECT body FROM oms.payment_requests WHERE kind = 'REAUTHORIZE' LIMIT 1")[0][0]
    assert body["idempotency_key"] == "REAUTHORIZE/C/2026-03-09T06:00:00+00:00"
    # S's authorization (valid 5 days) lapsed on day 5 and was renewed only on day 10; again after day 15 until day 20
    ex = table_rows(url, """SELECT order_id, severity, to_char(opened_at AT TIME ZONE 'UTC', 'MM-DD'),
                                   to_char(closed_at AT TIME ZONE 'UTC', 'MM-DD'), details
                            FROM oms.exceptions WHERE kind = 'AUTHORIZATION_EXPIRED' ORDER BY opened_at""")
    assert [e[:4] for e in ex] == [("S", "high", "03-07", "03-12"), ("S", "high", "03-18", "03-22")]
    assert "SHORT authorization of 2026-03-02T00:30:00Z expired on 2026-03-07T00:30:00Z" in ex[0][4]
    # the queue runs at each T are idempotent
    queue(url, D0.replace(hour=6, minute=0) + timedelta(days=21), rules)
    assert len(requests_of(url, "REAUTHORIZE")) == 5


# ----------------------------------------------------------------------------------------------- shipment messages
RAW = {"id": "O5", "addresses": [
    {"reference": "BILL", "address_type": "customer", "first_name": "Dana", "city": "Portland"},
    {"reference": "SHIP", "address_type": "shipping", "first_name": "Sam", "city": "Boston"}],
    "lines": [{"id": "O5-1", "shipping_address_reference": "SHIP"}, {"id": "O5-2", "shipping_address_reference": "SHIP"}]}


def test_request_shipment_messages_are_written_to_the_folder_once(oms, migrated_url, tmp_path):
    url = migrated_url
    oms.order("O5", [("O5-1", 1, "10.00", "0.80"), ("O5-2", 2, "4.00", "0.32")], raw=RAW)
    t = D0 + timedelta(hours=6)
    oms.ship("O5", 1, t, [("O5-2", 2), ("O5-1", 1)])
    assert queue(url, t)["shipment_messages"] == 1
    (mid, key, status, name, body), = table_rows(
        url, "SELECT message_id, idempotency_key, status, file_name, body FROM oms.shipment_messages")
    assert (mid, key, status, name) == ("SM-SR-O5-1", "REQUEST_SHIPMENT/SR-O5-1", "PENDING", "SR-O5-1.json")
    assert body["jsonrpc"] == "2.0" and body["id"] == mid
    assert body["method"] == "magento.logistics.warehouse_management.request_shipment"
    req = body["params"]["shipment_request"]
    assert {k: req[k] for k in ("id", "order_id", "store", "source_code", "shipment_number", "date_requested",
                                "shipping_method", "ship_by_date")} == {
        "id": "SR-O5-1", "order_id": "O5", "store": "US_WEB", "source_code": "WH_PDX", "shipment_number": 1,
        "date_requested": "2026-03-02T06:30:00Z", "shipping_method": "STANDARD", "ship_by_date": "2026-04-01T00:30:00Z"}
    assert req["shipping_address"]["reference"] == "SHIP" and req["shipping_address"]["city"] == "Boston"
    assert [(x["line_id"], x["line_number"], x["sku"], x["quantity"]) for x in req["lines"]] == [
        ("O5-1", 1, "SKU-O5-1", 1), ("O5-2", 2, "SKU-O5-2", 2)]
    # stored as built (json, not jsonb, which would reorder the keys by length): JSON-RPC's order, the request's own
    order = ["id", "order_id", "store", "source_code", "shipment_number", "date_requested", "shipping_method",
             "ship_by_date", "shipping_address", "lines"]
    assert list(body) == ["jsonrpc", "id", "method", "params"] and list(req) == order

    folder = tmp_path / "outbound"
    figures = delivery.deliver_shipment_messages(url, folder=folder, settings=OutboxFile())
    assert figures["sent"] == 1
    written = json.loads((folder / "SR-O5-1.json").read_text())
    assert written == body and list(written) == list(body)                  # the file keeps the order too
    assert list(written["params"]["shipment_request"]) == order
    assert [p.name for p in folder.iterdir()] == ["SR-O5-1.json"]            # no temporary file left
    (folder / "SR-O5-1.json").unlink()                                        # logistics picked it up
    assert delivery.deliver_shipment_messages(url, folder=folder, settings=OutboxFile())["sent"] == 0
    assert list(folder.iterdir()) == []
    assert table_rows(url, "SELECT status, attempts, sent_at IS NOT NULL FROM oms.shipment_messages") == [
        ("SENT", 1, True)]
    # without a folder they wait in the table for logistics to collect
    assert "skipped" in delivery.deliver_shipment_messages(url, settings=OutboxFile())


def test_shipment_messages_can_be_turned_off(oms, migrated_url, tmp_path):
    rules = rules_with(tmp_path, outbox="shipment_messages: {enabled: false}\n")
    oms.order("O6", [("O6-1", 1, "10.00", "0.80")])
    t = D0 + timedelta(hours=6)
    oms.ship("O6", 1, t, [("O6-1", 1)])
    assert queue(migrated_url, t, rules)["shipment_messages"] == 0
    assert len(requests_of(migrated_url, "CAPTURE")) == 1


# ----------------------------------------------------------------------------------------------- delivery window
def test_runs_older_than_the_delivery_window_record_their_rows_as_suppressed(oms, migrated_url, tmp_path):
    url = migrated_url
    rules = rules_with(tmp_path, outbox="delivery: {window_days: 3}\n")
    t_old, t_new = D0 + timedelta(hours=6), D0 + timedelta(days=2)
    oms.order("A", [("A-1", 1, "10.00", "0.80")])
    oms.order("B", [("B-1", 1, "10.00", "0.80")])
    oms.ship("A", 1, t_old, [("A-1", 1)])
    oms.ship("B", 1, t_new, [("B-1", 1)])
    with db.transaction(url) as conn, conn.cursor() as cur:
        for order, t in (("A", t_old), ("B", t_new)):
            cur.execute("INSERT INTO oms.notifications (notification_id, idempotency_key, order_id, kind, recipient, "
                        "subject, body, created_at) VALUES (%s, %s, %s, 'BACKORDER_NOTICE', 'a@example.com', 's', 'b', %s)",
                        (f"N-{order}", f"K-{order}", order, t))
    now = t_new + timedelta(days=3)                      # t_new is 3 days old (recent), t_old almost 5 (too old)
    assert queue(url, t_old, rules, now=now)["status"] == "SUPPRESSED"
    assert queue(url, t_new, rules, now=now)["status"] == "PENDING"
    assert outbox.apply_delivery_window(url, t_old, rules, now=now) == {"deliverable": False, "suppressed": 1}
    assert outbox.apply_delivery_window(url, t_new, rules, now=now) == {"deliverable": True, "suppressed": 0}
    assert table_rows(url, """
        SELECT 'n', order_id, status FROM oms.notifications UNION ALL
        SELECT 'p', order_id, status FROM oms.payment_requests UNION ALL
        SELECT 's', order_id, status FROM oms.shipment_messages ORDER BY 1, 2""") == [
        ("n", "A", "SUPPRESSED"), ("n", "B", "PENDING"), ("p", "A", "SUPPRESSED"), ("p", "B", "PENDING"),
        ("s", "A", "SUPPRESSED"), ("s", "B", "PENDING")]
    # a suppressed row is never delivered
    figures = delivery.deliver_shipment_messages(url, folder=tmp_path / "out", settings=rules.outbox)
    assert figures["sent"] == 1 and [p.name for p in (tmp_path / "out").iterdir()] == ["SR-B-1.json"]
    assert outbox.is_deliverable(t_new + timedelta(days=1), now=t_new)        # a T in the future is recent


# ----------------------------------------------------------------------------------------------- the whole cycle
def test_cycle_queues_the_outboxes_and_a_replay_changes_nothing(landing, migrated_url, tmp_path):
    url = migrated_url
    rules = rules_with(tmp_path, outbox="delivery: {window_days: 100000}\n")
    landing.message(order_message("R1", lines=[("SKU-A", 2, None), ("SKU-B", 1, True)]), "2026-03-02T05:00:00Z")
    landing.message(order_message("R2", lines=[("SKU-C", 3, False)]), "2026-03-02T05:10:00Z")
    landing.stock([("WH_PDX", "SKU-A", 5), ("WH_PDX", "SKU-C", 1)], "2026-03-02T05:00:00Z")
    from backorders import cycle

    cycle.run_cycle(url, "2026-03-02T06:00:00Z", rules=rules)
    landing.stock([("WH_NJ", "SKU-B", 1)], "2026-03-02T12:00:00Z")
    landing.confirm("SR-R1-1", "2026-03-02T11:00:00Z")
    cycle.run_cycle(url, "2026-03-02T14:00:00Z", rules=rules)
    got = requests_of(url)
    # the sample line amounts: 69.98 gross, 5.18 tax per line, whatever its quantity
    assert [(r[0], r[1], r[2] or r[3], r[4], r[6], r[7]) for r in got] == [
        ("CAPTURE", "R1", "SR-R1-1", "69.98", "PENDING", "03-02 06:00"),
        ("CAPTURE", "R2", "SR-R2-1", "23.33", "PENDING", "03-02 06:00"),
        ("REFUND", "R2", "R2-1", "46.65", "PENDING", "03-02 06:00"),
        ("CAPTURE", "R1", "SR-R1-2", "69.98", "PENDING", "03-02 14:00")]
    assert table_rows(url, "SELECT shipment_request_id, status FROM oms.shipment_messages ORDER BY 1") == [
        ("SR-R1-1", "PENDING"), ("SR-R1-2", "PENDING"), ("SR-R2-1", "PENDING")]
    assert table_rows(url, "SELECT shipment_request_id, status FROM oms.shipment_requests ORDER BY 1")[0] == (
        "SR-R1-1", "SHIPPED")
    assert table_rows(url, "SELECT kind, status FROM oms.notifications ORDER BY kind") == [
        ("BACKORDER_NOTICE", "PENDING"), ("CANCELLATION_NOTICE", "PENDING")]
    before = snapshot_oms(url)
    cycle.run_cycle(url, "2026-03-02T14:00:00Z", rules=rules)
    assert snapshot_oms(url) == before


# ----------------------------------------------------------------------------------------------- outbox.yaml
def test_shipped_outbox_rules_and_defaults(tmp_path):
    shipped = load_outbox(RULES)
    assert shipped.delivery.max_attempts == 5 and shipped.delivery.window_days == 2
    assert shipped.shipment_messages.folder is None and shipped.payments.refund_due_working_days == 7
    assert load_rules(RULES).outbox == shipped
    assert load_outbox(tmp_path) == OutboxFile()                     # no file: every default
    d = shipped.delivery
    assert [d.backoff(n) for n in (1, 2, 3, 8)] == [60, 120, 240, 3600]


@pytest.mark.parametrize("text, expected", [
    ("delivery: {max_attempt: 3}", "outbox.yaml: delivery.max_attempt: unknown key"),
    ("delivery: {max_attempts: 0}", "delivery.max_attempts: Input should be greater than or equal to 1"),
    ("delivery: {backoff_seconds: 600, backoff_max_seconds: 60}", "backoff_max_seconds (60.0) at least backoff_seconds"),
    ("email: {sender: not-an-address}", "email.sender: expected an email address"),
    ("shipment_messages: {enabled: maybe}", "shipment_messages.enabled: Input should be a valid boolean"),
])
def test_outbox_rules_errors_name_the_file_and_key(tmp_path, text, expected):
    (tmp_path / "outbox.yaml").write_text(text + "\n")
    with pytest.raises(RulesError) as err:
        load_outbox(tmp_path)
    assert expected in str(err.value)


# ----------------------------------------------------------------------------------------------- the DAG
def test_dag_queues_in_side_effects_and_delivers_after_the_report():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["backorder_cycle"]
    for task_id in ("side_effects.queue_payment_requests", "side_effects.queue_shipment_messages"):
        queue = dag.get_task(task_id)
        assert "load.publish" in queue.get_flat_relative_ids(upstream=True)      # after publish ...
        assert "report.finish_run" in queue.downstream_task_ids                   # ... and before the report
    delivered = {"deliver.deliver_notifications", "deliver.dispatch_payments", "deliver.write_shipment_messages"}
    assert dag.get_task("report.finish_run").downstream_task_ids == delivered
    shipped = load_outbox(RULES).delivery
    for task_id in delivered:
        task = dag.get_task(task_id)
        assert task.retries == shipped.max_attempts - 1
        assert task.retry_delay == timedelta(seconds=shipped.backoff_seconds)
        assert task.retry_exponential_backoff == shipped.backoff_factor
        assert not task.on_failure_callback                  # a delivery failure does not fail the cycle's run


# ----------------------------------------------------------------------------------------------- every value, literally
def test_the_requests_of_a_varied_run_value_by_value(oms, migrated_url, tmp_path):
    """Partial and one-per-order captures, currencies with 0, 2 and 3 digits, several shipments of an order,
    cancellations of several kinds (with and without a recorded refund_due_at, on two channel calendars),
    re-authorizations and an order without payment: every column and the whole body of every request."""
    url = migrated_url
    rules = rules_with(tmp_path, payment_methods="""
defaults: {reauthorize: true, reauth_interval_days: 7, authorization_validity_days: 7, partial_capture: true}
methods: {CARD: {reauth_interval_days: 2, authorization_validity_days: 2}, INVOICE: {partial_capture: false, reauthorize: false}}
""")
    t1, t = D0 + timedelta(hours=6), utc("2026-03-06T22:00:00Z")      # T: Friday 17:00 in New York, 23:00 in Berlin
    oms.order("J", [("J-1", 3, "1000", "91"), ("J-2", 1, "500", "45")], method="CARD", currency="JPY")
    oms.order("K", [("K-1", 2, "10.125", "0.500"), ("K-2", 1, "3.333", "0")], method="CARD", currency="KWD",
              store="EU_WEB")
    oms.order("I", [("I-1", 3, "30.00", "2.40"), ("I-2", 2, "9.99", "0.80")], method="INVOICE")
    oms.order("N", [("N-1", 1, "5.00", "0.40")], method=None)
    oms.ship("J", 1, t1, [("J-1", 1)])
    oms.ship("I", 1, t1, [("I-1", 2)])
    queue(url, t1, rules)
    oms.ship("J", 2, t, [("J-1", 1)])
    oms.cancel("J", "J-1", t, 1, "CUSTOMER", "the buyer cancelled")
    oms.ship("K", 1, t, [("K-2", 1), ("K-1", 1)])
    oms.cancel("K", "K-1", t, 1, "NOT_BACKORDERABLE", "not backorderable")
    oms.ship("I", 2, t, [("I-1", 1), ("I-2", 1)])
    oms.cancel("I", "I-2", t, 1, "FTC", "no consent to the delay")
    oms.cancel("N", "N-1", t, 1, "CUSTOMER", "the buyer cancelled")
    with db.transaction(url) as conn, conn.cursor() as cur:            # as the lifecycle stage records it
        cur.execute("UPDATE oms.line_cancellations SET refund_due_at = '2026-03-17T21:00:00.5Z' WHERE kind = 'FTC'")
    oms.order("R", [("R-1", 4, "19.99", "1.60")], method="CARD", currency="EUR")   # open backorder since D0
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE oms.orders SET last_authorized_at = '2026-03-04T21:59:59.25Z' WHERE order_id = 'R'")
    figures = queue(url, t, rules)
    assert {k: figures[k] for k in ("captures", "refunds", "reauthorizations", "payment_requests_inserted")} == {
        "captures": 3, "refunds": 3, "reauthorizations": 2, "payment_requests_inserted": 8}
    got = table_rows(url, """
        SELECT payment_request_id, idempotency_key, order_id, shipment_request_id, line_id, kind, amount::text,
               tax_amount::text, currency, payment_method, due_at, status, reason, body
        FROM oms.payment_requests WHERE created_at = '2026-03-06T22:00:00Z' ORDER BY idempotency_key""")
    for row in got:                                                       # the id is the hash of the key
        assert row[0] == outbox.payment_request_id(row[1]) == row[13]["payment_request_id"]
    T, TX = utc("2026-03-06T22:00:00Z"), "2026-03-06T22:00:00+00:00"
    assert [row[1:13] for row in got] == [
        # INVOICE: one capture when nothing is left to ship, every shipped share, with the last shipment request
        ("CAPTURE/I", "I", "SR-I-2", None, "CAPTURE", "35.00", "2.80", "USD", "INVOICE", T, "PENDING",
         "one settlement of the whole order with its last shipment request SR-I-2"),
        # JPY, no decimals: 1000 in thirds, 333 at t1, 334 now, 333 cancelled
        ("CAPTURE/SR-J-2", "J", "SR-J-2", None, "CAPTURE", "334", "31", "JPY", "CARD", T, "PENDING",
         "settlement of shipment request SR-J-2"),
        # KWD, 3 decimals: half of 10.125 rounds half away from zero, 5.063; the cancelled half gets 5.062
        ("CAPTURE/SR-K-1", "K", "SR-K-1", None, "CAPTURE", "8.396", "0.250", "KWD", "CARD", T, "PENDING",
         "settlement of shipment request SR-K-1"),
        ("REAUTHORIZE/J/" + TX, "J", None, None, "REAUTHORIZE", "500", "45", "JPY", "CARD", T, "PENDING",
         "open backorder; last authorized 2026-03-02T00:30:00+00:00, re-authorized every 2 days"),
        ("REAUTHORIZE/R/" + TX, "R", None, None, "REAUTHORIZE", "19.99", "1.60", "EUR", "CARD", T, "PENDING",
         "open backorder; last authorized 2026-03-04T21:59:59.250000+00:00, re-authorized every 2 days"),
        # the refund_due_at the lifecycle stage recorded
        ("REFUND/I/I-2/" + TX + "/FTC", "I", None, "I-2", "REFUND", "4.99", "0.40", "USD", "INVOICE",
         utc("2026-03-17T21:00:00.5Z"), "PENDING", "FTC: no consent to the delay"),
        # else 7 working days on the channel's calendar: New York (EDT from the 8th), Berlin
        ("REFUND/J/J-1/" + TX + "/CUSTOMER", "J", None, "J-1", "REFUND", "333", "30", "JPY", "CARD",
         utc("2026-03-17T21:00:00Z"), "PENDING", "CUSTOMER: the buyer cancelled"),
        ("REFUND/K/K-1/" + TX + "/NOT_BACKORDERABLE", "K", None, "K-1", "REFUND", "5.062", "0.250", "KWD", "CARD",
         utc("2026-03-17T22:00:00Z"), "PENDING", "NOT_BACKORDERABLE: not backorderable")]

    def body(key, kind, order, amount, tax, currency, method, reason, due=TX, **extra):
        return {"idempotency_key": key, "kind": kind, "order_id": order, "amount": amount, "tax_amount": tax,
                "currency": currency, "payment_method": method, "payment_reference": "PAY-1", "gateway_id": "ADYEN",
                "transaction_id": f"TX-{order}", "requested_at": TX, "due_at": due, "reason": reason, **extra}

    def line(sr, line_id, qty, amount, tax):
        return {"shipment_request_id": sr, "line_id": line_id, "sku": f"SKU-{line_id}", "quantity": qty,
                "amount": amount, "tax_amount": tax}

    assert [{k: v for k, v in row[13].items() if k != "payment_request_id"} for row in got] == [
        body("CAPTURE/I", "CAPTURE", "I", "35.00", "2.80", "USD", "INVOICE",
             "one settlement of the whole order with its last shipment request SR-I-2", shipment_request_id="SR-I-2",
             lines=[line("SR-I-1", "I-1", 2, "20.00", "1.60"), line("SR-I-2", "I-1", 1, "10.00", "0.80"),
                    line("SR-I-2", "I-2", 1, "5.00", "0.40")]),
        body("CAPTURE/SR-J-2", "CAPTURE", "J", "334", "31", "JPY", "CARD", "settlement of shipment request SR-J-2",
             shipment_request_id="SR-J-2", lines=[line("SR-J-2", "J-1", 1, "334", "31")]),
        body("CAPTURE/SR-K-1", "CAPTURE", "K", "8.396", "0.250", "KWD", "CARD", "settlement of shipment request SR-K-1",
             shipment_request_id="SR-K-1",
             lines=[line("SR-K-1", "K-1", 1, "5.063", "0.250"), line("SR-K-1", "K-2", 1, "3.333", "0.000")]),
        body("REAUTHORIZE/J/" + TX, "REAUTHORIZE", "J", "500", "45", "JPY", "CARD",
             "open backorder; last authorized 2026-03-02T00:30:00+00:00, re-authorized every 2 days"),
        body("REAUTHORIZE/R/" + TX, "REAUTHORIZE", "R", "19.99", "1.60", "EUR", "CARD",
             "open backorder; last authorized 2026-03-04T21:59:59.250000+00:00, re-authorized every 2 days"),
        body("REFUND/I/I-2/" + TX + "/FTC", "REFUND", "I", "4.99", "0.40", "USD", "INVOICE",
             "FTC: no consent to the delay", due="2026-03-17T21:00:00.500000+00:00", line_id="I-2",
             lines=[{"line_id": "I-2", "sku": "SKU-I-2", "quantity": 1, "amount": "4.99", "tax_amount": "0.40"}]),
        body("REFUND/J/J-1/" + TX + "/CUSTOMER", "REFUND", "J", "333", "30", "JPY", "CARD",
             "CUSTOMER: the buyer cancelled", due="2026-03-17T21:00:00+00:00", line_id="J-1",
             lines=[{"line_id": "J-1", "sku": "SKU-J-1", "quantity": 1, "amount": "333", "tax_amount": "30"}]),
        body("REFUND/K/K-1/" + TX + "/NOT_BACKORDERABLE", "REFUND", "K", "5.062", "0.250", "KWD", "CARD",
             "NOT_BACKORDERABLE: not backorderable", due="2026-03-17T22:00:00+00:00", line_id="K-1",
             lines=[{"line_id": "K-1", "sku": "SKU-K-1", "quantity": 1, "amount": "5.062", "tax_amount": "0.250"}])]
    assert table_rows(url, "SELECT last_authorized_at FROM oms.orders WHERE order_id IN ('J', 'R')") == [(T,), (T,)]
    # the shipment message of K, whole: lines by line number, no address in the raw order
    assert table_rows(url, "SELECT body FROM oms.shipment_messages WHERE shipment_request_id = 'SR-K-1'") == [({
        "jsonrpc": "2.0", "id": "SM-SR-K-1", "method": "magento.logistics.warehouse_management.request_shipment",
        "params": {"shipment_request": {
            "id": "SR-K-1", "order_id": "K", "store": "EU_WEB", "source_code": "WH_PDX", "shipment_number": 1,
            "date_requested": "2026-03-06T22:00:00Z", "shipping_method": "STANDARD",
            "ship_by_date": "2026-04-01T00:30:00Z", "shipping_address": None,
            "lines": [{"line_id": "K-1", "line_number": 1, "sku": "SKU-K-1", "product_name": "Product K-1", "quantity": 1},
                      {"line_id": "K-2", "line_number": 2, "sku": "SKU-K-2", "product_name": "Product K-2",
                       "quantity": 1}]}}},)]
    assert queue(url, t, rules)["payment_requests_inserted"] == 0         # the same run again: nothing new


def test_the_outbox_rows_built_ahead_are_those_built_after_the_gate(pg_admin_url, tmp_path, monkeypatch):
    """prepare_shipment_messages and prepare_settlements (beside publish, from the staged run) and
    prepare_payment_requests (after publish, beside the load gate) build the outbox rows in staging, and the queue
    stages only copy them; without them the queue stages build the rows themselves from what publish wrote. Demo days
    with a re-authorization and a lapsed authorization end in exactly the same tables either way, and whether the
    settlements were built before publish began or after it had committed (in the DAG the two run side by side)."""
    from backorders import cycle, demo_data, schema
    from backorders.cli import DEMO_START
    from tests.conftest import scratch_database

    with pytest.warns(RulesWarning):        # PAYPAL: an authorization that lapses before it is renewed
        rules = rules_with(tmp_path, payment_methods="defaults: {reauthorize: true, reauth_interval_days: 7, "
                           "authorization_validity_days: 7, partial_capture: true}\nmethods:\n"
                           "  PAYPAL: {authorization_validity_days: 5, reauth_interval_days: 10}\n"
                           "  GIFT_CARD: {reauthorize: false, partial_capture: false}\n")
    data = demo_data.generate_demo(400, seed=3, start=DEMO_START, days=2)
    real_publish, real_settlements = cycle.publish, outbox.prepare_settlements

    def settled_before(url, t):
        real_settlements(url, t, rules)
        return real_publish(url, t)

    def settled_after(url, t):
        published = real_publish(url, t)
        real_settlements(url, t, rules)
        return published

    snapshots, prepared, settled = [], [], []
    variants = ("beside", "before", "after", "none")
    for variant in variants:
        monkeypatch.setattr(cycle, "publish", {"before": settled_before, "after": settled_after}.get(variant,
                                                                                                     real_publish))
        monkeypatch.setattr(outbox, "prepare_settlements",
                            real_settlements if variant == "beside" else lambda url, t, rules=None: {})
        if variant == "none":
            monkeypatch.setattr(outbox, "prepare_shipment_messages", lambda url, t, rules=None: {})
            monkeypatch.setattr(outbox, "prepare_payment_requests", lambda url, t, rules=None: {})
        with scratch_database(pg_admin_url, f"outbox_ahead_{variant}") as url:
            schema.upgrade(url)
            with db.transaction(url) as conn:
                demo_data.write_landing(conn, data)
            for t in ("2026-03-02T06:00:00Z", "2026-03-02T14:00:00Z", "2026-03-03T14:00:00Z", "2026-03-09T14:00:00Z"):
                s = cycle.run_cycle(url, t, rules=rules, keep_staging=True)
                stg = cycle.staging_schema(cycle.as_run_time(t))
                prepared.append(table_rows(url, f"SELECT to_regclass('{stg}.payment_requests_prepared') IS NOT NULL, "
                                                f"to_regclass('{stg}.shipment_messages_prepared') IS NOT NULL")[0])
                # the settlements' tables, and their marker taken by prepare_payment_requests (it used them)
                settled.append(table_rows(url, f"SELECT to_regclass('{stg}.money_events') IS NOT NULL, "
                                               f"to_regclass('{stg}.settlements_prepared') IS NOT NULL")[0])
            snapshots.append(snapshot_oms(url))
            made = dict(table_rows(url, "SELECT kind, count(*) FROM oms.payment_requests GROUP BY 1 UNION ALL "
                                        "SELECT kind, count(*) FROM oms.exceptions GROUP BY 1 UNION ALL "
                                        "SELECT 'MESSAGES', count(*) FROM oms.shipment_messages"))
    assert prepared == [(True, True)] * 12 + [(False, False)] * 4, prepared
    assert settled == [(True, False)] * 12 + [(False, False)] * 4, settled
    assert min(made.get(k, 0) for k in ("CAPTURE", "REFUND", "REAUTHORIZE", "AUTHORIZATION_EXPIRED")) > 0, made
    assert made["MESSAGES"] > 20, made
    for variant, snapshot in zip(variants[1:], snapshots[1:]):
        assert snapshot == snapshots[0], variant
