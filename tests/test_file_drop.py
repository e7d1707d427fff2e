"""The file drop: *.json / *.jsonl order messages and *.csv stock feeds loaded into the landing tables, each file once;
unreadable lines quarantined by the run with the file name and line number."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from backorders import cycle, file_drop
from tests.conftest import order_message, table_rows

T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"


def test_stock_csv_rows_are_read_or_rejected_with_their_line_number():
    data = ("\ufeffsku,source_code,quantity,as_of,comment\n"
            "SKU-A,WH_PDX,5,2026-03-02T05:00:00Z,fine\n"
            "SKU-A,WH_NJ,-2,2026-03-02T05:00:00+01:00,negative is read: the run quarantines it\n"
            "SKU-A,WH_NJ,lots,2026-03-02T05:00:00Z,x\n"
            "SKU-A,WH_NJ,3,2026-03-02 05:00:00,no time zone\n"
            "SKU-A,WH_NJ,3,yesterday,x\n"
            "SKU-A,,3,2026-03-02T05:00:00Z,x\n"
            "SKU-A,WH_NJ,3\n"
            "\n"
            "SKU-A,WH_NJ,NaN,2026-03-02T05:00:00Z,x\n"
            "SKU-A,WH_NJ,1e400,2026-03-02T05:00:00Z,x\n").encode() + b"SKU-\xff,WH_NJ,1,2026-03-02T05:00:00Z,x\n"
    rows, rejects = file_drop.parse_stock(data)
    utc5 = datetime(2026, 3, 2, 5, tzinfo=timezone.utc)
    assert rows == [("WH_PDX", "SKU-A", Decimal(5), utc5), ("WH_NJ", "SKU-A", Decimal(-2), datetime(2026, 3, 2, 4,
                                                                                                   tzinfo=timezone.utc))]
    assert [(n, reason) for n, reason, _ in rejects] == [
        (4, "quantity is not a number: 'lots'"),
        (5, "as_of has no time zone: '2026-03-02 05:00:00'"),
        (6, "as_of is not an ISO 8601 date-time: 'yesterday'"),
        (7, "source_code is empty"),
        (8, "expected 5 fields, got 3"),
        (10, "quantity is not a number: 'NaN'"),
        (11, "quantity is out of range: '1e400'"),
        (12, "not UTF-8 text"),
    ]
    assert rejects[0][2] == "SKU-A,WH_NJ,lots,2026-03-02T05:00:00Z,x"
    # a header without the required columns rejects every line, each with its number
    rows, rejects = file_drop.parse_stock(b"sku,qty\nA,1\nB,2\n")
    assert rows == [] and [n for n, *_ in rejects] == [1, 2, 3]
    assert "lacks the column(s) source_code, quantity, as_of" in rejects[0][1]


def test_order_files_keep_every_message_as_text():
    msgs, rejects = file_drop.parse_orders("a.jsonl", b'{"a": 1}\n\n{not json\r\n\xff\xfe\n{"b":\x00}\n')
    assert msgs == ['{"a": 1}', "{not json"] and [(n, r) for n, r, _ in rejects] == \
        [(4, "not UTF-8 text"), (5, "contains a NUL character")]
    assert file_drop.parse_orders("b.json", b'{\n "x": 1\n}\n') == (['{\n "x": 1\n}\n'], [])
    assert file_drop.parse_orders("c.json", b"  \n")[1][0][1] == "empty file"


def test_files_are_loaded_once_and_bad_lines_are_quarantined_with_file_and_line(landing, migrated_url, tmp_path,
                                                                               monkeypatch):
    url = migrated_url
    folder = tmp_path / "landing"
    folder.mkdir()
    monkeypatch.setenv(file_drop.LANDING_ENV, str(folder))
    good = order_message("FD1", lines=[("SKU-FD", 2, None)])
    (folder / "orders-1.jsonl").write_bytes((good + "\n{broken\n").encode() + b"\xff\n")
    (folder / "order-2.json").write_text(order_message("FD2", lines=[("SKU-FD", 1, None)]))
    (folder / "stock-1.csv").write_text("source_code,sku,quantity,as_of\nWH_PDX,SKU-FD,2,2026-03-02T05:00:00Z\n"
                                        "WH_PDX,SKU-FD,two,2026-03-02T05:00:00Z\nWH_PDX,SKU-FD,-1,2026-03-02T05:30:00Z\n")
    (folder / "notes.txt").write_text("not a landing file")
    s = cycle.run_cycle(url, T1)
    assert (s["orders_created"], s["messages_quarantined"]) == (2, 1)          # FD1, FD2; "{broken" as a message
    assert table_rows(url, "SELECT file_name, kind, rows_loaded, rows_rejected FROM landing.file_loads ORDER BY 1") == [
        ("order-2.json", "orders", 1, 0), ("orders-1.jsonl", "orders", 2, 1), ("stock-1.csv", "stock", 2, 1)]
    quarantined = table_rows(url, "SELECT source, source_ref, reason FROM oms.quarantine ORDER BY 1, 2")
    assert ("file:orders-1.jsonl", "orders-1.jsonl:3", "not UTF-8 text") in quarantined
    assert ("file:stock-1.csv", "stock-1.csv:3", "quantity is not a number: 'two'") in quarantined
    assert ("landing.stock_levels", "WH_PDX/SKU-FD/2026-03-02T05:30:00Z", "quantity is negative: -1") in quarantined
    # FD1 and FD2 want 3; the readable feed said 2 (the negative row is ignored)
    assert table_rows(url, "SELECT sum(qty_allocated), sum(qty_backordered) FROM oms.order_lines") == [(2, 1)]
    (obs,) = table_rows(url, "SELECT observed FROM oms.dq_results WHERE check_id = 'extract.nothing_lost_stock'")[0]
    assert (obs["stock_rows_in"], obs["valid"], obs["quarantined"], obs["file_rows_quarantined"]) == (2, 1, 1, 2)
    # each file once: nothing new at T2, also not the same content under another name
    (folder / "copy-of-order-2.json").write_bytes((folder / "order-2.json").read_bytes())
    s = cycle.run_cycle(url, T2)
    assert s["messages_in"] == 0
    assert table_rows(url, "SELECT count(*) FROM landing.file_loads") == [(3,)]
    assert table_rows(url, "SELECT count(*) FROM oms.quarantine WHERE source LIKE 'file:%'") == [(2,)]


def test_no_landing_folder_means_no_file_drop(migrated_url, monkeypatch):
    monkeypatch.delenv(file_drop.LANDING_ENV, raising=False)
    assert file_drop.load_folder(migrated_url, T1) == {"files_loaded": 0, "files_skipped": 0, "messages": 0,
                                                       "stock_rows": 0, "rows_rejected": 0}
