"""Delivery of the outboxes: customer emails over SMTP, payment requests over HTTP, shipment messages to a folder.

Each deliverer claims one due PENDING row at a time with ``SELECT ... FOR UPDATE SKIP LOCKED``, delivers it, and
records the outcome (status, attempts, error, next attempt) in the same transaction, which it then commits. So:

* a row is SENT only once the server accepted it, and a SENT row is never claimed again: a task retry, a second
  deliverer running at the same time, or a re-run of the cycle does not send it twice;
* the one window left is a crash after the server accepted and before the commit: the row stays PENDING and is
  sent again (at least once, never silently lost). Receivers can drop that duplicate by its key: the email's
  Message-ID, the payment request's Idempotency-Key header, the shipment message's JSON-RPC id.

Failures: a permanent one (SMTP 5xx, HTTP 4xx other than 408/409/425/429) ends the row FAILED at once; a temporary
one (SMTP 4xx, a dropped connection, a timeout, HTTP 5xx/408/409/425/429) leaves it PENDING with next_attempt_at
(exponential backoff, outbox.yaml) until max_attempts, then FAILED. A server that cannot be reached at all is not
an attempt of any row: the deliverer stops and reports it (the Airflow task then fails and is retried).

No Airflow import here (the CLI, the tests and in-process runs use this module without Airflow): the DAG's tasks read
the connections backorders_smtp and backorders_payments and pass their fields as a :class:`Connection`. SMTP goes
through smtplib with the connection interpreted exactly as the Airflow SMTP provider's SmtpHook does (extras
disable_ssl, disable_tls, timeout, ssl_context, from_email); the hook itself is not used to send because it builds
HTML-only messages (no text part, no Message-ID of ours) and retries a failed send internally up to retry_limit
times, which can deliver a message twice behind the outbox's back. See docs/outboxes.md.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate, parseaddr, parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from backorders import db
from backorders.rules import OutboxFile, load_outbox
from backorders.settings import PAYMENTS_CONN_ID, PROJECT_ROOT, SMTP_CONN_ID, TEMPLATES_DIR

log = logging.getLogger(__name__)

SENT, RETRY, FAILED = "SENT", "RETRY", "FAILED"
_RETRY_STATUSES = {408, 409, 425, 429}
_MAX_BODY = 10_000


# ----------------------------------------------------------------------------------------------- connections
@dataclass(frozen=True)
class Connection:
    """The fields of an Airflow connection (host, port, login, password, schema, conn_type, extra)."""
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    conn_type: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_airflow_value(cls, value: str) -> "Connection":
        """From an AIRFLOW_CONN_* value: a URI (smtp://user:pass@host:port?disable_ssl=true) or JSON."""
        value = value.strip()
        if value.startswith("{"):
            c = json.loads(value)
            extra = c.get("extra") or {}
            if isinstance(extra, str):
                extra = json.loads(extra) if extra.strip() else {}
            return cls(c.get("host"), int(c["port"]) if c.get("port") else None, c.get("login"), c.get("password"),
                       c.get("schema"), c.get("conn_type"), dict(extra))
        parts = urlsplit(value)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if "__extra__" in query:
            extra = json.loads(query.pop("__extra__"))
        else:
            extra = query
        return cls(unquote(parts.hostname or "") or None, parts.port,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None,
                   unquote(parts.path.lstrip("/")) or None, parts.scheme.replace("-", "_") or None, extra)


def connection_from_env(conn_id: str) -> Connection | None:
    """The connection conn_id from the environment variable AIRFLOW_CONN_<CONN_ID>, or None if it is not set."""
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}", "").strip()
    return Connection.from_airflow_value(value) if value else None


