"""The run lock: at most one backorder cycle runs against a business database at a time.

A run is several Airflow tasks in separate processes (on separate workers under the CeleryExecutor), so a session-level
advisory lock cannot span it. The run therefore holds a **lease**: the single row of `oms.run_lock`, taken by
`cycle.begin_run` and given back by `cycle.finish_run` / `cycle.fail_run`. The lease is read and changed only under the
transaction-level advisory lock `RUN_LOCK_KEY` (taken by begin_run and by publish), so two runs can never both think
they hold it, and publish re-checks inside its single transaction that its run still holds the lease.

A lease is stale, and is taken over with a warning, when the run holding it is no longer RUNNING in
`oms.pipeline_runs` (it ended without giving the lease back), when it was taken longer ago than the TTL
(BACKORDERS_RUN_LOCK_TTL_MINUTES, default 720), or when an in-process holder on this host has no process any more.
Nothing here imports Airflow.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger(__name__)

LOCK_NAME = "backorder_cycle"
RUN_LOCK_KEY = 727172          # pg_advisory_xact_lock key: begin_run, publish, and every change of the lease
DEFAULT_TTL_MINUTES = 720


class RunLocked(RuntimeError):
    """Another run holds the run lock; this run has to wait (nothing of it was written)."""

    def __init__(self, message: str, holder: "Lease"):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Lease:
    run_at: datetime | None
    holder: str | None
    acquired_at: datetime | None
    holder_status: str | None = None

    @property
    def held(self) -> bool:
        return self.run_at is not None

    def describe(self) -> str:
        if not self.held:
            return "free"
        return (f"held by the run at {self.run_at.isoformat()} ({self.holder or 'unknown holder'}, "
                f"since {self.acquired_at.isoformat() if self.acquired_at else '?'}, "
                f"run status {self.holder_status or 'none'})")


def in_process_holder() -> str:
    """The holder name of a run that is not an Airflow run: host and process id."""
    return f"inprocess:{socket.gethostname()}:{os.getpid()}"


def ttl_minutes() -> float:
    return float(os.environ.get("BACKORDERS_RUN_LOCK_TTL_MINUTES", DEFAULT_TTL_MINUTES))


def _process_gone(holder: str | None) -> bool:
    """True when the holder is an in-process run on this host whose process has ended."""
    if not holder or not holder.startswith("inprocess:"):
        return False
    try:
        _, host, pid = holder.split(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read(cur, for_update: bool = False) -> Lease:
    """The lease as it is now (with the status of the holder's run); creates the row on first use."""
    cur.execute("INSERT INTO oms.run_lock (lock_name) VALUES (%s) ON CONFLICT (lock_name) DO NOTHING", (LOCK_NAME,))
    cur.execute(f"""
        SELECT l.held_by_run_at, l.airflow_run_id, l.acquired_at, r.status
        FROM oms.run_lock l LEFT JOIN oms.pipeline_runs r ON r.run_at = l.held_by_run_at
        WHERE l.lock_name = %s {'FOR UPDATE OF l' if for_update else ''}""", (LOCK_NAME,))
    run_at, holder, acquired_at, status = cur.fetchone()
    return Lease(run_at, holder, acquired_at, status)


def stale_reason(cur, lease: Lease) -> str | None:
    """Why a held lease may be taken over, or None while its holder may still be working."""
    if lease.holder_status != "RUNNING":
        return f"its run is {lease.holder_status or 'gone'}"
    cur.execute("SELECT clock_timestamp() - %s > %s * interval '1 minute'", (lease.acquired_at, ttl_minutes()))
    if cur.fetchone()[0]:
        return f"it is older than the TTL of {ttl_minutes():g} minutes"
    if _process_gone(lease.holder):
        return "its process has ended"
    return None


def acquire(cur, t: datetime, holder: str) -> Lease:
    """Take the lease for the run at T (inside the caller's transaction, under RUN_LOCK_KEY).

    Taking it again for the same T and holder (a retried task, a re-run of the same Airflow run) is allowed.
    Raises RunLocked when another live run holds it."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (RUN_LOCK_KEY,))
    lease = read(cur, for_update=True)
    if lease.held and not (lease.run_at == t and lease.holder == holder):
        why = stale_reason(cur, lease)
        if why is None:
            raise RunLocked(
                f"run at {t.isoformat()} ({holder}) waits: oms.run_lock is {lease.describe()}. "
                "It is given back when that run finishes or fails. If that run is dead, mark it failed in Airflow "
                "(its failure callback gives the lease back) or, after checking, release it by hand: "
                "UPDATE oms.run_lock SET held_by_run_at = NULL, airflow_run_id = NULL, acquired_at = NULL;",
                lease)
        log.warning("run lock: taking over the lease %s because %s", lease.describe(), why)
    cur.execute("UPDATE oms.run_lock SET held_by_run_at = %s, airflow_run_id = %s, acquired_at = clock_timestamp() "
                "WHERE lock_name = %s", (t, holder, LOCK_NAME))
    log.info("run lock: taken by the run at %s (%s); no other run can start until it finishes", t.isoformat(), holder)
    return lease


def check_held(cur, t: datetime) -> None:
    """Raise RunLocked unless the run at T holds the lease (publish calls it inside its transaction)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (RUN_LOCK_KEY,))
    lease = read(cur, for_update=True)
    if lease.run_at != t:
        raise RunLocked(f"run at {t.isoformat()} does not hold oms.run_lock any more ({lease.describe()}); "
                        "nothing was published. Run it again when the other run has finished.", lease)


def release(cur, t: datetime, holder: str | None = None) -> bool:
    """Give the lease back if the run at T (and, when given, this holder) holds it. Returns whether it did."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (RUN_LOCK_KEY,))
    cur.execute("UPDATE oms.run_lock SET held_by_run_at = NULL, airflow_run_id = NULL, acquired_at = NULL "
                "WHERE lock_name = %s AND held_by_run_at = %s AND (%s::text IS NULL OR airflow_run_id = %s)",
                (LOCK_NAME, t, holder, holder))
    done = cur.rowcount > 0
    if done:
        log.info("run lock: given back by the run at %s", t.isoformat())
    return done


def current(url: str) -> Lease:
    """The lease as it is now (for operators and the UI)."""
    from backorders import db

    with db.transaction(url) as conn, conn.cursor() as cur:
        return read(cur)
