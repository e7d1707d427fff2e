"""Customer emails of a run, rendered from the Jinja2 templates in include/templates/email into the oms.notifications outbox."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from backorders.settings import TEMPLATES_DIR


@lru_cache(maxsize=4)
def _environment(folder: str):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(folder), undefined=StrictUndefined, keep_trailing_newline=True,
                       autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False))


def template_names(kind: str, language: str | None, part: str, folder: Path = TEMPLATES_DIR / "email") -> list[str]:
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


def render(kind: str, language: str | None, context: dict, folder: Path = TEMPLATES_DIR / "email") -> dict:
    """Subject, text body and HTML body of one email; falls back to the English template where a language has none."""
    env = _environment(str(folder))
    out = {}
    for part in ("subject", "txt", "html"):
        for name in template_names(kind, language, part, folder):
            if (folder / name).exists():
                out[part] = env.get_template(name).render(**context)
                break
        else:
            out[part] = None
    if out["subject"] is None or out["txt"] is None:
        raise FileNotFoundError(f"{folder}: no subject/text template for {kind} (looked for {template_names(kind, language, 'txt', folder)})")
    out["subject"] = " ".join(out["subject"].split())
    return out


def idempotency_key(kind: str, order_id: str, run_at: datetime) -> str:
    return f"{kind}/{order_id}/{run_at.isoformat()}"


def notification_id(key: str) -> str:
    return "N-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def expected_by(run_at: datetime, lead_days) -> str | None:
    """The expected availability date shown to the customer: T plus the catalog's restock lead time, when known."""
    if lead_days is None or lead_days != lead_days:  # None or NaN
        return None
    return (run_at + timedelta(days=int(lead_days))).date().isoformat()
