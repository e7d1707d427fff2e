"""Stock-triggered runs: the asset that stands for new stock in landing.stock_levels, and the cheap query that tells
whether stock landed since a watermark. No Airflow import (dags/stock_feed_watch.py emits the asset event)."""
from __future__ import annotations

from datetime import datetime

STOCK_FEED_URI = "backorders://landing/stock_levels"
STOCK_FEED_NAME = "backorders_stock_levels"

# When a row landed: received_at (set by the loader), else its as_of. Indexed (migration 0005).
LANDED = "coalesce(received_at, as_of)"


def new_stock(url: str, since: datetime | None) -> dict:
    """Stock rows that landed after the watermark `since` (all when None): how many, for how many SKUs and sources,
    and the new watermark (the latest landing time seen; unchanged when nothing landed)."""
    from backorders import db          # not at import: the DAG files import this module's names when parsed

    with db.transaction(url) as conn, conn.cursor() as cur:
        where = f"WHERE {LANDED} > %(since)s" if since is not None else ""       # an index range scan
        cur.execute(f"SELECT count(*), count(DISTINCT sku), count(DISTINCT source_code), max({LANDED}) "
                    f"FROM landing.stock_levels {where}", {"since": since})
        rows, skus, sources, latest = cur.fetchone()
    return {"rows": int(rows), "skus": int(skus), "sources": int(sources),
            "watermark": (latest or since).isoformat() if (latest or since) else None,
            "since": since.isoformat() if since else None}
