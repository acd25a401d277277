"""`python -m sagaz ...` is the `sagaz` command."""

from sagaz.cli import main

main()
