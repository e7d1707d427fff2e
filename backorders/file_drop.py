"""The file drop: order messages (*.json, *.jsonl) and stock feeds (*.csv) in a landing folder, loaded into the
landing tables, each file once.

* The folder is BACKORDERS_LANDING_DIR (none set: no file drop). Files are loaded in name order; a file whose content
  (SHA-256) was loaded before is skipped, whatever its name. One file is loaded in one transaction.
* `*.json`: the whole file is one message; `*.jsonl`: one message per non-blank line. Message text is not judged
  here: invalid JSON and every other problem is quarantined by the run with its reason, like any landed message.
  Only what cannot be stored as text is rejected here: bytes that are not UTF-8, a NUL character, an empty file.
* `*.csv`: a header naming source_code, sku, quantity, as_of (any order, other columns ignored), then one stock level
  per line. A line that cannot be read (field count, empty source or SKU, control characters, a quantity that is not
  a number, an as_of that is not an ISO 8601 time with a time zone) is rejected with its line number; every other row
  is loaded, also negative or fractional quantities, unknown sources and future dates, which the run judges
  (include/sql/stage_stock.sql) so that one rule decides for file and table input alike.
* Rejected lines go to landing.file_rejects (file, line, reason, raw text); the run whose window covers their
  received_at puts each in oms.quarantine (source `file:<name>`, source_ref `<name>:<line>`).
* received_at of everything loaded is T of the run that loads it (the DAG's first task), so that this run sees it.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

log = logging.getLogger(__name__)

LANDING_ENV = "BACKORDERS_LANDING_DIR"
STOCK_COLUMNS = ("source_code", "sku", "quantity", "as_of")
ORDER_SUFFIXES = (".json", ".jsonl")
LOCK_KEY = 727173
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def landing_dir() -> Path | None:
    """The landing folder of the file drop (BACKORDERS_LANDING_DIR), or None when not configured."""
    value = os.environ.get(LANDING_ENV)
    return Path(value) if value else None


def _printable(text: str, limit: int = 2000) -> str:
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[:limit] + "..."


def _decode_lines(data: bytes) -> list[tuple[int, str | None, bytes]]:
    """(line number, text or None when not UTF-8, raw bytes) per physical line; a final empty line is dropped."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out = []
    for n, raw in enumerate(parts, 1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if n == 1 and text is not None and text.startswith("\ufeff"):
            text = text[1:]
        out.append((n, text, raw))
    return out


def parse_orders(name: str, data: bytes) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Messages of an orders file and its rejected lines (line, reason, raw)."""
    rejects: list[tuple[int, str, str]] = []
    if name.lower().endswith(".json"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return [], [(1, f"not UTF-8 text (byte {exc.start})", _printable(data.decode("utf-8", "backslashreplace")))]
        if "\x00" in text:
            return [], [(1, "contains a NUL character", _printable(text))]
        if not text.strip():
            return [], [(1, "empty file", "")]
        return [text], []
    messages = []
    for n, text, raw in _decode_lines(data):
        if text is None:
            rejects.append((n, "not UTF-8 text", _printable(raw.decode("utf-8", "backslashreplace"))))
        elif "\x00" in text:
            rejects.append((n, "contains a NUL character", _printable(text)))
        elif text.strip():
            messages.append(text)
    return messages, rejects


def _parse_as_of(value: str) -> datetime:
    text = value.strip()
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.astimezone(timezone.utc)


def parse_stock(data: bytes) -> tuple[list[tuple], list[tuple[int, str, str]]]:
    """Stock rows (source_code, sku, quantity, as_of) of a CSV feed and its rejected lines (line, reason, raw)."""
    lines = _decode_lines(data)
    rejects: list[tuple[int, str, str]] = []
    readable = []
    for n, text, raw in lines:
        if text is None:
            rejects.append((n, "not UTF-8 text", _printable(raw.decode("utf-8", "backslashreplace"))))
        elif "\x00" in text:
            rejects.append((n, "contains a NUL character", _printable(text)))
        else:
            readable.append((n, text))
    if not readable:
        return [], rejects or [(1, "empty file: expected a header source_code,sku,quantity,as_of", "")]
    header_n, header_text = readable[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    missing = [c for c in STOCK_COLUMNS if c not in header]
    if missing or header_n != 1:
        why = (f"the header (line {header_n}) lacks the column(s) {', '.join(missing)}" if missing
               else "line 1 is not readable text, so the file has no header")
        return [], rejects + [(n, why, _printable(text)) for n, text in readable]
    at = {c: header.index(c) for c in STOCK_COLUMNS}
    rows = []
    for n, text in readable[1:]:
        if not text.strip():
            continue
        try:
            fields = next(csv.reader([text]))
        except csv.Error as exc:
            rejects.append((n, f"not a CSV row: {exc}", _printable(text)))
            continue
        problem = None
        if len(fields) != len(header):
            problem = f"expected {len(header)} fields, got {len(fields)}"
        else:
            source, sku, qty_text, as_of_text = (fields[at[c]] for c in STOCK_COLUMNS)
            source, sku = source.strip(), sku.strip()
            if not source:
                problem = "source_code is empty"
            elif _CONTROL.search(source) or _CONTROL.search(sku):
                problem = "source_code or sku contains a control character"
            elif not sku:
                problem = "sku is empty"
            else:
                try:
                    qty = Decimal(qty_text.strip())
                    if not qty.is_finite():
                        raise InvalidOperation
                    if qty.adjusted() > 30 or len(qty.as_tuple().digits) > 60:
                        problem = f"quantity is out of range: {qty_text.strip()[:40]!r}"
                except (InvalidOperation, ValueError):
                    problem = f"quantity is not a number: {qty_text.strip()[:40]!r}"
                if problem is None:
                    try:
                        as_of = _parse_as_of(as_of_text)
                    except ValueError as exc:
                        why = "has no time zone" if str(exc) == "no time zone" else "is not an ISO 8601 date-time"
                        problem = f"as_of {why}: {as_of_text.strip()[:40]!r}"
        if problem:
            rejects.append((n, problem, _printable(text)))
        else:
            rows.append((source, sku, qty, as_of))
    return rows, sorted(rejects)


def load_folder(url: str, t=None, folder: Path | str | None = None) -> dict:
    """Load every new file of the landing folder into the landing tables; received_at is T (default: now)."""
    from backorders import schema

    folder = Path(folder) if folder is not None else landing_dir()
    figures = {"files_loaded": 0, "files_skipped": 0, "messages": 0, "stock_rows": 0, "rows_rejected": 0}
    if folder is None:
        log.info("file drop: no landing folder configured (%s): nothing to load", LANDING_ENV)
        return figures
    if not folder.is_dir():
        log.warning("file drop: landing folder %s does not exist: nothing to load", folder)
        return figures
    if t is None:
        received_at = datetime.now(timezone.utc)
    else:
        from backorders.cycle import as_run_time

        received_at = as_run_time(t)
    schema.upgrade(url)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (*ORDER_SUFFIXES, ".csv")):
        loaded = load_file(url, path, received_at)
        if loaded is None:
            figures["files_skipped"] += 1
            continue
        figures["files_loaded"] += 1
        figures["messages" if loaded["kind"] == "orders" else "stock_rows"] += loaded["rows_loaded"]
        figures["rows_rejected"] += loaded["rows_rejected"]
    log.info("file drop from %s: %s", folder, figures)
    return figures


def load_file(url: str, path: Path, received_at: datetime) -> dict | None:
    """Load one file in one transaction; None when a file with the same content was loaded before."""
    from psycopg2.extras import execute_values

    from backorders import db

    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    kind = "orders" if path.suffix.lower() in ORDER_SUFFIXES else "stock"
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        cur.execute("SELECT file_name FROM landing.file_loads WHERE sha256 = %s", (sha,))
        known = cur.fetchone()
        if known:
            log.info("file drop: %s skipped: the same content was loaded before as %s", path.name, known[0])
            return None
        if kind == "orders":
            messages, rejects = parse_orders(path.name, data)
            execute_values(cur, "INSERT INTO landing.order_messages (received_at, body) VALUES %s",
                           [(received_at, m) for m in messages], page_size=1000)
            loaded = len(messages)
        else:
            rows, rejects = parse_stock(data)
            execute_values(cur, "INSERT INTO landing.stock_levels (source_code, sku, quantity, as_of, received_at) "
                                "VALUES %s", [(*r, received_at) for r in rows], page_size=5000)
            loaded = len(rows)
        cur.execute("INSERT INTO landing.file_loads (sha256, file_name, kind, size_bytes, received_at, rows_loaded, "
                    "rows_rejected) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (sha, path.name, kind, len(data), received_at, loaded, len(rejects)))
        execute_values(cur, "INSERT INTO landing.file_rejects (file_sha256, file_name, line_number, received_at, "
                            "reason, raw) VALUES %s",
                       [(sha, path.name, n, received_at, reason, raw) for n, reason, raw in rejects])
    (log.warning if rejects else log.info)(
        "file drop: %s (%s): %d rows loaded, %d lines rejected%s", path.name, kind, loaded, len(rejects),
        "".join(f"; line {n}: {reason}" for n, reason, _ in rejects[:5]))
    return {"kind": kind, "rows_loaded": loaded, "rows_rejected": len(rejects)}
