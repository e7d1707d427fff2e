"""Where the project's files live and which environment variables steer it."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("BACKORDERS_HOME", Path(__file__).resolve().parent.parent))
INCLUDE_DIR = PROJECT_ROOT / "include"
SQL_DIR = INCLUDE_DIR / "sql"
TEMPLATES_DIR = INCLUDE_DIR / "templates"
DEFAULT_RULES_DIR = INCLUDE_DIR / "rules"
EMBEDDED_PGDATA = Path(os.environ.get("BACKORDERS_PGDATA", PROJECT_ROOT / ".pgdata"))

CONN_ID = "backorders_db"
SMTP_CONN_ID = "backorders_smtp"
PAYMENTS_CONN_ID = "backorders_payments"
CONN_ENV = "AIRFLOW_CONN_BACKORDERS_DB"


def rules_dir() -> Path:
    """The rules folder: BACKORDERS_RULES_DIR, or include/rules of the project."""
    return Path(os.environ.get("BACKORDERS_RULES_DIR", DEFAULT_RULES_DIR))


def read_sql(name: str) -> str:
    """Text of include/sql/<name>.sql."""
    return (SQL_DIR / f"{name}.sql").read_text()
