"""Allocation engine vs a single-statement SQL FIFO on the same open lines (default 1M lines, 200k SKUs, 5 sources, 3 channels), in one run: python bench/engine_vs_sql_fifo.py [N]."""
import time, resource, numpy as np, pandas as pd, psycopg2, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from backorders import db, embedded_pg
from backorders.allocation import allocate_pool, ChannelPolicy
from backorders.pools import stock_pools
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
rng = np.random.default_rng(5)
pol = {"US_WEB": ChannelPolicy(("WH_PDX", "WH_NJ", "WH_DAL")),
       "US_B2B": ChannelPolicy(("WH_DAL", "WH_NJ"), max_shipments_per_order=2),
       "EU_WEB": ChannelPolicy(("WH_KOELN", "WH_LEEDS"))}
pools = stock_pools(pol)
n_sku = 200_000
sizes = rng.choice([1, 1, 1, 2, 2, 3, 4], size=N)
order_of_line = np.repeat(np.arange(N), sizes)[:N]
n_orders = order_of_line.max() + 1
store_o = rng.choice(["US_WEB", "US_WEB", "US_B2B", "EU_WEB"], size=n_orders)
ranks = np.minimum((rng.zipf(1.3, size=N) - 1), n_sku - 1)
demand = pd.DataFrame({
    "order_id": pd.Series(order_of_line).map(lambda i: f"O{i:07d}").astype(object),
    "sku": pd.Series(ranks).map(lambda i: f"SKU{i:06d}").astype(object),
    "store": store_o[order_of_line].astype(object),
    "qty_open": rng.choice([1, 1, 1, 2, 3], size=N).astype("int64"),
})
demand["line_number"] = demand.groupby("order_id").cumcount() + 1
demand["line_id"] = demand["order_id"] + "-" + demand["line_number"].astype(str)
demand["priority_tier"] = 100
demand["origin_date"] = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 30 * 86400, size=n_orders)[order_of_line], unit="s")
demand["backorderable"] = True
demand["shipments_used"] = 0
demand["pool"] = demand["store"].map(pools)
srcs = ["WH_PDX", "WH_NJ", "WH_DAL", "WH_KOELN", "WH_LEEDS"]
stock = pd.DataFrame({"source_code": np.repeat(srcs, n_sku), "sku": np.tile([f"SKU{i:06d}" for i in range(n_sku)], 5)})
stock["qty_available"] = np.where(rng.random(len(stock)) < 0.4, 0, rng.integers(0, 20, size=len(stock))).astype("int64")
url = embedded_pg.ensure_database().replace("/backorders?", "/engbench?")
admin = psycopg2.connect(url.replace("/engbench?", "/postgres?")); admin.autocommit = True
admin.cursor().execute("DROP DATABASE IF EXISTS engbench"); admin.cursor().execute("CREATE DATABASE engbench")
with db.transaction(url) as c, c.cursor() as cur:
    cur.execute("CREATE TABLE demand (order_id text, line_id text, line_number int, sku text, store text, pool text, priority_tier int, origin_date timestamptz, qty_open bigint)")
    cur.execute("CREATE TABLE stock (source_code text, sku text, qty_available bigint)")
    cur.execute("CREATE TABLE pools (store text, pool text, source_code text)")
    db.copy_frame(c, demand, "demand", ["order_id", "line_id", "line_number", "sku", "store", "pool", "priority_tier", "origin_date", "qty_open"])
    db.copy_frame(c, stock, "stock")
    for s, p in pools.items():
        for src in pol[s].sources:
            cur.execute("INSERT INTO pools VALUES (%s,%s,%s)", (s, p, src))
    cur.execute("ANALYZE demand; ANALYZE stock; ANALYZE pools")
FIFO = """CREATE TABLE fifo AS
WITH pool_stock AS (SELECT p.pool, s.sku, sum(s.qty_available) AS avail FROM stock s
                    JOIN (SELECT DISTINCT pool, source_code FROM pools) p USING (source_code) GROUP BY 1, 2),
c AS (SELECT d.order_id, d.line_id, d.qty_open, coalesce(ps.avail, 0) AS avail,
             sum(d.qty_open) OVER (PARTITION BY d.pool, d.sku ORDER BY d.priority_tier, d.origin_date, d.order_id, d.line_number
                                   ROWS UNBOUNDED PRECEDING) AS cum
      FROM demand d LEFT JOIN pool_stock ps ON ps.pool = d.pool AND ps.sku = d.sku)
SELECT order_id, line_id, least(qty_open, greatest(avail - (cum - qty_open), 0)) AS allocated FROM c"""
times = {}
for rep in range(3):
    with db.transaction(url) as c, c.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS fifo"); t0 = time.perf_counter(); cur.execute(FIFO); times.setdefault("sql_fifo", []).append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with db.transaction(url) as c:
        d2 = db.read_frame(c, "SELECT * FROM demand", dtypes={"order_id": "object", "line_id": "object", "sku": "object", "store": "object", "pool": "object"}, parse_dates=["origin_date"])
        s2 = db.read_frame(c, "SELECT * FROM stock", dtypes={"source_code": "object", "sku": "object", "qty_available": "int64"})
    times.setdefault("read_frames", []).append(time.perf_counter() - t0)
    d2["backorderable"] = True; d2["shipments_used"] = 0
    t0 = time.perf_counter()
    tot = 0
    for p, g in d2.groupby("pool"):
        srcs_p = {src for s in pol if pools[s] == p for src in pol[s].sources}
        r = allocate_pool(g, s2[s2.source_code.isin(srcs_p)], {s: pol[s] for s in set(g.store)})
        tot += int(r.lines.qty_allocated.sum())
    times.setdefault("engine", []).append(time.perf_counter() - t0)
med = {k: sorted(v)[1] for k, v in times.items()}
print(f"lines {len(demand):,} orders {n_orders:,} skus {n_sku:,} sources 5; allocated by engine {tot:,}")
print({k: round(v, 2) for k, v in med.items()}, "engine/sql", round(med["engine"] / med["sql_fifo"], 2),
      "(engine+read)/sql", round((med["engine"] + med["read_frames"]) / med["sql_fifo"], 2),
      "peak RSS MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
admin.cursor().execute("DROP DATABASE IF EXISTS engbench WITH (FORCE)")
