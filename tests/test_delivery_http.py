"""Payment requests posted to a real local HTTP server: JSON body, Idempotency-Key header, responses recorded, and
its failures: 5xx and timeouts retried with backoff, 4xx failed at once (408/409/425/429 retried, Retry-After
honoured), an unreachable service, concurrent dispatchers, a failed re-authorization, and a re-run of T."""
from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backorders import cycle, db, delivery
from backorders.delivery import Connection
from backorders.outbox import payment_request_id
from backorders.rules import OutboxFile, load_rules
from tests.conftest import order_message, table_rows, utc
from tests.test_delivery_smtp import smtp  # noqa: F401  (the local SMTP server fixture)

ROOT = Path(__file__).resolve().parent.parent
T = utc("2026-03-02T06:00:00Z")
T0 = datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
SETTINGS = OutboxFile.model_validate({
    "delivery": {"max_attempts": 3, "backoff_seconds": 60, "backoff_factor": 2, "backoff_max_seconds": 3600},
    "payments": {"endpoint": "/v1/payment-requests", "connect_timeout_seconds": 2, "read_timeout_seconds": 5}})


class PaymentService:
    """Answers each post with the next scripted reply for its Idempotency-Key (default 201), keeps every request."""

    def __init__(self):
        self.posts: list[dict] = []
        self.script: dict[str, list[tuple]] = {}
        self.lock = threading.Lock()

    def reply(self, key: str) -> tuple:
        with self.lock:
            queue = self.script.get(key) or []
            return queue.pop(0) if queue else (201, {"status": "accepted", "key": key}, 0.0, {})

    def keys(self) -> list[str]:
        return [p["headers"].get("Idempotency-Key") for p in self.posts]


@pytest.fixture
def service():
    svc = PaymentService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            key = self.headers.get("Idempotency-Key")
            with svc.lock:
                svc.posts.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            status, answer, delay, headers = svc.reply(key)
            time.sleep(delay)
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):      # the client gave up (timeout)
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield svc, Connection(host="127.0.0.1", port=server.server_address[1], conn_type="http", login="oms",
                              password="s3cret", extra={"headers": {"X-Client": "backorders"}})
    finally:
        server.shutdown()
        server.server_close()


def add_request(url: str, n: int, kind: str = "CAPTURE", order_id: str | None = None, created_at: datetime = T) -> str:
    order_id = order_id or f"O-{n}"
    key = f"{kind}/SR-{order_id}-1" if kind == "CAPTURE" else f"{kind}/{order_id}/{created_at.isoformat()}"
    rid = payment_request_id(key)
    body = {"payment_request_id": rid, "idempotency_key": key, "kind": kind, "order_id": order_id,
            "amount": f"{10 + n}.50", "tax_amount": "0.80", "currency": "USD", "payment_method": "CREDIT_CARD"}
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("""INSERT INTO oms.payment_requests (payment_request_id, idempotency_key, order_id, kind, amount,
                           currency, created_at, body) VALUES (%s, %s, %s, %s, %s, 'USD', %s, %s)""",
                    (rid, key, order_id, kind, f"{10 + n}.50", created_at, json.dumps(body)))
    return key


def state(url: str) -> list[tuple]:
    return table_rows(url, "SELECT idempotency_key, status, attempts, sent_at IS NOT NULL, response_status, "
                           "last_error, next_attempt_at FROM oms.payment_requests ORDER BY idempotency_key")


def responses(url: str) -> list[tuple]:
    return table_rows(url, "SELECT r.idempotency_key, s.attempt, s.outcome, s.http_status FROM oms.payment_responses s "
                           "JOIN oms.payment_requests r USING (payment_request_id) ORDER BY 1, 2")


