"""Connections to the business database, and bulk moves of frames in and out with COPY."""
from __future__ import annotations

import functools
import json
import os
import queue
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence
from urllib.parse import quote, unquote, urlsplit

import psycopg2
import psycopg2.extensions

from backorders.settings import CONN_ENV


class DatabaseNotConfigured(RuntimeError):
    """No backorders_db connection is configured."""


def url_from_airflow_conn(value: str) -> str:
    """Turn an AIRFLOW_CONN_* value (URI or JSON) into a libpq/SQLAlchemy postgresql:// URL."""
    value = value.strip()
    if value.startswith("{"):
        c = json.loads(value)
        host = c.get("host") or ""
        login = c.get("login") or ""
        password = c.get("password") or ""
        port = c.get("port")
        schema = c.get("schema") or "postgres"
        auth = quote(login, safe="") + (":" + quote(password, safe="") if password else "")
        if host.startswith("/"):
            return f"postgresql://{auth}@/{schema}?host={quote(host)}" + (f"&port={port}" if port else "")
        return f"postgresql://{auth}@{host}{':' + str(port) if port else ''}/{schema}"
    parts = urlsplit(value)
    scheme = "postgresql"
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg2"):
        raise DatabaseNotConfigured(f"{CONN_ENV}: expected a postgres:// connection, got scheme {parts.scheme!r}")
    netloc = parts.netloc
    host = parts.hostname or ""
    if host.startswith("%2f") or host.startswith("/"):
        # Airflow-style URI with the socket directory url-encoded as the host
        auth = netloc.rsplit("@", 1)[0] if "@" in netloc else ""
        q = f"host={quote(unquote(host))}"
        return f"{scheme}://{auth}@{parts.path or '/postgres'}?{q}"
    return f"{scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def database_url() -> str:
    """URL of the business database: BACKORDERS_DB_URL, else the Airflow connection backorders_db from the environment."""
    if os.environ.get("BACKORDERS_DB_URL"):
        return os.environ["BACKORDERS_DB_URL"]
    if os.environ.get(CONN_ENV):
        return url_from_airflow_conn(os.environ[CONN_ENV])
    raise DatabaseNotConfigured(
        f"no business database configured: set {CONN_ENV} (or BACKORDERS_DB_URL), "
        "or run `./dev.sh db start` to start the embedded PostgreSQL"
    )


def connect(url: str | None = None) -> psycopg2.extensions.connection:
    """A psycopg2 connection (autocommit off) to the business database."""
    conn = psycopg2.connect(url or database_url())
    conn.autocommit = False
    return conn


@contextmanager
def transaction(url: str | None = None) -> Iterator[psycopg2.extensions.connection]:
    """A connection whose work is committed on success and rolled back on error."""
    conn = connect(url)
    try:
        yield conn
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def why_row_triggers_needed(cur, tables: Sequence[str]) -> str | None:
    """None when this session may switch off row triggers on tables for its own transaction (SET LOCAL
    session_replication_role = replica) because the only ones there are PostgreSQL's foreign-key checks; else why not.

    Two conditions: the role may set the parameter (a superuser, or on PostgreSQL 15+ GRANT SET ON PARAMETER
    session_replication_role), and no trigger or rule besides the foreign keys' is on the tables (the setting would
    silently skip them too, whoever added them)."""
    cur.execute("SELECT current_setting('server_version_num')::int >= 150000")
    if cur.fetchone()[0]:
        cur.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
    else:
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if not cur.fetchone()[0]:
        return "the role may not set session_replication_role"
    cur.execute("""
        SELECT string_agg(what, ', ' ORDER BY what) FROM (
            SELECT 'trigger ' || tgname || ' on ' || tgrelid::regclass AS what FROM pg_trigger
            WHERE NOT tgisinternal AND tgenabled <> 'D' AND tgrelid = ANY (%(t)s::regclass[])
            UNION ALL
            SELECT 'rule ' || rulename || ' on ' || ev_class::regclass FROM pg_rewrite
            WHERE ev_class = ANY (%(t)s::regclass[]) AND rulename <> '_RETURN') x""", {"t": list(tables)})
    found = cur.fetchone()[0]
    return f"{found} would be skipped too" if found else None


