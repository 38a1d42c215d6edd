"""`python -m pathoucc.cli`: the console script."""

from pathoucc.cli import main

main()
