"""Run backorder_cycle at several run times in one process with dag.test (what `airflow dags test` does, without
paying Airflow's start-up once per run).

Usage: python scripts/run_dag.py [--simulate-logistics] T [T ...]
Prints one line `@@RUN {json}` per run (state, seconds); everything else on stdout is Airflow's task log.
--simulate-logistics confirms older shipment requests before each run, as the demo's stand-in for logistics.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("times", nargs="+")
    parser.add_argument("--simulate-logistics", action="store_true")
    args = parser.parse_args(argv)

    from airflow.utils.cli import get_bagged_dag

    dag = get_bagged_dag(None, "backorder_cycle")   # parses the DAG and serializes it to the metadata DB
    for t in args.times:
        when = datetime.fromisoformat(t)
        confirmed = 0
        if args.simulate_logistics:
            from backorders.cli import simulate_logistics
            from backorders.db import database_url

            confirmed = simulate_logistics(database_url(), when)
        started = time.perf_counter()
        dr = dag.test(logical_date=when)
        state = str(getattr(dr.state, "value", dr.state))
        print("@@RUN " + json.dumps({"run_at": t, "state": state, "seconds": round(time.perf_counter() - started, 2),
                                     "run_id": dr.run_id, "confirmed": confirmed}), flush=True)
        if state != "success":
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