def key_ranges(cur, table: str, key: str, size: int) -> list[tuple]:
    """The distinct values of table.key cut into ranges of `size` values, in key order: (after, upto) pairs, a value
    v in a range when after < v <= upto (after None for the first). No range when the table is empty."""
    cur.execute(f"""SELECT k FROM (SELECT k, row_number() OVER (ORDER BY k) AS n, count(*) OVER () AS total
                                   FROM (SELECT DISTINCT {key} AS k FROM {table}) d) x
                    WHERE n %% %(size)s = 0 OR n = total ORDER BY 1""", {"size": max(int(size), 1)})
    ends = [v for v, in cur.fetchall()]
    return list(zip([None] + ends[:-1], ends))


def read_frame(conn, sql: str, params: dict | Sequence | None = None, dtypes: dict | None = None,
               parse_dates: Sequence[str] = ()):
    """Run a SELECT and return it as a pandas frame, moved with COPY ... TO STDOUT (fast at millions of rows).

    A second thread runs the COPY and queues what arrives in blocks, while pandas parses the blocks already there (its
    tokenizer and the wait for the socket both release the GIL): a quarter faster at a million rows."""
    import pandas as pd

    with conn.cursor() as cur:
        query = cur.mogrify(sql, params).decode() if params is not None else sql
    blocks: queue.Queue = queue.Queue(maxsize=64)
    sink = _QueuedRows(blocks)

    def fetch() -> None:
        try:
            with conn.cursor() as cur:
                cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true, ENCODING 'UTF8')", sink)
            sink.flush()
            blocks.put(None)
        except BaseException as exc:      # raised in the caller's thread
            blocks.put(exc)

    fetcher = threading.Thread(target=fetch, name="copy-out", daemon=True)
    fetcher.start()
    try:
        frame = pd.read_csv(sink, dtype=dtypes or None, keep_default_na=False, na_values=[""], encoding="utf-8")
    finally:
        _let_end(fetcher, blocks)         # if parsing failed: the COPY runs to its end (the connection stays usable)
    for col in parse_dates:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


class _QueuedBlocks:
    """A file whose read() returns, in order, the blocks another thread queues: None ends it, an exception is raised in
    the reader's thread."""

    def __init__(self, blocks: queue.Queue, empty: str | bytes):
        self.blocks, self.empty, self.ended = blocks, empty, False

    def read(self, size: int = -1):
        if self.ended:
            return self.empty
        block = self.blocks.get()
        if isinstance(block, BaseException):
            self.ended = True
            raise block
        if block is None:
            self.ended = True
            return self.empty
        return block


class _QueuedRows(_QueuedBlocks):
    """Both ends of read_frame's COPY: the fetching thread writes the rows (joined in blocks of ROWS into the queue),
    pandas reads the blocks."""

    ROWS = 5_000

    def __init__(self, blocks: queue.Queue):
        super().__init__(blocks, b"")
        self.rows: list[bytes] = []

    def write(self, row: bytes) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.blocks.put(b"".join(self.rows))
        self.rows = []


def _let_end(thread: threading.Thread, blocks: queue.Queue) -> None:
    """Wait for a thread that queues blocks to end, taking what it still queues (after an error on the reading side
    it may be waiting on a full queue)."""
    while thread.is_alive():
        try:
            blocks.get_nowait()
        except queue.Empty:
            thread.join(0.01)


COPY_BLOCK_ROWS = 20_000      # rows turned into COPY text at a time (copy_frame)