def test_accepted_requests_are_posted_once_with_body_key_and_auth(service, migrated_url):
    svc, conn = service
    url = migrated_url
    k1, k2 = add_request(url, 1), add_request(url, 2, kind="REFUND")
    f = delivery.dispatch_payments(url, conn, SETTINGS)
    assert (f["sent"], f["failed"], f["retry"]) == (2, 0, 0)
    assert f["url"] == f"http://127.0.0.1:{conn.port}/v1/payment-requests"
    assert sorted(svc.keys()) == sorted([k1, k2])
    post = next(p for p in svc.posts if p["headers"]["Idempotency-Key"] == k1)
    assert post["path"] == "/v1/payment-requests"
    assert post["headers"]["Content-Type"] == "application/json" and post["headers"]["X-Client"] == "backorders"
    assert post["headers"]["Authorization"] == "Basic " + base64.b64encode(b"oms:s3cret").decode()
    stored = table_rows(url, f"SELECT body FROM oms.payment_requests WHERE idempotency_key = '{k1}'")[0][0]
    assert post["body"] == stored and post["body"]["amount"] == "11.50"
    assert [s[:5] for s in state(url)] == [(k1, "SENT", 1, True, 201), (k2, "SENT", 1, True, 201)]
    assert json.loads(table_rows(url, f"SELECT response FROM oms.payment_requests WHERE idempotency_key = '{k1}'")[0][0]) \
        == {"status": "accepted", "key": k1}
    assert responses(url) == [(k1, 1, "SENT", 201), (k2, 1, "SENT", 201)]
    # a task retry or a second dispatcher posts nothing again
    assert delivery.dispatch_payments(url, conn, SETTINGS)["sent"] == 0 and len(svc.posts) == 2


def test_server_errors_are_retried_with_the_same_key_and_body_until_accepted(service, migrated_url):
    svc, conn = service
    url = migrated_url
    key = add_request(url, 1)
    svc.script[key] = [(500, {"error": "boom"}, 0, {}), (502, {"error": "bad gateway"}, 0, {})]
    f = delivery.dispatch_payments(url, conn, SETTINGS, now=T0)
    assert f["retry"] == 1 and delivery.needs_retry(f)
    assert state(url)[0][1:3] == ("PENDING", 1) and state(url)[0][6] == T0 + timedelta(seconds=60)
    assert "HTTP 500" in state(url)[0][5] and "boom" in state(url)[0][5]
    assert delivery.dispatch_payments(url, conn, SETTINGS, now=T0 + timedelta(seconds=59))["retry"] == 0
    delivery.dispatch_payments(url, conn, SETTINGS, now=T0 + timedelta(seconds=60))
    assert state(url)[0][6] == T0 + timedelta(seconds=60 + 120)
    f = delivery.dispatch_payments(url, conn, SETTINGS, now=T0 + timedelta(seconds=180))
    assert f["sent"] == 1 and state(url)[0][1:5] == ("SENT", 3, True, 201)
    assert responses(url) == [(key, 1, "RETRY", 500), (key, 2, "RETRY", 502), (key, 3, "SENT", 201)]
    assert svc.keys() == [key] * 3 and all(p["body"] == svc.posts[0]["body"] for p in svc.posts)


def test_client_errors_fail_at_once_conflicts_and_rate_limits_wait(service, migrated_url):
    svc, conn = service
    url = migrated_url
    bad, busy, limited = add_request(url, 1), add_request(url, 2), add_request(url, 3)
    svc.script[bad] = [(422, {"error": "amount exceeds the authorization"}, 0, {})]
    svc.script[busy] = [(409, {"error": "a request with this key is in progress"}, 0, {})]
    svc.script[limited] = [(429, {"error": "slow down"}, 0, {"Retry-After": "900"})]
    f = delivery.dispatch_payments(url, conn, SETTINGS, now=T0)
    assert (f["failed"], f["retry"]) == (1, 2)
    got = {s[0]: s for s in state(url)}
    assert got[bad][1:3] == ("FAILED", 1) and "HTTP 422" in got[bad][5] and "exceeds" in got[bad][5]
    assert got[busy][1:3] == ("PENDING", 1) and got[busy][6] == T0 + timedelta(seconds=60)
    assert got[limited][1:3] == ("PENDING", 1) and got[limited][6] == T0 + timedelta(seconds=900)  # Retry-After
    f = delivery.dispatch_payments(url, conn, SETTINGS, now=T0 + timedelta(seconds=61))
    assert f["sent"] == 1 and {s[0]: s[1] for s in state(url)}[limited] == "PENDING"
    assert delivery.dispatch_payments(url, conn, SETTINGS, now=T0 + timedelta(seconds=901))["sent"] == 1
    assert [s[1] for s in state(url)] == ["FAILED", "SENT", "SENT"]


