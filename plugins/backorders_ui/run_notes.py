"""Listener that writes each backorder_cycle run's figures as the Airflow run's note.

The Task SDK (Airflow 3) gives a task no way to change its own Dag run's note: tasks talk to the Execution API, which
has no such call, and they have no metadata-database access. So the report.finish_run task pushes the note text as
the XCom `run_note`, and this listener, called by the scheduler (or by dag.test) in the same database session when the
run succeeds or fails, copies it into the run's note. Loaded with the plugin (backorders_ui_plugin.py).
"""
from __future__ import annotations

import logging

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

DAG_ID = "backorder_cycle"
NOTE_TASK = "report.finish_run"
NOTE_KEY = "run_note"


def _note_for(dag_run, session) -> str | None:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel

    row = session.scalars(
        select(XComModel).where(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                                XComModel.task_id == NOTE_TASK, XComModel.key == NOTE_KEY)).first()
    if row is None:
        return None
    value = XComModel.deserialize_value(row)
    return value if isinstance(value, str) else None


def _set_note(dag_run, fallback: str | None) -> None:
    if getattr(dag_run, "dag_id", None) != DAG_ID:
        return
    try:
        from sqlalchemy.orm import object_session

        from airflow import settings
        from airflow.models.dagrun import DagRunNote

        session = object_session(dag_run)
        if session is not None:                 # the scheduler: the run is in its session, which commits it
            note = _note_for(dag_run, session) or fallback
            if note:
                dag_run.note = note
            return
        # dag.test hands over a detached run: write the note row in the thread's scoped session (the one dag.test
        # commits), never in a second connection that would wait for the first one's locks
        session = settings.Session()
        note = _note_for(dag_run, session) or fallback
        if note:
            row = session.get(DagRunNote, dag_run.id)
            if row is None:
                row = DagRunNote(content=note)
                row.dag_run_id = dag_run.id
                session.add(row)
            else:
                row.content = note
            session.flush()
    except Exception:  # noqa: BLE001 - a note must never break scheduling
        log.exception("could not set the note of %s", getattr(dag_run, "run_id", "?"))


@hookimpl
def on_dag_run_success(dag_run, msg: str):
    _set_note(dag_run, None)


@hookimpl
def on_dag_run_failed(dag_run, msg: str):
    _set_note(dag_run, f"**Run failed** ({msg}); see `oms.pipeline_runs.error` and the failed task's log.")
