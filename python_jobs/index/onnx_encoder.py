"""Encode text with a sentence-transformers model through ONNX Runtime instead of torch.

Why this exists: on these CPU-only machines torch encodes ~10 passages/s, and importing
sentence-transformers costs ~9 s per process. The same model exported to ONNX (optionally with
int8 weights) encodes faster and needs only onnxruntime, numpy and tokenizers at run time.
torch and transformers are imported only while exporting, which happens once per model and
recipe: the exported file is cached under a key derived from the weights and the recipe.

The recipe (`Recipe`, one per backend in `RECIPES`): export with eager attention, so that ONNX
Runtime's BERT fusions recognise the graph (embeddings + LayerNorm, each layer's attention with
its QKV projection, bias + GELU, residual + LayerNorm become one operator each); then, for int8,
dynamic quantization of the weights of every MatMul and of the fused attention's QKV projection,
per output channel. Measured in docs/benchmarks.md (`make bench-model`). The recipe's name is
part of the model fingerprint (python_jobs.index.encoders), so an index built with another
recipe is rebuilt, never mixed with these vectors.

Supported models: Transformer -> mean Pooling -> optional Normalize (the all-MiniLM family).
Anything else (Dense layers, CLS pooling, ...) is refused rather than silently encoded differently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from python_jobs.common.errors import ConfigError

OPSET = 17
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class Recipe:
    """How the ONNX file is made. Change any field and give it a new `name`: the name keys the cached
    file and goes into the model fingerprint, so vectors of two recipes never share an index."""

    name: str
    fused: bool  # eager-attention export + ONNX Runtime's BERT operator fusions
    quantized_ops: tuple[str, ...] = ()  # operators given int8 weights (dynamic, per channel); () keeps fp32

    @property
    def quantized(self) -> bool:
        return bool(self.quantized_ops)


# The backends' recipes. Measured against torch on NFCorpus chunks (docs/benchmarks.md): fp32-fused
# gives the same vectors (cosine >= 0.99999); int8-fused keeps cosine >= ~0.985 to them.
RECIPES = {
    "onnx": Recipe("fp32-fused-v2", fused=True),
    "onnx-int8": Recipe("int8-fused-v2", fused=True, quantized_ops=("MatMul", "Attention")),
}
# The first int8 recipe (scaled-dot-product attention export, unfused, int8 MatMul weights), kept so the
# benchmark can put the current one beside it; no backend uses it.
LEGACY_INT8 = Recipe("int8-v1", fused=False, quantized_ops=("MatMul",))


def recipe_for(backend: str) -> Recipe:
    try:
        return RECIPES[backend]
    except KeyError:
        raise ConfigError(
            f"vars.embedding.backend={backend!r} has no ONNX recipe: use one of {', '.join(RECIPES)}"
        ) from None


class OnnxEncoder:
    """Sentence embeddings from an ONNX export of a sentence-transformers model directory."""

    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        *,
        recipe: Recipe,
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
        self.recipe = recipe
        self._lower_case = _sbert_config(model_dir).get("do_lower_case", False)
        self._tokenizer, self._pad_id = _load_tokenizer(transformer_dir, max_seq_length)

        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = _cache_key(transformer_dir, recipe)
        self.model_path = cache_dir / f"{model_dir.name}-{key}-{recipe.name}.onnx"
        if not self.model_path.is_file():
            export_onnx(model_dir, self.model_path, recipe=recipe)

        import onnxruntime as ort  # here, not at the top: a fingerprint reads RECIPES without loading the runtime

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle worker threads sleep instead of spinning between operators. Spinning saves microseconds per
        # operator on an idle machine; on cores shared with dbt, tests or other jobs, the spinning threads
        # take the time the busy ones need (measured: int8 1.5x -> 2.3x torch at load 12 on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts in their given order; float32 array of shape (len(texts), dimension).

        The texts are tokenized once, then batched by token count, longest first, each batch padded to
        its own longest text: padding is compute spent on nothing, and sorted batches have almost none.
        The same texts in the same order always give the same vectors. With int8 weights a text's vector
        also depends, slightly, on the batch it is in (the activations of a batch share one quantization
        scale): between the same text encoded alone and in a batch of the pipeline's, cosine min 0.991,
        p50 0.996 on NFCorpus chunks (`make bench-model`), as close as int8 is to fp32 anyway.
        """
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        if self._lower_case:
            texts = [t.lower() for t in texts]
        encodings = self._tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # stable: ties keep their order
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            out[batch] = self._encode_batch([encodings[i] for i in batch])
        return out

    def _encode_batch(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        feed = {
            "input_ids": np.full((len(encodings), width), self._pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(encodings), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(encodings), width), dtype=np.int64),
        }
        for row, encoding in enumerate(encodings):  # padded on the right, as the fused attention expects
            length = len(encoding.ids)
            feed["input_ids"][row, :length] = encoding.ids
            feed["attention_mask"][row, :length] = encoding.attention_mask
            feed["token_type_ids"][row, :length] = encoding.type_ids
        hidden = self._session.run(None, {name: feed[name] for name in self._inputs})[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        # Same arithmetic as sentence-transformers' mean pooling and Normalize (clamps included).
        vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def export_onnx(model_dir: Path, out_path: Path, *, recipe: Recipe) -> Path:
    """Export the model's transformer to ONNX at out_path, made the way `recipe` says.

    The graph outputs the token embeddings; pooling and normalization stay in numpy. The file
    appears at out_path only when complete, so an interrupted export is never mistaken for a model.
    Every step (trace, fusion, quantization) is deterministic: the same files and recipe give the same
    model.
    """
    import torch
    from transformers import AutoModel

    transformer_dir, _ = _check_model(Path(model_dir))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Eager attention traces to the MatMul/Softmax pattern ONNX Runtime's fusions recognise; the default
    # (scaled-dot-product) traces to a masked pattern they do not.
    attention = {"attn_implementation": "eager"} if recipe.fused else {}
    model = AutoModel.from_pretrained(str(transformer_dir), **attention).eval()

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
        result = Path(tmp) / "model.onnx"
        # The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not installed.
        # Its tracer warnings concern Python-side branches that the tests check against torch output.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                TokenEmbeddings(),
                (input_ids, attention_mask, torch.zeros_like(input_ids)),
                str(result),
                input_names=list(INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        if recipe.fused:
            result = _fuse(result, Path(tmp) / "model-fused.onnx", model.config)
        if recipe.quantized:
            result = _quantize(result, Path(tmp) / "model-int8.onnx", recipe.quantized_ops)
        os.replace(result, out_path)
    return out_path


def _fuse(source: Path, target: Path, config) -> Path:
    """ONNX Runtime's BERT fusions, applied offline in Python (no hardware-specific rewrites); the graph
    unchanged if they do not recognise every layer's attention (another architecture): still correct, only
    slower."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    fused = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=FusionOptions("bert"),
        opt_level=0,  # Python fusions only: the file stays portable between CPUs
        use_gpu=False,
    )
    if fused.get_fused_operator_statistics().get("Attention", 0) != config.num_hidden_layers:
        return source
    fused.save_model_to_file(str(target))
    return target


def _quantize(source: Path, target: Path, op_types: tuple[str, ...]) -> Path:
    """int8 weights, dynamic activations. Per channel: one scale per output column keeps cosine to fp32
    at ~0.99 where one scale per matrix gave ~0.92. The fused attention (QAttention) quantizes its QKV
    projection; the embeddings' Gather stays fp32 (no compute to save, and short texts are sensitive)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(op_types),
        # Shape inference cannot type the outputs of ONNX Runtime's fused operators: they are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target


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


def _load_tokenizer(transformer_dir: Path, max_seq_length: int) -> tuple[Tokenizer, int]:
    """The tokenizer, truncating at max_seq_length and not padding (batches are padded to their own
    longest text), and the pad token id."""
    tokenizer = Tokenizer.from_file(str(transformer_dir / "tokenizer.json"))
    # The shipped tokenizer.json truncates at 128 and pads to a fixed 128, while the model reads up to
    # max_seq_length tokens: reset both, keeping the file's pad token.
    pad_id = (tokenizer.padding or {}).get("pad_id", 0)
    tokenizer.enable_truncation(max_seq_length)
    tokenizer.no_padding()
    return tokenizer, pad_id


def _cache_key(transformer_dir: Path, recipe: Recipe) -> str:
    # Tokenizer, max_seq_length and normalize act outside the graph, so they do not key the file.
    digest = hashlib.sha256(f"opset{OPSET} {json.dumps(asdict(recipe), sort_keys=True)}".encode())
    for name in ("config.json", *WEIGHT_FILES):
        path = transformer_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