def test_timeouts_are_retried_then_fail_after_max_attempts(service, migrated_url):
    svc, conn = service
    url = migrated_url
    key = add_request(url, 1)
    svc.script[key] = [(201, {}, 1.0, {})] * 3
    slow = Connection(**{**conn.__dict__, "extra": {"timeout": "0.3"}})     # extra timeout: the read timeout
    for n, at in enumerate([T0, T0 + timedelta(seconds=60), T0 + timedelta(seconds=180)], 1):
        f = delivery.dispatch_payments(url, slow, SETTINGS, now=at)
        assert f["retry" if n < 3 else "failed"] == 1
    key_, status, attempts, sent, code, error, next_at = state(url)[0]
    assert (status, attempts, sent, code, next_at) == ("FAILED", 3, False, None, None)
    assert error.startswith("timeout: ") and "giving up" in error
    assert responses(url) == [(key, 1, "RETRY", None), (key, 2, "RETRY", None), (key, 3, "FAILED", None)]
    # the service saw every attempt, always with the same key: it can tell them apart from new requests
    assert svc.keys() == [key] * 3


def test_unreachable_service_attempts_nothing(migrated_url):
    import socket

    add_request(migrated_url, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = delivery.dispatch_payments(migrated_url, Connection(host="127.0.0.1", port=port), SETTINGS)
    assert f["unavailable"] and "payment service http://127.0.0.1" in f["unavailable"] and f["sent"] == 0
    assert state(migrated_url)[0][1:3] == ("PENDING", 0) and responses(migrated_url) == []


def test_without_a_connection_requests_stay_pending_for_the_service_to_collect(migrated_url):
    add_request(migrated_url, 1)
    f = delivery.dispatch_payments(migrated_url, None, SETTINGS)
    assert "stay PENDING" in f["skipped"] and delivery.needs_retry(f) is None
    assert state(migrated_url)[0][1:3] == ("PENDING", 0)


def test_two_dispatchers_post_every_request_once(service, migrated_url):
    svc, conn = service
    keys = [add_request(migrated_url, n) for n in range(30)]
    results = []
    threads = [threading.Thread(target=lambda: results.append(delivery.dispatch_payments(migrated_url, conn, SETTINGS)))
               for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(r["sent"] for r in results) == 30
    assert sorted(svc.keys()) == sorted(keys)
    assert table_rows(migrated_url, "SELECT status, attempts, count(*) FROM oms.payment_requests GROUP BY 1, 2") == [
        ("SENT", 1, 30)]


def test_failed_reauthorization_gives_the_order_its_previous_authorization_back(service, migrated_url):
    svc, conn = service
    url = migrated_url
    origin = utc("2026-03-01T10:00:00Z")
    reauth_at = utc("2026-03-08T14:00:00Z")
    with db.transaction(url) as c, c.cursor() as cur:
        cur.execute("""INSERT INTO oms.orders (order_id, store, origin_date, payment_method, last_authorized_at,
                           priority_tier, status, message_id, content_hash, created_run_at, updated_at)
                       VALUES ('O-9', 'US_WEB', %s, 'CREDIT_CARD', %s, 100, 'BACKORDERED', 1, 'h', %s, %s)""",
                    (origin, reauth_at, origin, origin))
    key = add_request(url, 9, kind="REAUTHORIZE", order_id="O-9", created_at=reauth_at)
    svc.script[key] = [(402, {"error": "card expired"}, 0, {})]
    assert delivery.dispatch_payments(url, conn, SETTINGS)["failed"] == 1
    assert table_rows(url, "SELECT last_authorized_at FROM oms.orders WHERE order_id = 'O-9'") == [(origin,)]


def test_payment_urls_follow_the_connection():
    s = SETTINGS
    assert delivery.payments_url(Connection(host="pay.internal", port=8000), s) == \
        "http://pay.internal:8000/v1/payment-requests"
    assert delivery.payments_url(Connection(host="pay.internal", schema="https"), s) == \
        "https://pay.internal/v1/payment-requests"
    assert delivery.payments_url(Connection(host="https://pay.example/api/", extra={"endpoint": "requests"}), s) == \
        "https://pay.example/api/requests"
    # the form .env.example documents for AIRFLOW_CONN_BACKORDERS_PAYMENTS
    c = Connection.from_airflow_value("http://payments.internal:8000/?timeout=10")
    assert (c.host, c.port, c.extra) == ("payments.internal", 8000, {"timeout": "10"})
    assert delivery.HttpPoster(c, s).timeout == (2.0, 10.0)


def test_cycle_requests_reach_the_service_once_even_after_a_rerun_of_t(service, landing, migrated_url, tmp_path):
    svc, conn = service
    url = migrated_url
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "include" / "rules", folder)
    (folder / "outbox.yaml").write_text("delivery: {window_days: 100000}\n")
    rules = load_rules(folder)
    landing.message(order_message("P1", lines=[("SKU-A", 2, None)]), "2026-03-02T05:00:00Z")
    landing.message(order_message("P2", lines=[("SKU-C", 3, False)]), "2026-03-02T05:10:00Z")
    landing.stock([("WH_PDX", "SKU-A", 5), ("WH_PDX", "SKU-C", 1)], "2026-03-02T05:00:00Z")
    cycle.run_cycle(url, T, rules=rules)
    assert delivery.dispatch_payments(url, conn, rules.outbox)["sent"] == 3
    assert sorted(svc.keys()) == ["CAPTURE/SR-P1-1", "CAPTURE/SR-P2-1",
                                  "REFUND/P2/P2-1/2026-03-02T06:00:00+00:00/NOT_BACKORDERABLE"]
    before = table_rows(url, "SELECT payment_request_id, status, attempts, sent_at FROM oms.payment_requests ORDER BY 1")
    cycle.run_cycle(url, T, rules=rules)                    # rewind and re-run T: the delivered rows stay as they are
    assert table_rows(url, "SELECT payment_request_id, status, attempts, sent_at FROM oms.payment_requests "
                           "ORDER BY 1") == before
    assert delivery.dispatch_payments(url, conn, rules.outbox)["sent"] == 0 and len(svc.posts) == 3


# ----------------------------------------------------------------------------------------------- under Airflow
@pytest.mark.e2e
def test_dag_delivers_through_the_airflow_connections_once(service, smtp, landing, migrated_url, tmp_path):
    """backorder_cycle under Airflow (dag.test) at a recent T: the deliver tasks read backorders_smtp and
    backorders_payments with the providers' hooks and deliver; running T again delivers nothing more."""
    import os
    import subprocess
    import sys

    from backorders import embedded_pg
    from backorders.cli import airflow_env

    svc, http = service
    box, mail = smtp
    url = migrated_url
    t = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    landing.message(order_message("E1", origin=(t - timedelta(hours=3)).isoformat(),
                                  lines=[("SKU-A", 1, None), ("SKU-B", 1, True)], email="dana@example.com"),
                    (t - timedelta(hours=2)).isoformat())
    landing.stock([("WH_PDX", "SKU-A", 3)], (t - timedelta(hours=2)).isoformat())
    env = airflow_env({k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    env |= {"AIRFLOW_CONN_BACKORDERS_DB": embedded_pg.airflow_conn_json(url),
            "AIRFLOW_CONN_BACKORDERS_SMTP": f"smtp://{mail.host}:{mail.port}?disable_ssl=true&disable_tls=true"
                                            "&from_email=orders%40shop.example",
            "AIRFLOW_CONN_BACKORDERS_PAYMENTS": f"http://{http.host}:{http.port}/?endpoint=%2Fv1%2Fpayment-requests"}
    for _ in range(2):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_dag.py"), t.isoformat()], env=env,
                              capture_output=True, text=True, timeout=900)
        (tmp_path / "dag.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"see {tmp_path / 'dag.log'}: " + proc.stdout[-3000:]
        assert [(m["To"], m["From"]) for _, _, m in box.received] == [
            ("dana@example.com", "orders@shop.example")]
        assert svc.keys() == ["CAPTURE/SR-E1-1"] and svc.posts[0]["path"] == "/v1/payment-requests"
    assert table_rows(url, "SELECT kind, status, attempts FROM oms.notifications") == [("BACKORDER_NOTICE", "SENT", 1)]
    assert table_rows(url, "SELECT kind, status, attempts FROM oms.payment_requests") == [("CAPTURE", "SENT", 1)]
    assert table_rows(url, "SELECT status FROM oms.shipment_messages") == [("PENDING",)]     # no folder configured
