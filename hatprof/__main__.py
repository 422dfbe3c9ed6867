"""`python -m hatprof` runs the `hatprof` command line."""
from hatprof.cli import main

main()
