"""`python -m kdmt`: the command line, e.g. under `torchrun -m kdmt train-teacher ...`."""

from kdmt.cli import main

main()
