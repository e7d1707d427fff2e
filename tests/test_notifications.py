"""Email templates: rendering, language fallback and expected availability dates."""
from __future__ import annotations

from datetime import datetime, timezone

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
