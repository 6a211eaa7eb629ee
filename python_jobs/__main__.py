"""`python -m python_jobs`: the same command line as `rp`."""

from python_jobs.cli import main

main()