def _flag(value) -> bool:
    """A connection extra as a boolean ("true", "1", "yes", true; anything else is false)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------- the claim loop
@dataclass
class Outcome:
    status: str                      # SENT, RETRY or FAILED
    error: str | None = None
    http_status: int | None = None
    body: str | None = None
    elapsed_ms: int | None = None
    retry_after: float | None = None  # seconds the server asked us to wait


class Unavailable(Exception):
    """The server cannot be reached (or refuses our login or sender): no row was attempted."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _drain(url: str, table: str, id_col: str, columns: str, send: Callable[[dict], Outcome], settings: OutboxFile,
           now: datetime | None, limit: int | None,
           after: Callable | None = None) -> dict:
    """Deliver due PENDING rows of oms.<table> one by one until none is left (or limit): claim (FOR UPDATE SKIP
    LOCKED), send, record the outcome, commit."""
    figures = {"sent": 0, "failed": 0, "retry": 0, "unavailable": None}
    delivery = settings.delivery
    conn = db.connect(url)
    try:
        done = 0
        while limit is None or done < limit:
            moment = now or utcnow()
            with conn.cursor() as cur:
                cur.execute(f"""
                    SELECT {columns} FROM oms.{table}
                    WHERE status = 'PENDING' AND (next_attempt_at IS NULL OR next_attempt_at <= %s)
                    ORDER BY created_at, {id_col} LIMIT 1 FOR UPDATE SKIP LOCKED""", (moment,))
                found = cur.fetchone()
                if found is None:
                    conn.rollback()
                    break
                row = dict(zip([d[0] for d in cur.description], found))
                try:
                    outcome = send(row)
                except Unavailable as exc:
                    conn.rollback()
                    figures["unavailable"] = str(exc)
                    log.warning("%s: delivery stopped, server unavailable: %s", table, exc)
                    break
                moment = now or utcnow()
                attempt = row["attempts"] + 1
                status = outcome.status
                if status == RETRY and attempt >= delivery.max_attempts:
                    status = FAILED
                    outcome.error = f"{outcome.error} (attempt {attempt} of {delivery.max_attempts}: giving up)"
                wait = delivery.backoff(attempt)
                if outcome.retry_after:
                    wait = max(wait, min(outcome.retry_after, 86400.0))
                next_at = moment + timedelta(seconds=wait) if status == RETRY else None
                cur.execute(f"""
                    UPDATE oms.{table} SET status = %(status)s, attempts = %(attempt)s,
                        sent_at = CASE WHEN %(status)s = 'SENT' THEN %(moment)s ELSE sent_at END,
                        last_error = coalesce(%(error)s, last_error), next_attempt_at = %(next_at)s
                    WHERE {id_col} = %(id)s""",
                            {"status": "PENDING" if status == RETRY else status, "attempt": attempt, "moment": moment,
                             "error": outcome.error, "next_at": next_at, "id": row[id_col]})
                if after is not None:
                    after(cur, row, outcome, status, attempt, moment)
            conn.commit()
            done += 1
            figures[{SENT: "sent", FAILED: "failed", RETRY: "retry"}[status]] += 1
            if status != SENT:
                log.warning("%s %s: %s (attempt %d) %s", table, row[id_col], status, attempt, outcome.error)
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*), min(next_attempt_at) FROM oms.{table} "
                        "WHERE status = 'PENDING' AND attempts > 0")
            waiting, next_at = cur.fetchone()
        conn.rollback()
        figures["waiting"] = int(waiting)
        figures["next_attempt_at"] = next_at.isoformat() if next_at else None
    finally:
        conn.close()
    return figures


# ----------------------------------------------------------------------------------------------- SMTP
@lru_cache(maxsize=256)
def _html_fits(kind: str, language: str | None) -> bool:
    """Whether the stored HTML body is in the email's language: its template is at least as specific as the text
    one's (a German text body with only the English HTML template is sent as text only, never in two languages)."""
    from backorders.notifications import template_names

    folder = TEMPLATES_DIR / "email"

    def rank(part: str) -> int:
        names = template_names(kind, language, part, folder)
        return next((i for i, n in enumerate(names) if (folder / n).exists()), len(names))

    return rank("html") <= rank("txt")


def build_email(row: dict, sender: str) -> EmailMessage:
    """The MIME message of one oms.notifications row: text, and HTML as an alternative where it fits the language.
    Message-ID is derived from the notification id, so every attempt carries the same one."""
    msg = EmailMessage()
    domain = parseaddr(sender)[1].rpartition("@")[2] or "backorders.invalid"
    msg["From"] = sender
    msg["To"] = row["recipient"]
    msg["Subject"] = row["subject"]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{row['notification_id']}@{domain}>"
    msg["X-Idempotency-Key"] = row["idempotency_key"]
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(row["body"])
    if row.get("body_html") and _html_fits(row["kind"], row.get("language")):
        msg.add_alternative(row["body_html"], subtype="html")
    if row.get("language"):                      # after set_content, which drops Content-* headers
        msg["Content-Language"] = row["language"].replace("_", "-")
    return msg


