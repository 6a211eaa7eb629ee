"""Versioned prompt templates: files in the repository, resolved by name, version or label.

    prompts/<name>/<version>.yml   template (Jinja2), model (the settings it was written for),
                                   release_note, created
    prompts/labels.yml             {<name>: {production: v1, staging: v2}}

A request names a prompt as `name` (its `production` label), `name@v2` (a version) or `name:staging`
(a label). The response and the query log carry the resolved `name@version`, so every answer can be
traced to the exact template (dbt lists the versions too: the `prompt_versions` model).

Templates are rendered in Jinja2's sandbox with strict undefined variables. They get `query`, `chunks`
(each {n, doc_id, chunk_id, doc_title, heading_path, text}) and `context` (the chunks as numbered
citation blocks, python_jobs/serve/context.py). Every file is read, checked and test-rendered when the
service starts and whenever a file changes, so a broken template is found before a request needs it;
a broken change keeps the prompts read before.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from python_jobs.common.errors import ConfigError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.yml"
DEFAULT_LABEL = "production"
NAME = r"[a-z0-9][a-z0-9_-]*"
VERSION = r"v[0-9]+"
LABEL = r"[a-z][a-z0-9_-]*"
REFERENCE = re.compile(rf"^(?P<name>{NAME})(?:@(?P<version>{VERSION})|:(?P<label>{LABEL}))?$")
_ENVIRONMENT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_compiled = lru_cache(maxsize=256)(_ENVIRONMENT.from_string)  # one compile per template text
_SAMPLE_CHUNK = {
    "n": 1,
    "doc_id": "doc",
    "chunk_id": "doc:1:000",
    "doc_title": "T",
    "heading_path": "T > S",
    "text": "x",
}


class PromptError(ValueError):
    """A prompt reference that resolves to nothing; the message lists what exists."""


class PromptFile(BaseModel):
    """The keys of one prompts/<name>/<version>.yml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(min_length=1)
    model: dict[str, Any]
    release_note: str = Field(min_length=1)
    created: date


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    template: str
    model: dict[str, Any]
    release_note: str
    created: date
    path: Path
    label: str | None = None  # the label it was resolved through, if any

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, query: str, chunks: list[dict[str, Any]], context: str) -> str:
        return _compiled(self.template).render(query=query, chunks=chunks, context=context)


@dataclass
class PromptCatalog:
    directory: Path
    prompts: dict[str, dict[str, Prompt]] = field(default_factory=dict)  # name -> version -> prompt
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> label -> version

    def resolve(self, reference: str) -> Prompt:
        match = REFERENCE.match(reference or "")
        if not match:
            raise PromptError(
                f"prompt {reference!r} is not a prompt reference: use name, name@v2 or name:label "
                f"(names and labels in lowercase letters, digits, '_' and '-')"
            )
        name, version, label = match.group("name", "version", "label")
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise PromptError(f"prompt {name!r} is unknown: the prompts in {self.directory} are {known}")
        if version is None:
            label = label or DEFAULT_LABEL
            labels = self.labels.get(name, {})
            if label not in labels:
                known = ", ".join(f"{k} -> {v}" for k, v in sorted(labels.items())) or "none"
                raise PromptError(f"prompt {name!r} has no label {label!r}: its labels are {known}")
            version = labels[label]
        elif version not in self.prompts[name]:
            known = ", ".join(sorted(self.prompts[name]))
            raise PromptError(f"prompt {name!r} has no version {version!r}: its versions are {known}")
        prompt = self.prompts[name][version]
        return prompt if label is None else Prompt(**{**prompt.__dict__, "label": label})

    def versions(self) -> list[dict[str, Any]]:
        """Every version with the labels pointing at it, for /readyz."""
        rows = []
        for name, versions in sorted(self.prompts.items()):
            for version, prompt in sorted(versions.items()):
                labels = sorted(label for label, v in self.labels.get(name, {}).items() if v == version)
                rows.append({"prompt": prompt.ref, "labels": labels, "created": prompt.created.isoformat()})
        return rows


def load_prompts(directory: Path) -> PromptCatalog:
    """Read and check every prompt file and the labels; a ConfigError names the file and the problem."""
    if not directory.is_dir():
        raise ConfigError(f"the prompts directory {directory} does not exist (vars.serve.prompts_dir)")
    catalog = PromptCatalog(directory)
    for path in sorted(directory.glob("*/*.yml")):
        name, version = path.parent.name, path.stem
        if not re.fullmatch(NAME, name) or not re.fullmatch(VERSION, version):
            raise ConfigError(f"{path}: prompt files are named <name>/<version>.yml, e.g. answer_with_citations/v1.yml")
        data = _yaml(path)
        try:
            checked = PromptFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{path}: {problems}") from None
        prompt = Prompt(name, version, checked.template, checked.model, checked.release_note, checked.created, path)
        try:
            prompt.render("question", [_SAMPLE_CHUNK], "[1] T > S (doc)\nx")
        except TemplateError as exc:
            raise ConfigError(f"{path}: the template does not render ({exc})") from None
        catalog.prompts.setdefault(name, {})[version] = prompt
    labels_path = directory / LABELS_FILE
    labels = _yaml(labels_path) if labels_path.is_file() else {}
    if not isinstance(labels, dict):
        raise ConfigError(f"{labels_path} must map each prompt name to {{label: version}}")
    for name, mapping in labels.items():
        if name not in catalog.prompts:
            raise ConfigError(f"{labels_path}: {name!r} is not a prompt (no {directory / str(name)}/<version>.yml)")
        if not isinstance(mapping, dict):
            raise ConfigError(f"{labels_path}: {name} must map labels to versions, e.g. {{production: v1}}")
        for label, version in mapping.items():
            if not re.fullmatch(LABEL, str(label)):
                raise ConfigError(f"{labels_path}: {name}.{label} is not a label name")
            if version not in catalog.prompts[name]:
                raise ConfigError(
                    f"{labels_path}: {name}.{label} points at {version!r}, which is not a version of {name}"
                )
        catalog.labels[name] = {str(label): str(version) for label, version in mapping.items()}
    return catalog


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read as YAML: {exc}") from None


def signature(directory: Path) -> tuple:
    """What changes when a prompt file or the labels change (the service reloads then)."""
    files = sorted([*directory.glob("*/*.yml"), directory / LABELS_FILE])
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())
