"""The benchmark measures the real thing: its prepared state and cycle give the DAG's tables, and its SQL FIFO floor
allocates what the engine allocates where both rules coincide (one source, single-line orders, partial lines)."""
from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from backorders import db
from backorders.allocation import ChannelPolicy, allocate_pool
from bench import benchmark
from tests.conftest import scratch_database, snapshot_oms
from tests.test_dag_e2e import airflow_home, run_dag  # noqa: F401  (the module fixture and the DAG runner)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sql_fifo_floor_equals_the_engine_on_single_source_single_line_demand(migrated_url, seed):
    rng = np.random.default_rng(seed)
    n, skus = 400, 12
    demand = pd.DataFrame({
        "order_id": [f"O{i:05d}" for i in rng.permutation(n)],
        "line_id": [f"L{i:05d}" for i in range(n)],
        "line_number": 1,
        "sku": [f"SKU-{k}" for k in rng.integers(0, skus, n)],
        "store": "WEB",
        "pool": "pool-A",
        "priority_tier": rng.integers(1, 4, n),
        "origin_date": pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 50, n), unit="h"),
        "qty_open": rng.integers(1, 6, n),
        "backorderable": True,
        "shipments_used": 0,
    })
    stock = pd.DataFrame({"source_code": "WH_A", "sku": [f"SKU-{k}" for k in range(skus)],
                          "qty_available": rng.integers(0, 60, skus)})
    stg = "stg_bench_fifo"
    with db.transaction(migrated_url) as conn, conn.cursor() as cur:
        cur.execute(f"""CREATE SCHEMA {stg};
            CREATE TABLE {stg}.pools (store text, pool text); INSERT INTO {stg}.pools VALUES ('WEB', 'pool-A');
            CREATE TABLE {stg}.channels (store text, sources text[]);
            INSERT INTO {stg}.channels VALUES ('WEB', ARRAY['WH_A']);
            CREATE TABLE {stg}.stock (source_code text, sku text, qty_available bigint);
            CREATE TABLE {stg}.demand (order_id text, line_id text, line_number integer, sku text, store text,
                pool text, priority_tier integer, origin_date timestamptz, qty_open bigint)""")
        db.copy_frame(conn, stock, f"{stg}.stock")
        db.copy_frame(conn, demand, f"{stg}.demand", ["order_id", "line_id", "line_number", "sku", "store", "pool",
                                                      "priority_tier", "origin_date", "qty_open"])
    conn = db.connect(migrated_url)
    try:
        assert benchmark.fifo_floor(conn, stg) >= 0
        fifo = db.read_frame(conn, f"SELECT line_id, qty_allocated FROM {stg}.floor_fifo",
                             dtypes={"line_id": "object", "qty_allocated": "int64"})
    finally:
        conn.close()
    engine = allocate_pool(demand.drop(columns=["pool"]), stock, {"WEB": ChannelPolicy(sources=("WH_A",))}).lines
    got = fifo.set_index("line_id")["qty_allocated"].sort_index()
    want = engine.set_index("line_id")["qty_allocated"].astype("int64").sort_index()
    assert len(got) == n
    assert 0 < want.sum() < demand["qty_open"].sum()          # scarce: the order of service matters
    pd.testing.assert_series_equal(got, want, check_names=False)