class SmtpSender:
    """Sends rows of oms.notifications through one SMTP session, opened on first use and reopened after a drop.

    The connection is read like the Airflow SMTP provider reads it: SSL unless extra disable_ssl, else STARTTLS
    unless extra disable_tls; login when login and password are set; extra timeout (seconds); extra ssl_context
    "none" skips certificate checks; From: extra from_email, else outbox.yaml email.sender."""

    def __init__(self, conn: Connection, settings: OutboxFile):
        self.conn = conn
        self.extra = conn.extra or {}
        self.timeout = float(self.extra.get("timeout") or settings.email.timeout_seconds)
        self.sender = self.extra.get("from_email") or settings.email.sender
        self.envelope_from = parseaddr(self.sender)[1]
        self.client: smtplib.SMTP | None = None

    def _context(self):
        return None if str(self.extra.get("ssl_context") or "default").lower() == "none" else ssl.create_default_context()

    def open(self) -> None:
        c = self.conn
        where = f"{c.host}:{c.port or 'default port'}"
        try:
            if not _flag(self.extra.get("disable_ssl", False)):
                client = smtplib.SMTP_SSL(c.host or "", c.port or 0, timeout=self.timeout, context=self._context())
            else:
                client = smtplib.SMTP(c.host or "", c.port or 0, timeout=self.timeout)
                if not _flag(self.extra.get("disable_tls", False)):
                    client.starttls(context=self._context())
                    client.ehlo()
            if c.login and c.password:
                client.login(c.login, c.password)
        except (OSError, smtplib.SMTPException) as exc:
            raise Unavailable(f"SMTP server {where}: {type(exc).__name__}: {exc}") from exc
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (OSError, smtplib.SMTPException):
                self.client.close()
            self.client = None

    def _ready(self) -> smtplib.SMTP:
        if self.client is not None:
            try:
                if self.client.noop()[0] == 250:
                    return self.client
            except (OSError, smtplib.SMTPException):
                pass
            self.client.close()
            self.client = None
        self.open()
        return self.client

    def __call__(self, row: dict) -> Outcome:
        try:
            msg = build_email(row, self.sender)
        except (ValueError, TypeError) as exc:
            return Outcome(FAILED, f"cannot build the message: {exc}")
        client = self._ready()
        try:
            client.send_message(msg, from_addr=self.envelope_from, to_addrs=[row["recipient"]])
            return Outcome(SENT)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return Outcome(RETRY if 400 <= code < 500 else FAILED, f"recipient refused: {code} {_text(text)}")
        except smtplib.SMTPNotSupportedError as exc:         # e.g. a non-ASCII address the server cannot take
            return Outcome(FAILED, f"{type(exc).__name__}: {exc}")
        except smtplib.SMTPSenderRefused as exc:
            raise Unavailable(f"sender {exc.sender} refused: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except smtplib.SMTPResponseException as exc:
            return Outcome(RETRY if 400 <= exc.smtp_code < 500 else FAILED,
                           f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}")
        except (OSError, smtplib.SMTPException) as exc:      # dropped connection, timeout: may or may not have arrived
            self.client.close()
            self.client = None
            return Outcome(RETRY, f"{type(exc).__name__}: {exc}")


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def deliver_notifications(url: str, smtp: Connection | None, settings: OutboxFile | None = None, *,
                          now: datetime | None = None, limit: int | None = None) -> dict:
    """Send the due PENDING customer emails of oms.notifications through the SMTP server of the connection.
    Without a connection nothing is sent (the rows stay PENDING). Returns figures: sent, failed, retry (temporary
    failures in this call), waiting (rows that wait for a retry), unavailable (why the server could not be used)."""
    settings = settings or load_outbox()
    if smtp is None or not smtp.host:
        return {"skipped": f"no {SMTP_CONN_ID} connection: emails stay PENDING"}
    sender = SmtpSender(smtp, settings)
    try:
        figures = _drain(url, "notifications", "notification_id",
                         "notification_id, idempotency_key, kind, recipient, subject, body, body_html, language, attempts",
                         sender, settings, now, limit)
    finally:
        sender.close()
    log.info("customer emails: %s", figures)
    return figures


# ----------------------------------------------------------------------------------------------- HTTP
def payments_url(conn: Connection, settings: OutboxFile) -> str:
    """The URL payment requests are posted to: the connection's host (with its scheme, or schema http/https, and
    port) plus the endpoint (extra "endpoint", else outbox.yaml payments.endpoint)."""
    host = (conn.host or "").rstrip("/")
    if "://" in host:
        base = host
    else:
        scheme = next((s for s in (conn.schema, conn.conn_type) if s in ("http", "https")), "http")
        base = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    endpoint = str((conn.extra or {}).get("endpoint") or settings.payments.endpoint)
    return base + "/" + endpoint.lstrip("/") if endpoint.strip("/") else base


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - utcnow()).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def _nothing_sent(exc) -> bool:
    """Whether a requests error happened before the request left (connection refused, DNS, connect timeout)."""
    import requests
    import urllib3

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)
    return False


