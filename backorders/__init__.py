"""Backorder cycle of an order management system: the business logic, with no Airflow import."""
