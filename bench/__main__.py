"""`python -m bench` runs the benchmark (same as `python -m bench.benchmark`)."""
from bench.benchmark import main

raise SystemExit(main())
