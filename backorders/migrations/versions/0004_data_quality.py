"""data quality: results of the data-quality gates per run, and the file drop's bookkeeping.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DDL = r"""
CREATE TABLE IF NOT EXISTS oms.dq_results (
    run_at       timestamptz NOT NULL,
    stage        text NOT NULL CHECK (stage IN ('extract', 'allocate', 'load')),
    check_id     text NOT NULL,
    description  text NOT NULL,
    expectation  text NOT NULL,
    table_name   text NOT NULL,
    blocking     boolean NOT NULL,
    success      boolean NOT NULL,
    failing_rows bigint NOT NULL,
    examples     jsonb NOT NULL DEFAULT '[]'::jsonb,
    observed     jsonb,
    PRIMARY KEY (run_at, stage, check_id)
);
COMMENT ON TABLE oms.dq_results IS 'One row per data-quality check per run (Great Expectations on PostgreSQL): the latest execution of each T. A failed blocking check stopped the run before anything was published.';
COMMENT ON COLUMN oms.dq_results.run_at IS 'T of the run that was checked.';
COMMENT ON COLUMN oms.dq_results.stage IS 'The gate: extract (staged input), allocate (allocation invariants) or load (what was published).';
COMMENT ON COLUMN oms.dq_results.check_id IS 'Id of the check, as listed in include/rules/checks.yaml.';
COMMENT ON COLUMN oms.dq_results.description IS 'What the check expects, in words.';
COMMENT ON COLUMN oms.dq_results.expectation IS 'The Great Expectations expectation type that ran it (e.g. unexpected_rows_expectation).';
COMMENT ON COLUMN oms.dq_results.table_name IS 'The table the check ran on (its batch), schema-qualified.';
COMMENT ON COLUMN oms.dq_results.blocking IS 'true: a failure stops the run (block); false: a failure is only recorded and logged (warn).';
COMMENT ON COLUMN oms.dq_results.success IS 'Whether the check passed.';
COMMENT ON COLUMN oms.dq_results.failing_rows IS 'How many rows broke the expectation (0 when it passed).';
COMMENT ON COLUMN oms.dq_results.examples IS 'Up to a few failing rows (JSON list), customer emails and addresses masked.';
COMMENT ON COLUMN oms.dq_results.observed IS 'Figures the check observed, e.g. the nothing-lost balance of the run; null when none.';
CREATE INDEX IF NOT EXISTS dq_results_failed ON oms.dq_results (run_at) WHERE NOT success;

CREATE TABLE IF NOT EXISTS landing.file_loads (
    sha256        text PRIMARY KEY,
    file_name     text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('orders', 'stock')),
    size_bytes    bigint NOT NULL,
    received_at   timestamptz NOT NULL,
    rows_loaded   integer NOT NULL,
    rows_rejected integer NOT NULL
);
COMMENT ON TABLE landing.file_loads IS 'Files of the file drop loaded into the landing tables: each file (by content) once.';
COMMENT ON COLUMN landing.file_loads.sha256 IS 'SHA-256 of the file content: a file with the same content is never loaded twice.';
COMMENT ON COLUMN landing.file_loads.file_name IS 'Name of the file in the landing folder when it was loaded.';
COMMENT ON COLUMN landing.file_loads.kind IS 'orders (*.json, *.jsonl) or stock (*.csv).';
COMMENT ON COLUMN landing.file_loads.size_bytes IS 'Size of the file in bytes.';
COMMENT ON COLUMN landing.file_loads.received_at IS 'received_at given to its rows: T of the run that loaded it.';
COMMENT ON COLUMN landing.file_loads.rows_loaded IS 'Rows (messages or stock levels) written to the landing tables.';
COMMENT ON COLUMN landing.file_loads.rows_rejected IS 'Rows that could not be read, written to landing.file_rejects.';

CREATE TABLE IF NOT EXISTS landing.file_rejects (
    file_sha256 text NOT NULL REFERENCES landing.file_loads (sha256),
    file_name   text NOT NULL,
    line_number integer NOT NULL,
    received_at timestamptz NOT NULL,
    reason      text NOT NULL,
    raw         text,
    PRIMARY KEY (file_sha256, line_number)
);
CREATE INDEX IF NOT EXISTS file_rejects_received ON landing.file_rejects (received_at);
COMMENT ON TABLE landing.file_rejects IS 'Rows of dropped files that could not be read (bad CSV row, undecodable text): the run that covers received_at puts each in oms.quarantine.';
COMMENT ON COLUMN landing.file_rejects.file_sha256 IS 'The file (landing.file_loads.sha256).';
COMMENT ON COLUMN landing.file_rejects.file_name IS 'Name of the file.';
COMMENT ON COLUMN landing.file_rejects.line_number IS 'Line of the file, from 1 (the CSV header is line 1).';
COMMENT ON COLUMN landing.file_rejects.received_at IS 'When the file was loaded (as landing.file_loads.received_at).';
COMMENT ON COLUMN landing.file_rejects.reason IS 'Why the row could not be read, naming the column.';
COMMENT ON COLUMN landing.file_rejects.raw IS 'The line as read (control characters escaped).';
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS landing.file_rejects; DROP TABLE IF EXISTS landing.file_loads; "
               "DROP TABLE IF EXISTS oms.dq_results;")
