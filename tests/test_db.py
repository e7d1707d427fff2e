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


def _load(url, frame, columns=None, block_rows=db.COPY_BLOCK_ROWS):
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t; " + TABLE)
        assert db.copy_frame(conn, frame, "t", columns, block_rows=block_rows) == len(frame)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT i, f, n, b, s, ts, o, d FROM t ORDER BY i")
        rows = cur.fetchall()
    conn.close()
    return rows


@pytest.mark.parametrize("block_rows", [db.COPY_BLOCK_ROWS, 3, 1])
def test_every_column_kind_round_trips(db_url, block_rows):
    """Whatever the blocks the text is built in (the default: one block for four rows; 3: two blocks, 1: four)."""
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
    rows = _load(db_url, frame, block_rows=block_rows)
    assert len(rows) == 4
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
                min_size=1, max_size=20), st.integers(1, 25))
def test_any_text_round_trips(db_url, texts, block_rows):
    frame = pd.DataFrame({"i": range(len(texts)), "s": pd.Series(texts, dtype=object)})
    rows = _load(db_url, frame, ["i", "s"], block_rows=block_rows)
    assert [r[4] for r in rows] == texts


@pytest.mark.parametrize("values", [[0, 7, 4095], [0, 4095, 4096], [-1, 0, 12], [2 ** 40, 3, 0]])
def test_integer_columns_round_trip_on_both_sides_of_the_lookup(db_url, values):
    """Small non-negative integers are written from a lookup table, the others one by one: both give the same text."""
    frame = pd.DataFrame({"i": np.array(values, dtype="int64"), "n": np.array(values[::-1], dtype="int64")})
    rows = _load(db_url, frame, ["i", "n"])
    assert sorted((r[0], r[2]) for r in rows) == sorted(zip(values, values[::-1]))


class _Unprintable:
    def __str__(self):
        raise ValueError("this value has no text")


def _copy_threads(prefix: str = "copy-text"):
    """The helper threads of copy_frame ("copy-text <table>") or of read_frame ("copy-out") still alive."""
    import threading

    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_a_value_that_cannot_be_written_aborts_the_copy_and_nothing_is_written(db_url):
    """The text of the third block fails after two blocks went to the server: the COPY is aborted with that error (no
    partial table is left to commit), and the thread that built the text has ended."""
    frame = pd.DataFrame({"i": range(6), "o": pd.Series(["a", "b", "c", "d", _Unprintable(), "f"], dtype=object)})
    with db.transaction(db_url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t; " + TABLE)
    with pytest.raises(ValueError, match="has no text"):
        with db.transaction(db_url) as conn:
            db.copy_frame(conn, frame, "t", ["i", "o"], block_rows=2)
    assert not _copy_threads()
    with db.transaction(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone()[0] == 0
        db.copy_frame(conn, frame.iloc[:4], "t", ["i", "o"], block_rows=2)     # and a COPY after it works
        cur.execute("SELECT string_agg(o, '' ORDER BY i) FROM t")
        assert cur.fetchone()[0] == "abcd"


def test_a_copy_the_server_refuses_raises_and_leaves_no_thread_waiting(db_url):
    """The server refuses the first row: the error is PostgreSQL's, naming the value; the builder has ended."""
    frame = pd.DataFrame({"i": pd.Series(["not a number"] + [str(k) for k in range(1, 200)], dtype=object)})
    with pytest.raises(psycopg2.errors.InvalidTextRepresentation, match="not a number"):
        _load(db_url, frame, ["i"], block_rows=1)
    assert not _copy_threads()


class _EndsTheSession:
    """A value whose text, when built, terminates the PostgreSQL session the COPY runs in (from another one)."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid

    def __str__(self):
        with psycopg2.connect(self.url) as other, other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (self.pid,))
        other.close()
        return "x"


def test_a_copy_cut_off_midway_raises_and_leaves_no_thread_waiting(db_url):
    """The connection is lost while the builder still has many more blocks to queue than the queue holds: the COPY
    stops reading, raises, and the builder is not left blocked on the full queue."""
    import time

    with db.transaction(db_url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS t; " + TABLE)
    conn = db.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        values = ["a", "b", _EndsTheSession(db_url, pid)] + [f"v{k}" for k in range(2000)]
        frame = pd.DataFrame({"i": range(len(values)), "o": pd.Series(values, dtype=object)})
        with pytest.raises(psycopg2.Error):
            db.copy_frame(conn, frame, "t", ["i", "o"], block_rows=1)
    finally:
        conn.close()
    time.sleep(0.2)
    assert not _copy_threads()


def test_read_frame_of_many_blocks_reads_every_row_in_order(db_url):
    """More rows than several of the blocks the COPY is queued in; text with commas, quotes, line breaks, non-ASCII
    and empty strings; NULLs; timestamps parsed in UTC."""
    conn = db.connect(db_url)
    try:
        frame = db.read_frame(conn, """
            SELECT g AS i, CASE WHEN g %% 7 = 0 THEN NULL WHEN g %% 11 = 0 THEN 'é, "q"' || chr(10) || 'ü' ELSE 'r' || g END AS s,
                   timestamptz '2026-03-05 02:00:00+00' + g * interval '1 second' AS ts
            FROM generate_series(1, %(n)s) g ORDER BY g""", {"n": 12_345},
                              dtypes={"i": "int64", "s": "object"}, parse_dates=["ts"])
    finally:
        conn.close()
    assert len(frame) == 12_345 and frame["i"].tolist() == list(range(1, 12_346))
    assert frame["s"].isna().sum() == 12_345 // 7
    assert frame.loc[10, "s"] == 'é, "q"\nü' and frame.loc[0, "s"] == "r1"
    assert frame.loc[12_344, "ts"] == pd.Timestamp("2026-03-05 02:00:00", tz="UTC") + pd.Timedelta(seconds=12_345)
    assert not _copy_threads("copy-out")


def test_read_frame_raises_the_servers_error_midway(db_url):
    """The query fails after several blocks have arrived: PostgreSQL's error is raised, not a truncated frame."""
    conn = db.connect(db_url)
    try:
        with pytest.raises(psycopg2.errors.DivisionByZero):
            db.read_frame(conn, "SELECT g, 1 / (g - 9000) AS x FROM generate_series(1, 20000) g")
    finally:
        conn.close()
    assert not _copy_threads("copy-out")


def test_read_frame_that_pandas_cannot_parse_leaves_the_connection_usable(db_url):
    """A column that does not fit the asked dtype fails in pandas early, with far more rows still to come than the
    queue holds; the COPY still runs to its end, so the connection is usable afterwards, and no thread is left
    waiting."""
    conn = db.connect(db_url)
    try:
        with pytest.raises(ValueError):
            db.read_frame(conn, "SELECT g, CASE WHEN g = 15000 THEN 'x' ELSE g::text END AS n "
                                "FROM generate_series(1, 600000) g", dtypes={"n": "int64"})
        assert not _copy_threads("copy-out")
        assert db.read_frame(conn, "SELECT 41 + 1 AS answer")["answer"].tolist() == [42]
    finally:
        conn.close()