class HttpPoster:
    """Posts rows of oms.payment_requests: JSON body, Idempotency-Key header, (connect, read) timeouts, no redirects.
    Extras of the connection: endpoint, timeout (read timeout, seconds), verify (false, or a CA bundle path),
    headers (a mapping); login and password are sent as HTTP basic auth."""

    def __init__(self, conn: Connection, settings: OutboxFile, session=None):
        import requests

        self.url = payments_url(conn, settings)
        extra = conn.extra or {}
        read = float(extra.get("timeout") or settings.payments.read_timeout_seconds)
        self.timeout = (settings.payments.connect_timeout_seconds, read)
        verify = extra.get("verify", True)
        self.verify = verify if not isinstance(verify, str) or verify.lower() not in ("false", "true") \
            else verify.lower() == "true"
        headers = extra.get("headers") or {}
        if isinstance(headers, str):
            headers = json.loads(headers)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self.auth = (conn.login, conn.password or "") if conn.login else None
        self.session = session or requests.Session()

    def __call__(self, row: dict) -> Outcome:
        import requests

        body = row["body"] if isinstance(row["body"], dict) else json.loads(row["body"])
        started = time.perf_counter()
        try:
            resp = self.session.post(self.url, data=json.dumps(body, sort_keys=True).encode(),
                                     headers={**self.headers, "Idempotency-Key": row["idempotency_key"]},
                                     timeout=self.timeout, auth=self.auth, verify=self.verify, allow_redirects=False)
        except requests.exceptions.RequestException as exc:
            if _nothing_sent(exc):
                raise Unavailable(f"payment service {self.url}: {type(exc).__name__}: {exc}") from exc
            kind = "timeout" if isinstance(exc, requests.exceptions.Timeout) else type(exc).__name__
            return Outcome(RETRY, f"{kind}: {exc}", elapsed_ms=int((time.perf_counter() - started) * 1000))
        elapsed = int((time.perf_counter() - started) * 1000)
        code, text = resp.status_code, resp.text[:_MAX_BODY]
        if 200 <= code < 300:
            return Outcome(SENT, None, code, text, elapsed)
        error = f"HTTP {code} {resp.reason}: {text[:500]}"
        if code >= 500 or code in _RETRY_STATUSES:
            return Outcome(RETRY, error, code, text, elapsed, _retry_after(resp.headers.get("Retry-After")))
        return Outcome(FAILED, error, code, text, elapsed)


def _record_response(cur, row: dict, outcome: Outcome, status: str, attempt: int, moment: datetime) -> None:
    """Every post in oms.payment_responses; the latest response on the request; a failed re-authorization gives the
    order its previous authorization time back (so that the next run re-authorizes again)."""
    cur.execute("""INSERT INTO oms.payment_responses (payment_request_id, attempt, attempted_at, outcome, http_status,
                       elapsed_ms, body, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (payment_request_id, attempt) DO NOTHING""",
                (row["payment_request_id"], attempt, moment, status, outcome.http_status, outcome.elapsed_ms,
                 outcome.body, outcome.error))
    cur.execute("UPDATE oms.payment_requests SET response = coalesce(%s, response), "
                "response_status = coalesce(%s, response_status) WHERE payment_request_id = %s",
                (outcome.body, outcome.http_status, row["payment_request_id"]))
    if status == FAILED and row["kind"] == "REAUTHORIZE":
        cur.execute("""
            UPDATE oms.orders o SET last_authorized_at = coalesce(
                (SELECT max(p.created_at) FROM oms.payment_requests p
                 WHERE p.order_id = o.order_id AND p.kind = 'REAUTHORIZE' AND p.status <> 'FAILED'), o.origin_date)
            WHERE o.order_id = %s""", (row["order_id"],))


