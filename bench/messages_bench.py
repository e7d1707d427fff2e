"""Micro-benchmark of the order message parser: per-message time of messages.parse_messages on demo messages.

Run: ``python -m bench.messages_bench [--lines N] [--repeat R]``. The demo generator (backorders.demo_data) makes the
messages of about N order lines (with its usual share of malformed ones); no database is needed. Prints the best of R
runs, in wall-clock and CPU time per message.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from backorders.demo_data import generate_demo
from backorders.messages import parse_messages


def demo_messages(n_lines: int) -> pd.DataFrame:
    messages = generate_demo(n_lines).order_messages.reset_index(drop=True)
    messages["message_id"] = range(1, len(messages) + 1)
    return messages[["message_id", "received_at", "body"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000, help="order lines of the demo messages (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, the best is reported (default 3)")
    args = parser.parse_args(argv)
    messages = demo_messages(args.lines)
    best_wall = best_cpu = float("inf")
    for _ in range(max(1, args.repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        batch = parse_messages(messages)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    n = len(messages)
    print(f"{n} messages -> {len(batch.orders)} orders, {len(batch.lines)} lines, {len(batch.rejects)} rejected")
    print(f"parse_messages: {best_wall:.2f} s wall ({best_wall / n * 1e3:.3f} ms/message), "
          f"{best_cpu:.2f} s CPU ({best_cpu / n * 1e3:.3f} ms/message), best of {max(1, args.repeat)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
