"""db.copy_frame and db.read_frame: frames of every column kind move in and out of PostgreSQL unchanged."""
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from backorders import db

TABLE = """CREATE TABLE t (i bigint, f double precision, n bigint, b boolean, s text, ts timestamptz, o text,
                           d numeric)"""


def _load(url, frame, columns=None):
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t; " + TABLE)
        db.copy_frame(conn, frame, "t", columns)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT i, f, n, b, s, ts, o, d FROM t ORDER BY i")
        rows = cur.fetchall()
    conn.close()
    return rows


def test_every_column_kind_round_trips(db_url):
    frame = pd.DataFrame({
        "i": np.array([1, 2, 3, 4], dtype="int64"),
        "f": [1.5, np.nan, 2.0, -0.25],
        "n": pd.array([7, None, 2 ** 40, -4], dtype="Int64"),
        "b": [True, False, True, False],
        "s": ["plain", "tab\there", "new\nline and back\\slash", ""],
        "ts": pd.to_datetime(["2026-03-05T02:00:00.123456Z", None, "2026-01-01T00:00:00Z", "2026-12-31T23:59:59Z"],
                             utc=True, format="ISO8601"),
        "o": [None, "é ünïcode, \"quoted\"", "carriage\rreturn", "\\N"],
        "d": [10, None, 3.25, 2 ** 50],
    })
    rows = _load(db_url, frame)
    assert rows[0][:6] == (1, 1.5, 7, True, "plain", datetime(2026, 3, 5, 2, 0, 0, 123456, tzinfo=timezone.utc))
    assert rows[0][6] is None and rows[0][7] == 10
    assert rows[1][1] is None and rows[1][2] is None and rows[1][5] is None and rows[1][7] is None
    assert rows[1][4] == "tab\there"
    assert rows[2][4] == "new\nline and back\\slash" and rows[2][6] == "carriage\rreturn" and rows[2][2] == 2 ** 40
    assert rows[1][6] == "é ünïcode, \"quoted\""
    assert rows[3][4] == "" and rows[3][6] == "\\N"          # an empty string and a literal \N are not NULL
    assert rows[3][7] == 2 ** 50 and rows[2][1] == 2.0 and rows[3][2] == -4
    assert str(rows[0][7]) == "10.0"                       # a float column keeps its text, as pandas wrote it


def test_object_columns_of_mixed_scalars(db_url):
    frame = pd.DataFrame({"i": [1, 2, 3], "b": pd.Series([True, None, False], dtype=object),
                          "o": pd.Series([5, 2.5, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)], dtype=object)})
    rows = _load(db_url, frame, ["i", "b", "o"])
    assert [(r[0], r[3], r[6]) for r in rows] == [(1, True, "5"), (2, None, "2.5"), (3, False, "2026-01-02T03:04:05+00:00")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                                       blacklist_characters="\x00"))),
                min_size=1, max_size=20))
def test_any_text_round_trips(db_url, texts):
    frame = pd.DataFrame({"i": range(len(texts)), "s": pd.Series(texts, dtype=object)})
    rows = _load(db_url, frame, ["i", "s"])
    assert [r[4] for r in rows] == texts


@pytest.mark.parametrize("values", [[0, 7, 4095], [0, 4095, 4096], [-1, 0, 12], [2 ** 40, 3, 0]])
def test_integer_columns_round_trip_on_both_sides_of_the_lookup(db_url, values):
    """Small non-negative integers are written from a lookup table, the others one by one: both give the same text."""
    frame = pd.DataFrame({"i": np.array(values, dtype="int64"), "n": np.array(values[::-1], dtype="int64")})
    rows = _load(db_url, frame, ["i", "n"])
    assert sorted((r[0], r[2]) for r in rows) == sorted(zip(values, values[::-1]))
