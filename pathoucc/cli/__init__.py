"""Command line: a thin layer over the pipeline's functions, one module per command group. Bad input ends in one
line, no traceback."""

from pathoucc.cli import features, runs, tile, view  # noqa: F401  (each registers its commands on `app`)
from pathoucc.cli.app import app, main

__all__ = ["app", "main"]
