"""`python -m profiler` runs the `hatprof` command line."""
from profiler.cli import main

main()
