"""Micro-benchmark of rendering a run's customer emails (notifications.build_notices) on synthetic frames, no database.

Run: ``python -m bench.notifications_bench [--emails 64000] [--per-order]``; prints CPU seconds for the batch path
(and, with --per-order, for the per-order pandas groupby + Template.render path the cycle used before).
"""
from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from backorders import notifications as nt
from backorders.rules import load_rules

T = datetime(2026, 3, 4, 22, 41, tzinfo=timezone.utc)


def synthetic_frames(emails: int, seed: int = 7):
    """Backordered and cancelled lines as the queries return them: 60% backorder notices, 1-2 lines an order."""
    rnd = random.Random(seed)
    bo, ca = [], []
    for i in range(emails):
        order_id, email = f"{100000000 + i}", f"buyer{i}@example.com"
        name, language = rnd.choice([f"Dana Reyes {i}", np.nan]), rnd.choice(["en_US", "de_DE", np.nan, "fr_FR"])
        store = rnd.choice(["US_WEB", "US_B2B", "EU_WEB"])
        ship_by = rnd.choice([pd.Timestamp("2026-03-10T04:59:59Z") + pd.Timedelta(days=rnd.randint(0, 9)), pd.NaT])
        backorder = rnd.random() < 0.6
        for n in range(1, rnd.randint(1, 2) + 1):
            sku = f"SKU-{rnd.randint(1, 20000):05d}"
            product = rnd.choice([f"Product {sku}", np.nan])
            if backorder:
                bo.append((order_id, f"{order_id}-{n}", n, sku, product, rnd.randint(1, 4), email, name, language,
                           store, ship_by, rnd.choice([np.nan, 5.0, 14.0, 30.0])))
            else:
                ca.append((order_id, f"{order_id}-{n}", n, sku, product, rnd.randint(1, 4),
                           rnd.choice(["NOT_BACKORDERABLE", "AUTO_CANCEL"]), "waited too long", email, name,
                           language, store, ship_by))
    bo = pd.DataFrame(bo, columns=["order_id", "line_id", "line_number", "sku", "product_name", "qty_backordered",
                                   "customer_email", "customer_name", "language", "store", "ship_by_date",
                                   "restock_lead_days"])
    ca = pd.DataFrame(ca, columns=["order_id", "line_id", "line_number", "sku", "product_name", "qty_cancelled", "kind",
                                   "reason", "customer_email", "customer_name", "language", "store", "ship_by_date"])
    for f in (bo, ca):
        for c in f.columns:
            if f[c].dtype != "float64" and f[c].dtype.kind not in "iM":
                f[c] = f[c].astype(object)
        f["ship_by_date"] = pd.to_datetime(f["ship_by_date"], utc=True)
    return bo, ca


def per_order(kind, frame, t, rules):
    """The per-order path (pandas groupby, a dict per line, render per email) the cycle used before the batch one."""
    def none(v):
        return None if isinstance(v, float) and v != v else v

    rows = []
    for order_id, g in frame.groupby("order_id", sort=True):
        first = g.iloc[0]
        lines = []
        for rec in g.to_dict("records"):
            rec = {k: none(v) for k, v in rec.items()}
            lead = rec.get("restock_lead_days")
            rec["expected_by"] = None if lead is None else (t + timedelta(days=int(lead))).date().isoformat()
            rec["reason_text"] = nt.NOT_BACKORDERABLE_TEXT if rec.get("kind") == "NOT_BACKORDERABLE" \
                else (rec.get("reason") or "cancelled")
            lines.append(rec)
        order = {"order_id": order_id, "customer_name": none(first["customer_name"]),
                 "ftc_rule": rules.channel(first["store"]).ftc_rule,
                 "ship_by": first["ship_by_date"].date().isoformat() if pd.notna(first["ship_by_date"]) else None}
        rows.append(nt.render(kind, none(first["language"]), {"order": order, "lines": lines}))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.notifications_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--emails", type=int, default=64000)
    p.add_argument("--per-order", action="store_true", help="also time the per-order path (slow: minutes at 64k)")
    a = p.parse_args(argv)
    rules = load_rules()
    bo, ca = synthetic_frames(a.emails)
    nt.build_notices("BACKORDER_NOTICE", bo.head(50), T, rules)          # imports and template compilation
    started = time.process_time()
    rows, links = [], []
    for kind, f in (("BACKORDER_NOTICE", bo), ("CANCELLATION_NOTICE", ca)):
        r, li = nt.build_notices(kind, f, T, rules)
        rows += r
        links += li
    built = time.process_time() - started
    started = time.process_time()
    nt._copy_text(rows), nt._copy_text(links)
    copied = time.process_time() - started
    print(f"batch: {len(rows)} emails, {len(links)} lines: build {built:.2f} s, COPY text {copied:.2f} s CPU "
          f"({(built + copied) / len(rows) * 1e6:.0f} µs an email)")
    if a.per_order:
        started = time.process_time()
        n = len(per_order("BACKORDER_NOTICE", bo, T, rules)) + len(per_order("CANCELLATION_NOTICE", ca, T, rules))
        print(f"per order: {n} emails: {time.process_time() - started:.2f} s CPU (render only, no SQL, no INSERT)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
