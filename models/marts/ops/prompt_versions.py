"""Every prompt template version in the repository, and the labels that point at it: one row per
prompts/<name>/<version>.yml, labels from prompts/labels.yml.

The service renders these templates for /v1/context and logs the version it used with each
request, so ops_queries joins here and the lineage shows which prompt version served which query.
The files are read and checked by the service's own loader (python_jobs/serve/prompts.py): a file
the service would refuse fails this model with the same message.
"""

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from python_jobs.serve.prompts import load_prompts

SCHEMA = pa.schema(
    [
        ("prompt_name", pa.string()),
        ("prompt_version", pa.string()),
        ("version_number", pa.int64()),
        ("prompt_labels", pa.string()),
        ("is_production", pa.bool_()),
        ("is_staging", pa.bool_()),
        ("template_sha256", pa.string()),
        ("model_name", pa.string()),
        ("model_settings", pa.string()),
        ("release_note", pa.string()),
        ("created_on", pa.date32()),
        ("file_path", pa.string()),
    ]
)


def model(dbt, session):
    dbt.config(materialized="table")
    # dbt finds the config a Python model reads by parsing literal dbt.config.get calls.
    directory = Path(dbt.config.get("prompts_dir"))
    if not directory.is_dir():  # no prompts (yet): the service is not used; nothing to list
        return pa.Table.from_pylist([], schema=SCHEMA)
    catalog = load_prompts(directory)
    rows = []
    for name, versions in sorted(catalog.prompts.items()):
        for version, prompt in sorted(versions.items(), key=lambda item: int(item[0].removeprefix("v"))):
            labels = sorted(label for label, target in catalog.labels.get(name, {}).items() if target == version)
            rows.append(
                {
                    "prompt_name": name,
                    "prompt_version": version,
                    "version_number": int(version.removeprefix("v")),
                    "prompt_labels": ", ".join(labels) or None,
                    "is_production": "production" in labels,
                    "is_staging": "staging" in labels,
                    "template_sha256": hashlib.sha256(prompt.template.encode("utf-8")).hexdigest(),
                    "model_name": None if prompt.model.get("name") is None else str(prompt.model["name"]),
                    "model_settings": json.dumps(prompt.model, sort_keys=True, default=str),
                    "release_note": prompt.release_note.strip(),
                    "created_on": prompt.created,
                    "file_path": str(prompt.path),
                }
            )
    return pa.Table.from_pylist(rows, schema=SCHEMA)
