"""The queue view: a small read-only FastAPI app, server-rendered with Jinja2, charts as inline SVG (no CDN, no script).

Airflow mounts it at /backorders (see backorders_ui_plugin.py) behind its own login; `create_app` takes the database
URL provider and the auth dependency so that the tests can run it with uvicorn against a test database.
"""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import psycopg2
import psycopg2.errors
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from backorders import queue_views as qv
from backorders_ui import charts

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "templates"
URL_PREFIX = "/backorders"
DAG_ID = "backorder_cycle"


def _fmt_time(v) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def _fmt_num(v, digits: int = 0) -> str:
    if v is None:
        return ""
    return f"{float(v):,.{digits}f}"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters["t"] = _fmt_time
    env.filters["num"] = _fmt_num
    env.filters["pct"] = lambda v: "" if v is None else f"{float(v) * 100:.0f}%"
    return env


def airflow_db_url() -> str:
    """URL of the business database: BACKORDERS_UI_DB_URL (e.g. a member of the read-only role backorders_bi), else
    the Airflow connection backorders_db."""
    import os

    if os.environ.get("BACKORDERS_UI_DB_URL"):
        return os.environ["BACKORDERS_UI_DB_URL"]
    from airflow.models.connection import Connection

    from backorders.db import url_from_parts
    from backorders.settings import CONN_ID

    c = Connection.get_connection_from_secrets(CONN_ID)
    return url_from_parts(c.host, c.port, c.login, c.password, c.schema)


async def airflow_auth(request: Request) -> None:
    """Airflow's own login: the user of the request (bearer token, or the Airflow UI's JWT cookie) must be known to the
    auth manager and allowed to read the runs of backorder_cycle. Imports Airflow only when a page is asked for, so
    loading the plugin in the scheduler or a worker stays cheap."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api import security

    user = None
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        user = await security.resolve_user_from_token(auth[7:].strip())
    else:
        marker = getattr(security, "USER_INJECTED_BY_TRUSTED_MIDDLEWARE", None)
        injected = getattr(request.state, "user", None)
        if injected is not None and marker is not None and getattr(request.state, "user_authenticated_via", None) is marker:
            user = injected
        else:
            user = await security.resolve_user_from_token(request.cookies.get(COOKIE_NAME_JWT_TOKEN))
    allowed = get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                   details=DagDetails(id=DAG_ID), user=user)
    if not allowed:
        raise HTTPException(403, f"Forbidden: reading the runs of {DAG_ID} is needed to see the backorder queues")


def _login_url(request: Request) -> str | None:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=str(request.url))
    except Exception:  # noqa: BLE001 - outside Airflow there is no login page
        return None


def create_app(db_url: Callable[[], str] = airflow_db_url, auth: Callable | None = None) -> FastAPI:
    """The app. `auth` is a FastAPI dependency run before every page (Airflow's when None). Links are built from the
    path the app is mounted at (the request's root_path), so it works under Airflow's /backorders and alone."""
    env = _env()
    dependency = auth if auth is not None else airflow_auth
    app = FastAPI(title="Backorder queues", dependencies=[Depends(dependency)], docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(HTTPException)
    async def not_logged_in(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET":
            login = _login_url(request)
            if login:
                return RedirectResponse(login, status_code=303)
        page = env.get_template("error.html").render(status=exc.status_code, detail=exc.detail,
                                                     base=request.scope.get("root_path", ""),
                                                     login=_login_url(request) if exc.status_code == 401 else None)
        return HTMLResponse(page, status_code=exc.status_code)

    @app.exception_handler(psycopg2.Error)
    async def database_error(request: Request, exc: psycopg2.Error):
        log.warning("backorder queues: database error: %s", exc)
        detail = ("The business database has no oms schema yet: run backorder_cycle once."
                  if isinstance(exc, psycopg2.errors.UndefinedTable) else
                  f"The business database could not be read ({type(exc).__name__}); see the API server's log.")
        page = env.get_template("error.html").render(status=503, detail=detail, login=None,
                                                     base=request.scope.get("root_path", ""))
        return HTMLResponse(page, status_code=503)

    def render(name: str, request: Request, **ctx) -> HTMLResponse:
        f = ctx.get("filters")
        base_path = request.scope.get("root_path", "").rstrip("/")

        def link(path: str = "", **override) -> str:
            params = f.as_params(**override) if f is not None else {}
            return base_path + path + (("?" + urlencode(params)) if params else "")

        return HTMLResponse(env.get_template(name).render(base=base_path, link=link, request=request, **ctx))

    @app.get("/", response_class=HTMLResponse)
    def queues(request: Request):
        f = qv.Filters.from_params(request.query_params)
        with qv.read_only(db_url()) as conn:
            page = qv.allocation_queue(conn, f)
            hist = qv.aging_histogram(conn, f)
            trend = qv.fill_rate_trend(conn)
            return render("queues.html", request, tab="queue", filters=f, page=page, options=qv.filter_options(conn),
                          overview=qv.overview(conn),
                          aging_svg=charts.bar_chart([(b["bucket"], b["lines"]) for b in hist],
                                                     title="Waiting lines by age (days since the order; age filter not applied)"),
                          trend_svg=charts.line_chart(
                              [_fmt_time(r["run_at"]) for r in trend],
                              {"lines filled": [r["line_fill_rate"] for r in trend],
                               "backorders filled": [r["backorder_fill_rate"] for r in trend]},
                              title="Fill rate per run"))

    @app.get("/exceptions", response_class=HTMLResponse)
    def exceptions(request: Request):
        f = qv.Filters.from_params(request.query_params)
        with qv.read_only(db_url()) as conn:
            page = qv.exception_queue(conn, f)
            return render("exceptions.html", request, tab="exceptions", filters=f, page=page,
                          options=qv.filter_options(conn), overview=qv.overview(conn))

    @app.get("/lines/{order_id}/{line_id}", response_class=HTMLResponse)
    def line(request: Request, order_id: str, line_id: str):
        with qv.read_only(db_url()) as conn:
            detail = qv.line_detail(conn, order_id, line_id)
            if detail is None:
                raise HTTPException(404, f"no line {line_id} in order {order_id}")
            attempts = detail["attempts"]
            svg = charts.attempts_chart(
                [_fmt_time(a["checked_at"]) for a in attempts],
                [a["qty_needed"] for a in attempts], [a["qty_available"] for a in attempts],
                [a["qty_allocated"] for a in attempts]) if attempts else ""
            return render("line.html", request, tab="queue", filters=None, d=detail, attempts_svg=svg,
                          overview=qv.overview(conn))

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app
