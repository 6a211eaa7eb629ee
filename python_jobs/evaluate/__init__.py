"""Stage 6, evaluate: evaluation sets, ranking metrics, runs with gates and history, and any BEIR
dataset end to end. See docs/evaluation.md."""