@pytest.mark.e2e
def test_benchmark_state_and_cycle_equal_the_dag_runs(airflow_home, db_url, pg_admin_url):
    """The benchmark's path (generated landing, first ingest at T0, the cycle at T1 kept for the floor, rewound and
    measured again) leaves the same oms tables as backorder_cycle run by Airflow at T0 and T1 on the same landing."""
    prep = benchmark.prepare(db_url, 1500, 300, 2, 5, 0.05)
    t0, t1 = prep["t0"], prep["t1"]
    first = benchmark.measure_cycle(db_url, t0, keep_staging=False)
    assert first["summary"]["lines_backordered"] > 0 and first["summary"]["lines_allocated"] == 0   # no stock at T0
    measured = benchmark.measure_cycle(db_url, t1, keep_staging=True)
    assert measured["summary"]["lines_allocated"] > 0 and measured["peak_rss_mb"] > 0
    floor = benchmark.measure_floor(db_url, benchmark.keep_floor_input(db_url, t1), 1)
    assert floor["rows"]["demand"] == floor["fifo_lines"] == measured["summary"]["demand_lines"]
    # the bound of the writes copies what the cycle wrote, table by table, into tables with the oms tables' indexes
    written = floor["writes"]["tables"]
    assert set(written) == set(benchmark.WRITTEN)
    assert written["shipment_requests"]["rows"] == measured["summary"]["shipment_requests"] > 0
    assert written["notifications"]["rows"] == measured["summary"]["emails_queued"] > 0
    assert written["order_lines"]["rows"] >= measured["summary"]["lines_allocated"] > 0    # each one changed
    assert written["payment_requests"]["rows"] > 0 and written["storefront_availability"]["rows"] > 0
    assert floor["writes"]["seconds"] > floor["writes"]["publish_seconds"] > 0
    benchmark.rewind(db_url, t1)
    benchmark.measure_cycle(db_url, t1, keep_staging=False)
    bench_state = snapshot_oms(db_url)

    with scratch_database(pg_admin_url, "bench_dag") as other:
        assert benchmark.prepare(other, 1500, 300, 2, 5, 0.05)["t1"] == t1
        reports = run_dag(airflow_home, other, [t0, t1], logistics=False)
        assert [r["state"] for r in reports] == ["success", "success"]
        assert snapshot_oms(other) == bench_state


