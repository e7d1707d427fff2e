"""Alembic environment of the business database: runs the migrations against backorders_db."""
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table="alembic_version", version_table_schema="public",
                      transaction_per_migration=True)
    with context.begin_transaction():
        # one migration at a time per database, whoever starts it (CLI, a DAG task, a test)
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727171)")
        context.run_migrations()
    connection.commit()
engine.dispose()