def dispatch_payments(url: str, http: Connection | None, settings: OutboxFile | None = None, *,
                      now: datetime | None = None, limit: int | None = None, session=None) -> dict:
    """Post the due PENDING rows of oms.payment_requests to the payment service of the connection. Without a
    connection they stay PENDING for the payment service to collect from the table."""
    settings = settings or load_outbox()
    if http is None or not http.host:
        return {"skipped": f"no {PAYMENTS_CONN_ID} connection: payment requests stay PENDING for the payment "
                           "service to collect"}
    poster = HttpPoster(http, settings, session)
    figures = _drain(url, "payment_requests", "payment_request_id",
                     "payment_request_id, idempotency_key, kind, order_id, body, attempts", poster, settings, now,
                     limit, after=_record_response)
    figures["url"] = poster.url
    log.info("payment requests: %s", figures)
    return figures


# ----------------------------------------------------------------------------------------------- shipment messages
def shipment_message_folder(settings: OutboxFile) -> Path | None:
    """outbox.yaml shipment_messages.folder as a path (relative to the project folder), or None."""
    folder = settings.shipment_messages.folder
    if not folder:
        return None
    path = Path(folder).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


class FolderWriter:
    """Writes a shipment message as <file_name> in the folder, atomically (a temporary file renamed into place), so
    that logistics never reads half a file."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.ready = False

    def __call__(self, row: dict) -> Outcome:
        if not self.ready:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise Unavailable(f"shipment message folder {self.folder}: {exc}") from exc
            self.ready = True
        body = row["body"] if isinstance(row["body"], dict) else json.loads(row["body"])
        target = self.folder / row["file_name"]
        tmp = self.folder / f".{row['file_name']}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return Outcome(RETRY, f"{type(exc).__name__}: {exc}")
        return Outcome(SENT)


def deliver_shipment_messages(url: str, folder: Path | str | None = None, settings: OutboxFile | None = None, *,
                              now: datetime | None = None, limit: int | None = None) -> dict:
    """Write the due PENDING request_shipment messages of oms.shipment_messages to the folder (default: outbox.yaml
    shipment_messages.folder). Without a folder they stay PENDING for logistics to collect from the table."""
    settings = settings or load_outbox()
    folder = Path(folder) if folder is not None else shipment_message_folder(settings)
    if folder is None:
        return {"skipped": "no shipment_messages.folder: shipment messages stay PENDING"}
    figures = _drain(url, "shipment_messages", "message_id", "message_id, idempotency_key, body, file_name, attempts",
                     FolderWriter(folder), settings, now, limit)
    figures["folder"] = str(folder)
    log.info("shipment messages: %s", figures)
    return figures


# ----------------------------------------------------------------------------------------------- everything
def deliver_all(url: str, settings: OutboxFile | None = None, *, smtp: Connection | None = None,
                payments: Connection | None = None, folder: Path | str | None = None,
                now: datetime | None = None) -> dict:
    """Every outbox in turn (the in-process equivalent of the DAG's deliver tasks)."""
    settings = settings or load_outbox()
    return {"notifications": deliver_notifications(url, smtp, settings, now=now),
            "payment_requests": dispatch_payments(url, payments, settings, now=now),
            "shipment_messages": deliver_shipment_messages(url, folder, settings, now=now)}


def deliver_from_environment(url: str, settings: OutboxFile | None = None, now: datetime | None = None) -> dict:
    """deliver_all with the connections Airflow would use, read from AIRFLOW_CONN_BACKORDERS_SMTP and
    AIRFLOW_CONN_BACKORDERS_PAYMENTS (the CLI's and run_cycle(deliver=True)'s path); outbox.yaml's folder."""
    return deliver_all(url, settings, smtp=connection_from_env(SMTP_CONN_ID),
                       payments=connection_from_env(PAYMENTS_CONN_ID), now=now)


def needs_retry(figures: dict) -> str | None:
    """Why a delivery task should fail so that Airflow retries it: temporary failures in this call, or a server that
    could not be reached. None when nothing is left to retry now."""
    if figures.get("unavailable"):
        return f"server unavailable: {figures['unavailable']}"
    if figures.get("retry"):
        return (f"{figures['retry']} row(s) failed temporarily and wait for a retry "
                f"(next at {figures.get('next_attempt_at')})")
    return None
