"""The backorder queues in the Airflow UI: an Airflow 3 plugin (FastAPI app + navigation entry) and the run-note
listener. The plugin class is in backorders_ui_plugin.py."""
