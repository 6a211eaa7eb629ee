"""Stage 4, index: the quality gate, the plan, the encoders, the LanceDB store and its upkeep, the
embedding job and its run record, verify and repair, and the snapshot for the ops marts.
See docs/embedding.md."""
