"""The ONNX backend's promises, checked against sentence-transformers with the real default model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PROJECT_DIR, EmbeddingSettings
from python_jobs.index import onnx_encoder as onnx_backend
from python_jobs.index.encoders import fingerprint
from python_jobs.index.onnx_encoder import LEGACY_INT8, RECIPES, OnnxEncoder, _cache_key, export_onnx

MODEL = resolve_model("all-MiniLM-L6-v2")
TOKENIZER = MODEL.tokenizer()  # counts without truncation

PARAGRAPH = (
    "To descale the Brightwater variable-temperature kettle, fill it halfway with equal parts water and white "
    "vinegar, or dissolve two tablespoons of citric acid in a litre of water. Bring it to a boil, switch it off "
    "and let it stand for twenty minutes, then pour the solution away and rinse the kettle twice with fresh "
    "water. Repeat monthly in hard-water areas; the warranty does not cover damage caused by limescale. "
)
OVER_128_TOKENS = PARAGRAPH * 2
OVER_256_TOKENS = PARAGRAPH * 5
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "How do I request a price match?",
    "Marketplace and third-party sellers aren't eligible for a price match.",
    "## Returns\n\n- Unopened items: **30 days**\n- Opened items: 15 days, with a restocking fee.",
    "Le remboursement est effectué sur le moyen de paiement d'origine sous 10 jours ouvrés.",
    "Los envíos gratuitos aplican a pedidos superiores a 35 dólares. 🚚",
    "Reset the router: hold the button for 10 s until the LED blinks amber.",
    "",
    "ok",
    OVER_128_TOKENS,
    OVER_256_TOKENS,
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def make_encoder(cache_dir: Path, *, quantize: bool = False, normalize: bool = True, model_dir: Path = MODEL.path):
    recipe = RECIPES["onnx-int8" if quantize else "onnx"]
    return OnnxEncoder(model_dir, cache_dir, recipe=recipe, max_seq_length=MODEL.max_seq_length, normalize=normalize)


@pytest.fixture(scope="module")
def fp32(cache_dir: Path) -> OnnxEncoder:
    return make_encoder(cache_dir)


@pytest.fixture(scope="module")
def int8(cache_dir: Path) -> OnnxEncoder:
    return make_encoder(cache_dir, quantize=True)


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(MODEL.path), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def model_copy(tmp_path: Path, *, without: str | None = None, modules: list[dict] | None = None) -> Path:
    """A model directory of symlinks to the real one, minus a file or with other modules."""
    copy = tmp_path / "model"
    copy.mkdir()
    for item in MODEL.path.iterdir():
        if item.name != without:
            (copy / item.name).symlink_to(item)
    if modules is not None:
        (copy / "modules.json").unlink()
        (copy / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    return copy


def test_long_texts_really_exceed_the_tokenizer_file_limit_and_the_model_limit():
    assert MODEL.max_seq_length == 256
    assert 128 < len(TOKENIZER.encode(OVER_128_TOKENS).ids) < 256
    assert len(TOKENIZER.encode(OVER_256_TOKENS).ids) > 256


def test_fp32_vectors_match_sentence_transformers_past_128_and_256_tokens(fp32, torch_vectors):
    vectors = fp32.encode(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), 384) == (len(TEXTS), fp32.dimension)
    assert cosines(vectors, torch_vectors).min() >= 0.99999


def test_int8_vectors_stay_close_to_fp32_on_sentences_and_passages(fp32, int8):
    # The floor measured on 9,570 NFCorpus chunks (make bench-model): min 0.97, p1 0.985.
    texts = [t for t in TEXTS if len(TOKENIZER.encode(t).ids) >= 8]
    assert len(texts) >= 8
    assert cosines(int8.encode(texts), fp32.encode(texts)).min() >= 0.98
    assert int8.model_path.stat().st_size < fp32.model_path.stat().st_size


def test_int8_model_is_fused_and_quantized_as_its_recipe_says(int8, fp32):
    import onnx

    operators = {node.op_type for node in onnx.load(str(int8.model_path), load_external_data=False).graph.node}
    # Fused: one operator per layer's attention (with its QKV projection), residual + LayerNorm, bias + GELU.
    assert {"QAttention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} <= operators
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= operators and "Softmax" not in operators
    assert {node.op_type for node in onnx.load(str(fp32.model_path)).graph.node} >= {"Attention", "MatMul"}


def test_encoding_is_deterministic_in_a_new_session(int8, cache_dir):
    again = make_encoder(cache_dir, quantize=True)
    np.testing.assert_array_equal(again.encode(TEXTS), int8.encode(TEXTS))


def test_cache_file_and_fingerprint_change_with_the_recipe(monkeypatch):
    transformer_dir = MODEL.path
    keys = {_cache_key(transformer_dir, recipe) for recipe in (*RECIPES.values(), LEGACY_INT8)}
    assert len(keys) == 3

    settings = EmbeddingSettings(backend="onnx-int8")
    current = fingerprint(MODEL, settings)
    assert current.recipe == RECIPES["onnx-int8"].name
    monkeypatch.setitem(RECIPES, "onnx-int8", LEGACY_INT8)
    # An index built with the first recipe has another table and cache: rebuilt, never mixed.
    assert fingerprint(MODEL, settings).id != current.id

    torch = fingerprint(MODEL, EmbeddingSettings(backend="torch"))
    before_recipes = {k: v for k, v in asdict(torch).items() if k != "recipe"}
    assert (
        torch.recipe == ""
        and torch.id == hashlib.sha256(json.dumps(before_recipes, sort_keys=True).encode()).hexdigest()[:16]
    )


def test_int8_is_looser_on_one_word_texts(fp32, int8):
    # Measured: 0.96-0.98 on texts of 1-3 tokens (few tokens to average the rounding error away),
    # so short queries are better encoded with fp32.
    texts = ["", "ok", "yes", "refund?", "kettle"]
    assert cosines(int8.encode(texts), fp32.encode(texts)).min() >= 0.95


def test_order_is_preserved_across_length_sorted_batches(fp32):
    one_by_one = np.vstack([fp32.encode([text]) for text in TEXTS])
    batched = fp32.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_encoding_an_empty_list_returns_zero_rows(fp32):
    vectors = fp32.encode([])
    assert vectors.shape == (0, fp32.dimension)
    assert vectors.dtype == np.float32


def test_normalize_false_returns_the_mean_pooled_vectors_unscaled(fp32, cache_dir):
    raw = make_encoder(cache_dir, normalize=False).encode(TEXTS[:4])
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / norms, fp32.encode(TEXTS[:4]), atol=1e-5)


def test_second_encoder_on_the_same_cache_reuses_the_exported_file(fp32, cache_dir, monkeypatch):
    before = fp32.model_path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    again = make_encoder(cache_dir)
    assert again.model_path == fp32.model_path
    assert again.model_path.stat().st_mtime_ns == before
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_encoding_with_an_exported_model_does_not_import_torch(fp32, cache_dir):
    script = (
        "import sys; from pathlib import Path; from python_jobs.index.onnx_encoder import OnnxEncoder\n"
        "from python_jobs.index.onnx_encoder import RECIPES\n"
        f"e = OnnxEncoder(Path({str(MODEL.path)!r}), Path({str(cache_dir)!r}), recipe=RECIPES['onnx'], "
        "max_seq_length=256, normalize=True)\n"
        "assert e.encode(['hello']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_interrupted_export_leaves_no_file_that_could_be_reused(tmp_path, monkeypatch):
    import torch

    def killed_midway(model, args, f, **kwargs):
        Path(f).write_bytes(b"half an onnx model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", killed_midway)
    out = tmp_path / "cache" / "model.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_onnx(MODEL.path, out, recipe=RECIPES["onnx"])
    assert list(out.parent.iterdir()) == []


def test_model_without_tokenizer_json_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        make_encoder(tmp_path / "cache", model_dir=model_copy(tmp_path, without="tokenizer.json"))
    assert not (tmp_path / "cache").exists()


def test_model_with_a_dense_module_is_refused(tmp_path):
    modules = json.loads((MODEL.path / "modules.json").read_text(encoding="utf-8"))
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    with pytest.raises(ConfigError, match="Dense"):
        make_encoder(tmp_path / "cache", model_dir=model_copy(tmp_path, modules=modules))


def test_max_seq_length_beyond_the_position_embeddings_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_seq_length=1000"):
        OnnxEncoder(MODEL.path, tmp_path, recipe=RECIPES["onnx"], max_seq_length=1000, normalize=True)


def test_model_dir_without_modules_json_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"modules\.json"):
        make_encoder(tmp_path / "cache", model_dir=model_copy(tmp_path, without="modules.json"))
