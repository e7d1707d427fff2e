"""Entry point of `python -m backorders`."""
import sys

from backorders.cli import main

sys.exit(main())
