"""Masking of customer data (emails, names, addresses) in text that goes to logs, check examples and reports."""
from __future__ import annotations

import logging
import re
from typing import Any

# name@domain.tld, loosely: whatever looks like an email is masked, valid or not
EMAIL = re.compile(r"([A-Za-z0-9._%+\-]+)@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*)")
# keys whose values are personal data: masked whole wherever they appear in a record
PERSONAL_KEYS = frozenset({
    "email", "customer_email", "recipient", "customer_name", "firstname", "first_name", "lastname", "last_name",
    "name", "street", "street1", "street2", "address", "address1", "address2", "address_line", "city", "postcode",
    "postal_code", "zip", "telephone", "phone",
})
MAX_TEXT = 300


def mask_email(email: str) -> str:
    """dana.reyes@example.com -> d***@e***.com: enough to tell two apart in a log, not enough to write to."""
    local, _, domain = email.partition("@")
    head, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{head[:1]}***.{tld}" if head else f"{local[:1]}***@***"


def mask_text(text: str, limit: int = MAX_TEXT) -> str:
    """Every email in a text masked, control characters escaped, cut to limit characters."""
    text = EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = "".join(ch if ch.isprintable() or ch == " " else f"\\x{ord(ch):02x}" if ord(ch) < 256
                   else f"\\u{ord(ch):04x}" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mask_whole(value: Any) -> str:
    text = str(value)
    return mask_email(text) if "@" in text else (text[:1] + "***" if text else "")


def mask_value(value: Any, key: str | None = None) -> Any:
    """A JSON-like value with personal fields masked and every text masked as by mask_text (recursive)."""
    if key is not None and key.lower() in PERSONAL_KEYS and value not in (None, ""):
        return _mask_whole(value) if not isinstance(value, (dict, list)) else "***"
    if isinstance(value, dict):
        return {str(k): mask_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_text(str(value))


class MaskingFilter(logging.Filter):
    """A logging filter that masks emails in the formatted message (attach it to a handler or a logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:       # a broken format string: leave it to logging to report
            return True
        masked = EMAIL.sub(lambda m: mask_email(m.group(0)), message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install(prefix: str = "backorders") -> None:
    """Mask emails in every log record of the loggers under prefix, whatever handler writes them (once per process).

    Works at record creation (logging's record factory), so it covers child loggers and handlers added later, such as
    Airflow's task log handler; call it once at start-up (e.g. in backorders/__init__.py)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_masks", None) == prefix:
        return
    masker = MaskingFilter()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        name = record.name or ""        # logging.makeLogRecord (structlog's formatter) makes one without a name first
        if name == prefix or name.startswith(prefix + "."):
            masker.filter(record)
        return record

    factory._masks = prefix
    logging.setLogRecordFactory(factory)
