"""Airflow 3 plugin of the backorder project: the queue view (a FastAPI app under /backorders with a navigation entry
that embeds it in the Airflow UI, behind Airflow's own login) and the listener that writes run notes."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from backorders_ui import run_notes
from backorders_ui.app import URL_PREFIX, create_app


class BackordersPlugin(AirflowPlugin):
    name = "backorders"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Backorder queues"}]
    external_views = [
        {
            "name": "Backorder queues",
            "href": URL_PREFIX + "/",
            "url_route": "backorder-queues",       # embedded in the UI at /plugin/backorder-queues
            "destination": "nav",
        },
    ]
    listeners = [run_notes]