def test_reuse_database_measures_a_kept_database_again(pg_admin_url, tmp_path):
    """--keep-database leaves a prepared database that --reuse-database measures again without generating it or
    ingesting it anew: same scale, same staged input, same cycle figures (the run at T1 is rewound first). Every cycle,
    with the history too, is bracketed by floor samples on the first cycle's staged input."""
    import json

    import psycopg2

    name = "bench_reuse_test"
    common = ["--url", pg_admin_url, "--database", name]
    try:
        benchmark.main(["--open-lines", "1200", "--keep-database", "--history-lines", "0", "--repeat", "1",
                        "--out", str(tmp_path / "first.json"), *common])
        first = json.loads((tmp_path / "first.json").read_text())
        assert len(first["floor"]["sql_fifo_runs"]) == benchmark.FLOOR_SAMPLES == 3       # --repeat 1: still 3
        benchmark.main(["--reuse-database", "--history-lines", "300", "--repeat", "2",
                        "--out", str(tmp_path / "again.json"), *common])
        again = json.loads((tmp_path / "again.json").read_text())
        assert "first_ingest" not in again and again["first_ingest_earlier"] == first["first_ingest"]
        assert again["scale"]["open_lines_requested"] == 1200
        assert again["prepare"] == first["prepare"]
        assert again["floor"]["rows"] == first["floor"]["rows"] and again["floor"]["rows"]["demand"] > 0
        runs, hruns = again["cycle"]["runs"], again["history_cycle"]["runs"]
        assert runs[0]["summary"] == runs[1]["summary"] == first["cycle"]["runs"][0]["summary"]
        assert runs[0]["summary"]["lines_allocated"] > 0
        assert hruns[0]["summary"]["demand_lines"] == runs[0]["summary"]["demand_lines"]
        # the floor samples: after the first cycle (its staged input is kept), then before and after every other one
        assert [[f["when"] for f in r["floor_samples"]] for r in runs + hruns] == [
            ["after cycle 1"], ["before cycle 2", "after cycle 2"],
            ["before history cycle 1", "after history cycle 1"], ["before history cycle 2", "after history cycle 2"]]
        samples = [f for r in runs + hruns for f in r["floor_samples"]]
        assert all(f["rows"] == first["floor"]["rows"] and len(f["sql_fifo_runs"]) == 3 for f in samples)
        # the cycle's own rows written once a sample set, the same rows each time
        assert len(again["floor"]["writes_runs"]) == 3 and len(again["history_floor"]["writes_runs"]) == 4
        assert all({k: w["rows"] for k, w in f["writes"]["tables"].items()}
                   == {k: w["rows"] for k, w in first["floor"]["writes"]["tables"].items()} for f in samples)
        assert 0 < again["diagnostics"]["publish_writes_over_fifo"] < again["diagnostics"]["writes_over_fifo"]
        assert len(again["floor"]["sql_fifo_runs"]) == 9 and len(again["history_floor"]["sql_fifo_runs"]) == 12
        assert again["history"]["table_rows_after"]["order_lines"] >= 300
        assert again["diagnostics"]["floor_spread"] >= 1 and again["diagnostics"]["history_ratio_over_floor"] > 0
        assert "history_ratio" in again["targets"]
        # the stages run side by side are reported as blocks; the groups add up to the cycle (its untimed gaps aside)
        run = runs[0]
        assert set(run["parallel"]) == {"extract", "check_allocation", "publish", "after_publish",
                                        "side_effects"}
        assert 0.8 * run["wall_seconds"] <= sum(benchmark.grouped(run["seconds"], run["parallel"]).values()) \
            <= run["wall_seconds"]
    finally:
        admin = psycopg2.connect(pg_admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_alternation_measures_the_history_ratio_in_pairs_of_cycles(pg_admin_url, tmp_path):
    """--alternate-with measures the same T1 cycle on a kept database without history and one with it, one after the
    other, round after round: the same input on both sides, every round's ratio of the two cycles, and their median."""
    import json

    import psycopg2

    plain, hist = "bench_alt_plain", "bench_alt_history"
    url = ["--url", pg_admin_url]
    try:
        for name, history in ((plain, "0"), (hist, "300")):
            benchmark.main(["--open-lines", "1200", "--keep-database", "--history-lines", history, "--repeat", "1",
                            "--database", name, "--out", str(tmp_path / f"{name}.json"), *url])
        with pytest.raises(SystemExit, match="must hold no history"):     # the sides the wrong way round
            benchmark.main(["--database", hist, "--alternate-with", plain, "--out", str(tmp_path / "x.json"), *url])
        benchmark.main(["--database", plain, "--alternate-with", hist, "--repeat", "2",
                        "--out", str(tmp_path / "alt.json"), *url])
        alt = json.loads((tmp_path / "alt.json").read_text())
        kept = json.loads((tmp_path / f"{plain}.json").read_text())
        assert alt["mode"] == "alternate" and alt["history_lines"] == 300 and len(alt["rounds"]) == 2
        for r in alt["rounds"]:
            # the same cycle on both sides (the history is closed: it adds no demand), as the kept run measured it
            assert r["without"]["summary"] == kept["cycle"]["runs"][0]["summary"]
            assert r["with"]["summary"]["demand_lines"] == r["without"]["summary"]["demand_lines"] > 0
            assert r["with"]["floor"]["rows"] == r["without"]["floor"]["rows"] == kept["floor"]["rows"]
            assert "writes" not in r["with"]["floor"] and "writes" in kept["floor"]    # not this mode's figure
            assert r["history_ratio"] == pytest.approx(r["with"]["wall_seconds"] / r["without"]["wall_seconds"])
        ratios = sorted(r["history_ratio"] for r in alt["rounds"])
        assert alt["history_ratio"]["value"] == pytest.approx(sum(ratios) / 2)        # the median of two rounds
        assert alt["history_ratio"]["met"] == (alt["history_ratio"]["value"] <= 1.2)
    finally:
        admin = psycopg2.connect(pg_admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            for name in (plain, hist):
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_reuse_database_refuses_a_database_it_did_not_prepare(pg_admin_url, db_url, tmp_path):
    name = urlsplit(db_url).path.lstrip("/")          # a migrated database, but not a benchmark's
    with pytest.raises(SystemExit, match="was not prepared by this benchmark"):
        benchmark.main(["--url", pg_admin_url, "--database", name, "--reuse-database", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="cannot connect"):
        benchmark.main(["--url", pg_admin_url, "--database", "no_such_bench_db", "--reuse-database",
                        "--out", str(tmp_path / "y.json")])


def test_stage_groups_share_the_wall_time_of_stages_that_ran_side_by_side():
    """run_cycle runs some stages at the same time: the groups then add up to the blocks' wall time, not to the sum of
    their stages, and a block whose stages belong to several groups is shared in proportion to their own seconds."""
    seconds = {"begin": 1.0, "extract_orders": 2.0, "stage_cancellations": 1.0, "stage_on_hand": 2.0, "publish": 3.0,
               "apply_after_publish": 2.0, "refresh_storefront": 1.0, "check_load": 1.0}
    parallel = {"extract": {"wall": 3.0, "stages": ["extract_orders", "stage_cancellations", "stage_on_hand"]},
                "after_publish": {"wall": 2.0, "stages": ["apply_after_publish", "refresh_storefront", "check_load"]}}
    g = benchmark.grouped(seconds, parallel)
    assert g["extract"] == pytest.approx(1.0 + 3.0) and g["load"] == 3.0
    assert g["checks"] == pytest.approx(2.0 * 1 / 4) and g["side_effects"] == pytest.approx(2.0 * 3 / 4)
    assert sum(g.values()) == pytest.approx(1.0 + 3.0 + 3.0 + 2.0)
    assert sum(benchmark.grouped(seconds).values()) == pytest.approx(sum(seconds.values()))   # nothing side by side



def test_the_allocate_target_takes_the_allocate_stages_own_seconds():
    """Had the pools run side by side with another stage, their group's share of the block's wall time would be less
    than their own seconds: the target is taken on what the allocation itself took."""
    seconds = {"extract_stock": 1.0, "prepare_allocation": 0.5, "allocate[pool-A]": 6.0, "allocate[pool-B]": 1.5,
               "check_extract": 4.0, "publish": 5.0}
    parallel = {"x": {"wall": 8.0, "stages": ["check_extract", "allocate[pool-A]", "allocate[pool-B]"]}}
    groups = benchmark.grouped(seconds, parallel)
    assert groups["allocate"] == pytest.approx(0.5 + 8.0 * 7.5 / 11.5)
    res = {"floor": {"sql_fifo": 2.0},
           "cycle": {"cycle": 20.0, "stages": seconds, "groups": groups, "peak_rss_mb": 512.0}}
    got = benchmark.targets(res)
    assert got["allocate_vs_fifo"]["value"] == pytest.approx((0.5 + 6.0 + 1.5) / 2.0)
    assert got["cycle_vs_fifo"]["value"] == pytest.approx(10.0) and got["peak_rss_gb"]["value"] == 0.5
    assert "history_ratio" not in got


def test_the_ratios_take_each_cycle_over_the_floor_sampled_around_it():
    """A host that slows down for a while slows the cycle and the floor next to it alike: each cycle is divided by
    its own floor samples, and the median of those ratios taken (10, 12 and 10 here), not the median cycle over the
    median floor (36 / 3 = 12)."""
    stages = {"prepare_allocation": 0.5, "allocate[pool-A]": 3.5, "publish": 10.0}
    runs = [{"wall_seconds": w, "seconds": {k: v * f / 2 for k, v in stages.items()}, "floor": f}
            for w, f in ((20.0, 2.0), (36.0, 3.0), (40.0, 4.0))]
    res = {"floor": {"sql_fifo": 3.0, "sql_fifo_runs": [2.0, 3.0, 4.0]},
           "cycle": {"cycle": 36.0, "stages": stages, "peak_rss_mb": 900.0, "runs": runs}}
    got = benchmark.targets(res)
    assert got["cycle_vs_fifo"]["value"] == pytest.approx(10.0) and got["cycle_vs_fifo"]["met"]
    assert got["allocate_vs_fifo"]["value"] == pytest.approx(2.0)
    hruns = [{**r, "wall_seconds": r["wall_seconds"] * 1.5, "floor": r["floor"] * 1.25} for r in runs]
    res.update(history_cycle={"cycle": 54.0, "stages": stages, "peak_rss_mb": 900.0, "runs": hruns},
               history_floor={"sql_fifo": 3.75, "sql_fifo_runs": [2.5, 3.75, 5.0]})
    assert benchmark.targets(res)["history_ratio"]["value"] == pytest.approx(1.5)      # the target: cycles alone
    d = benchmark.diagnostics(res)
    assert d["history_ratio_over_floor"] == pytest.approx(1.2) and d["history_floor_ratio"] == pytest.approx(1.25)
    assert d["floor_spread"] == pytest.approx(2.5)