def copy_frame(conn, frame, table: str, columns: Sequence[str] | None = None, block_rows: int = COPY_BLOCK_ROWS) -> int:
    """Append a frame to a table with COPY ... FROM STDIN; returns the row count. Table and column names are ours, not input.

    Columns are turned into COPY text column-wise (numpy and pandas string operations, see _copy_text), block_rows rows
    at a time, by a second thread: the server parses and writes one block while the next is built (the COPY waits for
    the socket without holding the GIL). At a million rows this halves the time of the write. Missing values (None,
    NaN, NaT, NA) are NULL. If building the text fails, the COPY is aborted and the error raised."""
    columns = list(columns or frame.columns)
    if len(frame) == 0:
        return 0
    blocks: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()
    failed: list[BaseException] = []

    def build() -> None:
        try:
            for start in range(0, len(frame), block_rows):
                if stop.is_set():
                    return
                part = frame.iloc[start:start + block_rows]
                texts = [_copy_text(part[c]) for c in columns]
                blocks.put("\n".join(map("\t".join, zip(*texts))) + "\n")
            blocks.put(None)
        except BaseException as exc:      # handed to the COPY, which aborts; then raised as it was
            failed.append(exc)
            blocks.put(exc)

    builder = threading.Thread(target=build, name=f"copy-text {table}", daemon=True)
    builder.start()
    cols = ", ".join(f'"{c}"' for c in columns)
    try:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT text)", _QueuedBlocks(blocks, ""),
                            size=1 << 16)
    except psycopg2.errors.QueryCanceled as exc:
        if failed:
            raise failed[0] from exc
        raise
    finally:
        stop.set()                        # a COPY that failed: the builder stops at its next block
        _let_end(builder, blocks)
    return len(frame)


@functools.lru_cache(maxsize=1)
def _small_int_text():
    """str(0) .. str(4095) as an object array: the texts of small non-negative integers (quantities) by lookup."""
    import numpy as np

    return np.array([str(i) for i in range(4096)], dtype=object)


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def _copy_text(col) -> list[str]:
    """One column as COPY text-format fields: \\N for missing, backslash escapes in strings, ISO 8601 timestamps."""
    import numpy as np
    import pandas as pd

    dtype = col.dtype
    if pd.api.types.is_bool_dtype(dtype) and not isinstance(dtype, pd.BooleanDtype):
        return np.where(col.to_numpy(), "t", "f").tolist()
    if pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        values = col.to_numpy()
        if len(values) and 0 <= values.min() and values.max() < 4096:    # quantities: look the texts up
            return _small_int_text()[values].tolist()
        return list(map(str, values.tolist()))          # Python ints: twice as fast as numpy's astype(str)
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype) \
            or pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        missing = col.isna().to_numpy()
    else:       # text: pandas' isna of a python-backed string column goes value by value; isnaobj is C-level
        missing = pd.isna(col.to_numpy(dtype=object))
    if isinstance(dtype, pd.DatetimeTZDtype):                     # one vectorized call, in UTC
        values = col.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        out = np.datetime_as_string(values, unit="us", timezone="UTC").astype(object)
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        out = col.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").to_numpy(dtype=object, na_value=None)
    elif pd.api.types.is_float_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        out = col.to_numpy().astype(str).astype(object)          # repr of each float ('2.0'), as to_csv wrote them
    elif pd.api.types.is_integer_dtype(dtype):                   # nullable integers
        out = np.array([str(v) for v in col.to_numpy(dtype=object, na_value=0)], dtype=object)
    else:
        out = col.to_numpy(dtype=object)
        if pd.api.types.infer_dtype(out, skipna=True) not in ("string", "empty"):   # C-level: all str, or missing
            out = np.array([v if type(v) is str else _scalar_text(v) for v in out], dtype=object)
        present = out[~missing]
        joined = "".join(present)              # one C-level pass decides whether any value needs escaping
        if any(ch in joined for ch in _ESCAPES):
            out = out.copy()                   # to_numpy may return a read-only view of the frame's data
            out[~missing] = np.array([v.translate(_ESCAPE_TABLE) for v in present], dtype=object)
    if missing.any():
        out = np.where(missing, "\\N", out)
    return out.tolist()


def _scalar_text(v) -> str:
    """A non-string scalar of an object column as COPY text (booleans as t/f, timestamps ISO 8601)."""
    import datetime as _dt

    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return str(v)


def url_from_parts(host: str | None, port: int | None, login: str | None, password: str | None,
                   database: str | None) -> str:
    """A postgresql:// URL from connection fields (an Airflow Connection's host, port, login, password, schema)."""
    auth = quote(login or "", safe="") + (":" + quote(password, safe="") if password else "")
    database = database or "postgres"
    if host and host.startswith("/"):
        return f"postgresql://{auth}@/{database}?host={quote(host)}" + (f"&port={port}" if port else "")
    return f"postgresql://{auth}@{host or 'localhost'}{':' + str(port) if port else ''}/{database}"
