"""Encode text with a sentence-transformers model through ONNX Runtime instead of torch.

Why this exists: on these CPU-only machines torch encodes ~10 passages/s, and importing
sentence-transformers costs ~9 s per process. The same model exported to ONNX (optionally with
int8 MatMul weights) encodes faster and needs only onnxruntime, numpy and tokenizers at run time.
torch and transformers are imported only while exporting, which happens once per model and option
set: the exported file is cached under a key derived from the weights.

Supported models: Transformer -> mean Pooling -> optional Normalize (the all-MiniLM family).
Anything else (Dense layers, CLS pooling, ...) is refused rather than silently encoded differently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from python_jobs.common.errors import ConfigError

# Bump when the export recipe changes, so files exported by older code are not reused.
EXPORT_VERSION = 1
OPSET = 17
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class OnnxEncoder:
    """Sentence embeddings from an ONNX export of a sentence-transformers model directory."""

    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        *,
        quantize: bool,
        max_seq_length: int,
        normalize: bool,
        threads: int | None = None,
    ) -> None:
        model_dir = Path(model_dir)
        transformer_dir, self.dimension = _check_model(model_dir)
        max_positions = json.loads((transformer_dir / "config.json").read_text(encoding="utf-8")).get(
            "max_position_embeddings"
        )
        if not 0 < max_seq_length <= (max_positions or max_seq_length):
            raise ConfigError(
                f"max_seq_length={max_seq_length} is out of range for {model_dir}: "
                f"the model has {max_positions} position embeddings"
            )
        self.normalize = normalize
        self._lower_case = _sbert_config(model_dir).get("do_lower_case", False)
        self._tokenizer = _load_tokenizer(transformer_dir, max_seq_length)

        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        variant = "int8" if quantize else "fp32"
        self.model_path = cache_dir / f"{model_dir.name}-{_cache_key(transformer_dir, quantize)}-{variant}.onnx"
        if not self.model_path.is_file():
            export_onnx(model_dir, self.model_path, quantize=quantize)

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts in their given order; float32 array of shape (len(texts), dimension)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if self._lower_case:
            texts = [t.lower() for t in texts]
        # Batching texts of similar length keeps padding, and so wasted compute, small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            out[batch] = self._encode_batch([texts[i] for i in batch])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        hidden = self._session.run(None, {name: feed[name] for name in self._inputs})[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        # Same arithmetic as sentence-transformers' mean pooling and Normalize (clamps included).
        vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def export_onnx(model_dir: Path, out_path: Path, *, quantize: bool) -> Path:
    """Export the model's transformer to ONNX at out_path (int8 MatMul weights if quantize).

    The graph outputs the token embeddings; pooling and normalization stay in numpy. The file
    appears at out_path only when complete, so an interrupted export is never mistaken for a model.
    """
    import torch
    from transformers import AutoModel

    transformer_dir, _ = _check_model(Path(model_dir))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(transformer_dir)).eval()

    class TokenEmbeddings(torch.nn.Module):
        # transformers 5 models take keyword arguments only; the exporter passes positionals.
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    # Padding in the example batch keeps the traced graph on the masked-attention path.
    input_ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    attention_mask = (input_ids != 0).long()
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, "last_hidden_state")}

    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=out_path.parent) as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        # The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not installed.
        # Its tracer warnings concern Python-side branches that the tests check against torch output.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                TokenEmbeddings(),
                (input_ids, attention_mask, torch.zeros_like(input_ids)),
                str(fp32_path),
                input_names=list(INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        result = fp32_path
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            result = Path(tmp) / "model-int8.onnx"
            # Per-channel, MatMul-only: cosine to fp32 >= ~0.985 on ~200-token passages (per-tensor: ~0.88),
            # but only ~0.96 on 1-3 token texts, which have few tokens to average rounding error away.
            quantize_dynamic(
                fp32_path, result, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
            )
        os.replace(result, out_path)
    return out_path


def _check_model(model_dir: Path) -> tuple[Path, int]:
    """Refuse models this backend would encode differently from sentence-transformers.

    Returns the transformer's directory and the embedding dimension.
    """
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise ConfigError(f"{model_dir} has no modules.json: the ONNX backend needs a sentence-transformers model")
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in SUPPORTED_MODULES]
    if unsupported or kinds[:2] != ["Transformer", "Pooling"]:
        raise ConfigError(
            f"{model_dir}: modules {kinds} are not supported by the ONNX backend, which handles "
            "Transformer -> Pooling (mean) -> optional Normalize; use the torch backend for this model"
        )
    transformer_dir = model_dir / modules[0].get("path", "")
    pooling_file = model_dir / modules[1].get("path", "") / "config.json"
    for needed in (transformer_dir / "tokenizer.json", transformer_dir / "config.json", pooling_file):
        if not needed.is_file():
            raise ConfigError(f"{model_dir}: {needed.name} is missing at {needed}; the ONNX backend needs it")
    if not any((transformer_dir / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{model_dir}: no weights ({' or '.join(WEIGHT_FILES)}) in {transformer_dir}")

    pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ConfigError(f"{model_dir}: pooling {modes or 'none'} is not supported by the ONNX backend (mean only)")
    return transformer_dir, int(pooling["word_embedding_dimension"])


def _sbert_config(model_dir: Path) -> dict:
    path = model_dir / "sentence_bert_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _load_tokenizer(transformer_dir: Path, max_seq_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(transformer_dir / "tokenizer.json"))
    # The shipped tokenizer.json truncates at 128 and pads to a fixed 128, while the model reads up to
    # max_seq_length tokens: reset both, keeping the file's pad token.
    pad = tokenizer.padding or {}
    tokenizer.enable_truncation(max_seq_length)
    tokenizer.enable_padding(
        pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0), pad_token=pad.get("pad_token", "[PAD]")
    )
    return tokenizer


def _cache_key(transformer_dir: Path, quantize: bool) -> str:
    # Tokenizer, max_seq_length and normalize act outside the graph, so they do not key the file.
    digest = hashlib.sha256(f"v{EXPORT_VERSION} opset{OPSET} quantize={quantize}".encode())
    for name in ("config.json", *WEIGHT_FILES):
        path = transformer_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
