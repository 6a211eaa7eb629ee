"""Stage 7, observe: the ops marts reader, findings and alert sinks, the dashboard, and read-only SQL
for diagnosis. See docs/observability.md and docs/runbook.md."""
