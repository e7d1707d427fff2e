"""Backorder cycle of an order management system: the business logic, with no Airflow import."""

from backorders import masking as _masking

_masking.install()     # customer emails never reach a log line in full, whichever handler writes it
