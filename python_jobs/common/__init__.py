"""What every stage shares: settings, errors and exit codes, the warehouse connection, run ledgers,
failpoints, output helpers and SQL literals. Imports no other package of python_jobs."""
