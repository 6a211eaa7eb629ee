"""The embedding model: what identifies its vectors, and turning texts into vectors.

A vector is only comparable with vectors of the same weights, dimension, normalization,
backend and (for the ONNX backends) export recipe, so all of these go into the model
fingerprint that keys the index and the vector cache. The fingerprint is read from the
model's files, without importing torch: a run with nothing to embed never loads the model
(importing sentence-transformers alone takes ~9 s here).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from python_jobs.chunk.model_files import SETTING, ModelFiles, resolve_model
from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import EmbeddingSettings

# Files that decide what the model computes; READMEs and the like do not.
_FINGERPRINTED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


@dataclass(frozen=True)
class ModelFingerprint:
    """Everything that makes two vectors comparable; `id` keys the index table and the cache."""

    name: str
    weights_hash: str
    dimension: int
    normalized: bool
    max_seq_length: int
    backend: str
    recipe: str = ""  # how an ONNX backend made its model file (onnx_encoder.RECIPES); "" for torch

    @property
    def id(self) -> str:
        identity = asdict(self)
        if not self.recipe:  # torch: the id it had before recipes existed, so its indexes stay valid
            del identity["recipe"]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        norm = "normalized" if self.normalized else "unnormalized"
        backend = f"{self.backend} {self.recipe}" if self.recipe else self.backend
        return f"{self.name} ({self.dimension}d, {norm}, {backend}, weights {self.weights_hash[:8]}, id {self.id})"


class Embedder(Protocol):
    fingerprint: ModelFingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 vectors, one row per text."""
        ...


def fingerprint(model: ModelFiles, settings: EmbeddingSettings) -> ModelFingerprint:
    recipe = ""
    if settings.backend != "torch":
        from python_jobs.index.onnx_encoder import recipe_for  # numpy and tokenizers only: no runtime loaded

        recipe = recipe_for(settings.backend).name
    return ModelFingerprint(
        name=model.name,
        weights_hash=_weights_hash(model.path),
        dimension=_dimension(model),
        normalized=settings.normalize,
        max_seq_length=model.max_seq_length,
        backend=settings.backend,
        recipe=recipe,
    )


class SentenceTransformerEmbedder:
    """The configured model, loaded on the first `encode` call only."""

    def __init__(self, model: ModelFiles, settings: EmbeddingSettings, cache_dir: Path):
        self.model = model
        self.settings = settings
        self.cache_dir = cache_dir
        self.fingerprint = fingerprint(model, settings)
        self.loaded = False

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.fingerprint.dimension), dtype=np.float32)
        vectors = self._encoder().encode(texts)
        self.loaded = True
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _encoder(self):
        return _load_encoder(self.model, self.settings, self.cache_dir, self.fingerprint.dimension)


class _TorchEncoder:
    def __init__(self, model, batch_size: int, normalize: bool):
        self.model, self.batch_size, self.normalize = model, batch_size, normalize

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=self.normalize, show_progress_bar=False
        )


class _OnnxEncoder:
    def __init__(self, encoder, batch_size: int):
        self.encoder, self.batch_size = encoder, batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=self.batch_size)


@cache
def _load_encoder(model: ModelFiles, settings: EmbeddingSettings, cache_dir: Path, dimension: int):
    """One loaded model per process: tests and the benchmark embed many times."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars on every load; ours show the work
    if settings.backend == "torch":
        from sentence_transformers import SentenceTransformer

        loaded = SentenceTransformer(str(model.path), device="cpu")
        loaded.max_seq_length = model.max_seq_length
        actual = loaded.get_embedding_dimension()
        encoder = _TorchEncoder(loaded, settings.batch_size, settings.normalize)
    else:
        from python_jobs.index.onnx_encoder import OnnxEncoder, recipe_for

        onnx = OnnxEncoder(
            model.path,
            cache_dir,
            recipe=recipe_for(settings.backend),
            max_seq_length=model.max_seq_length,
            normalize=settings.normalize,
        )
        actual = onnx.dimension
        encoder = _OnnxEncoder(onnx, settings.batch_size)
    if actual != dimension:
        raise ConfigError(
            f"{SETTING}={model.name!r}: the model produces {actual}-dimensional vectors but its files say "
            f"{dimension}; the model directory {model.path} is inconsistent"
        )
    return encoder


def load_embedder(model_name: str, settings: EmbeddingSettings, cache_dir: Path) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(resolve_model(model_name), settings, cache_dir)


@cache
def _weights_hash(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _FINGERPRINTED_SUFFIXES)
    for file in files:
        digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _dimension(model: ModelFiles) -> int:
    """Output dimension from the module configs: the last Dense layer's, else the pooling layer's."""
    modules_file = model.path / "modules.json"
    modules = json.loads(modules_file.read_text(encoding="utf-8")) if modules_file.is_file() else []
    # Module types are class paths, which moved between sentence-transformers releases: match the class.
    for module in reversed(modules):
        config = model.path / module.get("path", "") / "config.json"
        if module.get("type", "").endswith(".Dense") and config.is_file():
            return int(json.loads(config.read_text(encoding="utf-8"))["out_features"])
    pooling = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    if pooling:
        config = model.path / pooling["path"] / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text(encoding="utf-8"))["word_embedding_dimension"])
    transformer_config = model.path / "config.json"
    if transformer_config.is_file():
        return int(json.loads(transformer_config.read_text(encoding="utf-8"))["hidden_size"])
    raise ConfigError(f"{SETTING}={model.name!r}: cannot read the embedding dimension from {model.path}")
