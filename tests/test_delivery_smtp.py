"""Customer emails delivered to a real local SMTP server (aiosmtpd): what arrives (recipients, subjects, bodies,
count), retries with backoff, permanent failures, an unreachable server, concurrent deliverers, and a rewind and
re-run of T that must not send anything twice."""
from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from backorders import cycle, db, delivery
from backorders import notifications as nt
from backorders.delivery import Connection
from backorders.rules import OutboxFile, load_rules
from tests.conftest import order_message, table_rows, utc

ROOT = Path(__file__).resolve().parent.parent
T = utc("2026-03-02T06:00:00Z")
SETTINGS = OutboxFile.model_validate({
    "delivery": {"max_attempts": 3, "backoff_seconds": 60, "backoff_factor": 2, "backoff_max_seconds": 3600},
    "email": {"sender": "Outdoor Shop <orders@shop.example>", "timeout_seconds": 5}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """aiosmtpd handler: keeps every message it accepts; refuses chosen recipients with a chosen reply."""

    def __init__(self):
        self.received: list[tuple[str, list[str], object]] = []
        self.refuse: dict[str, str] = {}
        self.data_delay = 0.0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        msg = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def ids(self) -> list[str]:
        return [m["Message-ID"] for _, _, m in self.received]


@pytest.fixture
def smtp():
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, Connection(host="127.0.0.1", port=port, conn_type="smtp",
                              extra={"disable_ssl": "true", "disable_tls": "true"})
    finally:
        controller.stop()


def add_email(url: str, n: int, recipient: str, language: str | None = None, kind: str = "BACKORDER_NOTICE",
              created_at: datetime = T) -> str:
    """A notification rendered from the real templates, as queue_notifications writes it."""
    order = {"order_id": f"O-{n}", "customer_name": "Dana Reyes", "ftc_rule": False, "ship_by": None}
    lines = [{"sku": "TENT", "product_name": "Tent", "qty_backordered": 1, "expected_by": "2026-03-12"}]
    mail = nt.render(kind, language, {"order": order, "lines": lines})
    key = nt.idempotency_key(kind, order["order_id"], created_at)
    nid = nt.notification_id(key)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("""INSERT INTO oms.notifications (notification_id, idempotency_key, order_id, kind, recipient,
                           subject, body, body_html, language, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                    (nid, key, order["order_id"], kind, recipient, mail["subject"], mail["txt"], mail["html"],
                     language, created_at))
    return nid


def rows(url):
    return table_rows(url, "SELECT recipient, status, attempts, sent_at IS NOT NULL, last_error, next_attempt_at "
                           "FROM oms.notifications ORDER BY recipient")


def test_pending_emails_arrive_once_with_text_html_and_their_message_id(smtp, migrated_url):
    box, conn = smtp
    url = migrated_url
    n1 = add_email(url, 1, "dana@example.com", "en_US")
    add_email(url, 2, "jonas@example.org", "de_DE")
    add_email(url, 3, "ana@example.net", None)
    figures = delivery.deliver_notifications(url, conn, SETTINGS)
    assert (figures["sent"], figures["failed"], figures["retry"], figures["unavailable"]) == (3, 0, 0, None)
    assert sorted(rcpt[0] for _, rcpt, _ in box.received) == ["ana@example.net", "dana@example.com",
                                                              "jonas@example.org"]
    by_to = {m["To"]: (sender, m) for sender, _, m in box.received}
    sender, en = by_to["dana@example.com"]
    assert sender == "orders@shop.example" and en["From"] == "Outdoor Shop <orders@shop.example>"
    assert en["Subject"] == "An item of your order O-1 is on backorder"
    assert en["Message-ID"] == f"<{n1}@shop.example>"
    assert en["X-Idempotency-Key"].startswith("BACKORDER_NOTICE/O-1/")
    assert en.get_body(("plain",)).get_content().count("1 x Tent (TENT), expected by 2026-03-12") == 1
    assert "<td>2026-03-12</td>" in en.get_body(("html",)).get_content()
    # German text template, no German HTML template: sent as German text only, never with the English HTML
    _, de = by_to["jonas@example.org"]
    assert de["Subject"] == "Ein Artikel Ihrer Bestellung O-2 ist nachbestellt"
    assert "voraussichtlich bis 2026-03-12" in de.get_content() and not de.is_multipart()
    assert de["Content-Language"] == "de-DE"
    assert [r[:4] for r in rows(url)] == [("ana@example.net", "SENT", 1, True), ("dana@example.com", "SENT", 1, True),
                                          ("jonas@example.org", "SENT", 1, True)]
    # a task retry or a second delivery sends nothing again
    assert delivery.deliver_notifications(url, conn, SETTINGS)["sent"] == 0
    assert len(box.received) == 3


def test_temporary_refusal_is_retried_with_backoff_then_fails(smtp, migrated_url):
    box, conn = smtp
    url = migrated_url
    box.refuse["later@example.com"] = "451 4.3.2 Try again later"
    add_email(url, 1, "later@example.com")
    add_email(url, 2, "fine@example.com")
    t0 = datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
    f = delivery.deliver_notifications(url, conn, SETTINGS, now=t0)
    assert (f["sent"], f["retry"], f["waiting"]) == (1, 1, 1)
    assert delivery.needs_retry(f).startswith("1 row(s) failed temporarily")
    later = rows(url)[1]
    assert later[:4] == ("later@example.com", "PENDING", 1, False)
    assert "451" in later[4] and later[5] == t0 + timedelta(seconds=60)
    # not before the backoff has passed
    assert delivery.deliver_notifications(url, conn, SETTINGS, now=t0 + timedelta(seconds=30))["retry"] == 0
    f = delivery.deliver_notifications(url, conn, SETTINGS, now=t0 + timedelta(seconds=61))
    assert f["retry"] == 1 and rows(url)[1][2] == 2
    assert rows(url)[1][5] == t0 + timedelta(seconds=61 + 120)               # the wait doubles
    f = delivery.deliver_notifications(url, conn, SETTINGS, now=t0 + timedelta(seconds=61 + 121))
    assert (f["failed"], f["waiting"]) == (1, 0) and delivery.needs_retry(f) is None
    status, attempts, error = table_rows(url, "SELECT status, attempts, last_error FROM oms.notifications "
                                              "WHERE recipient = 'later@example.com'")[0]
    assert (status, attempts) == ("FAILED", 3) and "451 4.3.2 Try again later" in error and "giving up" in error
    # a FAILED email is never picked up again, even once the server would take it
    box.refuse.clear()
    assert delivery.deliver_notifications(url, conn, SETTINGS, now=t0 + timedelta(days=1))["sent"] == 0
    assert [rcpt for _, rcpt, _ in box.received] == [["fine@example.com"]]


def test_permanent_refusal_fails_at_once(smtp, migrated_url):
    box, conn = smtp
    box.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    add_email(migrated_url, 1, "nobody@example.com")
    f = delivery.deliver_notifications(migrated_url, conn, SETTINGS)
    assert (f["failed"], f["retry"]) == (1, 0)
    assert rows(migrated_url)[0][:3] == ("nobody@example.com", "FAILED", 1)
    assert "550 5.1.1 No such user" in rows(migrated_url)[0][4]


def test_unreachable_server_attempts_nothing(migrated_url):
    add_email(migrated_url, 1, "dana@example.com")
    down = Connection(host="127.0.0.1", port=free_port(), extra={"disable_ssl": True, "disable_tls": True})
    f = delivery.deliver_notifications(migrated_url, down, SETTINGS)
    assert f["unavailable"].startswith("SMTP server 127.0.0.1:") and f["sent"] == 0
    assert delivery.needs_retry(f).startswith("server unavailable")
    assert rows(migrated_url)[0][:3] == ("dana@example.com", "PENDING", 0)
    # without a connection nothing is tried
    assert "skipped" in delivery.deliver_notifications(migrated_url, None, SETTINGS)


def test_timeout_is_retried_and_carries_the_same_message_id(smtp, migrated_url):
    box, conn = smtp
    box.data_delay = 1.5
    nid = add_email(migrated_url, 1, "slow@example.com")
    quick = OutboxFile.model_validate({**SETTINGS.model_dump(), "email": {"sender": "orders@shop.example",
                                                                          "timeout_seconds": 0.5}})
    t0 = datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
    f = delivery.deliver_notifications(migrated_url, conn, quick, now=t0)
    assert f["retry"] == 1 and "timed out" in rows(migrated_url)[0][4]
    box.data_delay = 0
    f = delivery.deliver_notifications(migrated_url, conn, quick, now=t0 + timedelta(minutes=5))
    assert f["sent"] == 1 and rows(migrated_url)[0][:3] == ("slow@example.com", "SENT", 2)
    time.sleep(1.2)
    # whether the first copy arrived after we gave up on it is up to the server (this one dropped it with the
    # connection); every copy that arrives carries the same Message-ID, so a receiver can drop a second one
    assert box.ids() and set(box.ids()) == {f"<{nid}@shop.example>"}


def test_two_deliverers_at_once_send_every_email_once(smtp, migrated_url):
    box, conn = smtp
    ids = [add_email(migrated_url, n, f"buyer{n}@example.com") for n in range(40)]
    results = []

    def run():
        results.append(delivery.deliver_notifications(migrated_url, conn, SETTINGS))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(r["sent"] for r in results) == 40
    assert sorted(box.ids()) == sorted(f"<{i}@shop.example>" for i in ids)
    assert table_rows(migrated_url, "SELECT status, attempts, count(*) FROM oms.notifications GROUP BY 1, 2") == [
        ("SENT", 1, 40)]


# ----------------------------------------------------------------------------------------------- with the cycle
def _rules(tmp_path, window_days):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "include" / "rules", folder)
    (folder / "outbox.yaml").write_text(f"delivery: {{window_days: {window_days}}}\n"
                                        "email: {sender: 'Outdoor Shop <orders@shop.example>'}\n")
    return load_rules(folder)


def test_rewind_and_rerun_of_t_never_sends_an_email_twice(smtp, landing, migrated_url, tmp_path):
    box, conn = smtp
    url = migrated_url
    rules = _rules(tmp_path, 100000)
    landing.message(order_message("R1", lines=[("SKU-A", 1, None), ("SKU-B", 1, True)], email="dana@example.com"),
                    "2026-03-02T05:00:00Z")
    landing.message(order_message("R2", lines=[("SKU-C", 2, False)], email="jonas@example.org"),
                    "2026-03-02T05:10:00Z")
    landing.stock([("WH_PDX", "SKU-A", 5)], "2026-03-02T05:00:00Z")
    cycle.run_cycle(url, T, rules=rules)
    assert delivery.deliver_notifications(url, conn, rules.outbox)["sent"] == 2
    first = sorted(box.ids())
    assert sorted((m["To"], m["Subject"]) for _, _, m in box.received) == [
        ("dana@example.com", "An item of your order R1 is on backorder"),
        ("jonas@example.org", "Items of your order R2 were cancelled")]
    sent = table_rows(url, "SELECT notification_id, status, attempts, sent_at FROM oms.notifications ORDER BY 1")

    # run T again: the rewind keeps the delivered rows, the re-run's INSERT ... ON CONFLICT DO NOTHING keeps them
    cycle.run_cycle(url, T, rules=rules)
    assert table_rows(url, "SELECT notification_id, status, attempts, sent_at FROM oms.notifications ORDER BY 1") == sent
    assert table_rows(url, "SELECT count(*) FROM oms.notification_lines") == [(2,)]
    assert delivery.deliver_notifications(url, conn, rules.outbox)["sent"] == 0
    assert sorted(box.ids()) == first and len(box.received) == 2

    # a later run with a new backorder: only its email goes out
    landing.message(order_message("R3", lines=[("SKU-B", 1, True)], email="ana@example.net"), "2026-03-02T09:00:00Z")
    cycle.run_cycle(url, "2026-03-02T14:00:00Z", rules=rules)
    assert delivery.deliver_notifications(url, conn, rules.outbox)["sent"] == 1
    assert box.received[-1][1] == ["ana@example.net"]
    assert len(set(box.ids())) == 3


def test_backfill_of_an_old_run_sends_nothing(smtp, landing, migrated_url, tmp_path):
    box, conn = smtp
    url = migrated_url
    old = (datetime.now(timezone.utc) - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    landing.message(order_message("B1", origin=(old - timedelta(hours=2)).isoformat(),
                                  lines=[("SKU-B", 1, True)]), (old - timedelta(hours=1)).isoformat())
    cycle.run_cycle(url, old, rules=_rules(tmp_path, 2))
    assert table_rows(url, "SELECT kind, status FROM oms.notifications") == [("BACKORDER_NOTICE", "SUPPRESSED")]
    assert delivery.deliver_notifications(url, conn, SETTINGS)["sent"] == 0
    assert box.received == []


# ----------------------------------------------------------------------------------------------- connections
def test_connection_fields_read_like_airflow_reads_them(monkeypatch, tmp_path):
    uri = "smtp://mailer:s%40cret@mail.example:2525?disable_ssl=true&disable_tls=false&from_email=shop%40example.com"
    monkeypatch.setenv("AIRFLOW_CONN_BACKORDERS_SMTP", uri)
    ours = delivery.connection_from_env("backorders_smtp")
    assert ours == Connection("mail.example", 2525, "mailer", "s@cret", None, "smtp",
                              {"disable_ssl": "true", "disable_tls": "false", "from_email": "shop@example.com"})
    sender = delivery.SmtpSender(ours, SETTINGS)
    assert sender.sender == "shop@example.com"                    # the connection's from_email wins over outbox.yaml
    # the DAG task reads it with the SMTP provider's hook: the same fields
    import importlib.util

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    spec = importlib.util.spec_from_file_location("dag_module", ROOT / "dags" / "backorder_cycle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._connection("backorders_smtp", SmtpHook) == ours
    assert mod._connection("backorders_nothing_here", SmtpHook) is None
    as_json = ('{"conn_type": "smtp", "host": "mail.example", "port": 2525, "login": "mailer", "password": "s@cret", '
               '"extra": {"disable_ssl": "true", "disable_tls": "false", "from_email": "shop@example.com"}}')
    assert Connection.from_airflow_value(as_json) == ours
