"""Hugging Face interoperability (tlm_jax/hf.py): import/export round trips against transformers.

Needs the ``hf`` extra (CPU torch + transformers); skipped without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tlm_jax.cli import main as tlm_main  # noqa: E402
from tlm_jax.config import load_config, save_config  # noqa: E402
from tlm_jax.data.tokenizer import encode, load_tokenizer  # noqa: E402
from tlm_jax.errors import TLMError  # noqa: E402
from tlm_jax.hf import export_hf, import_hf, load_run_weights, read_safetensors  # noqa: E402
from tlm_jax.models import apply_model, build_model  # noqa: E402

WORDS = ["the", "of", "and", "to", "in", "is", "was", "he", "she", "it", "his", "her", "city",
         "river", "town", "play", "game", "team", "music", "film", "born", "year", "school",
         "north", "south", "war", "world", "new", "first", "one", "two", "three", "album", "song",
         "station", "league", "club", "season", "football", "player", "played", "county",
         "village", "family"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,")
         + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + WORDS
         + ["##ed", "##ing", "##er"])
assert len(set(VOCAB)) == len(VOCAB)
TEXTS = ["The city was born in 1999, north of the river.",
         "She played football for the county club in the first season.",
         "Héllo Wörld! Unknown-tokens like ZQX stay [UNK]?"]
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=32)
TOL = 1e-4  # f32; measured max |diff| is ~1e-6 (see test output)


def _perturb(model: Any, seed: int) -> Any:
    """Random weights everywhere (LayerNorms and biases too), so every mapping is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _write_tokenizer(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast.from_pretrained(str(d)).save_pretrained(str(d))


def _make_hf(d: Path, cls: Any, seed: int = 0, **extra: Any) -> Any:
    _write_tokenizer(d)
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), **SHAPE, **extra)
    model = _perturb(cls(cfg), seed)
    model.save_pretrained(str(d))
    return model


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    d = tmp_path_factory.mktemp("hf_mlm")
    return d, _make_hf(d, transformers.BertForMaskedLM)


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, len(VOCAB), (3, 20)).astype(np.int64)
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 12:] = 0  # padding in one row
    ids[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def torch_logits(model: Any, b: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(b["input_ids"]),
                    attention_mask=torch.tensor(b["attention_mask"]))
    return out.logits.numpy()


def our_logits(run: Path, b: dict[str, np.ndarray]) -> np.ndarray:
    cfg, _, params, model_state, _ = load_run_weights(run, log=lambda _: None)
    model = build_model(cfg.model)
    inputs = {k: jnp.asarray(v, jnp.int32) for k, v in b.items()}
    out, _ = jax.jit(lambda p, x: apply_model(model, {"params": p, **model_state}, x,
                                              heads=("mlm_dense",)))(params, inputs)
    return np.asarray(out["mlm_logits_dense"])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


# --------------------------------------------------------------------------- import / export


def test_import_mlm_matches_torch(hf_mlm: tuple[Path, Any], batch: dict, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    src, model = hf_mlm
    summary = import_hf(src, tmp_path / "run", log=lambda _: None)
    assert summary["architecture"] == "BertForMaskedLM" and not summary["fresh_mlm_head"]
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    ref, ours = torch_logits(model, batch), our_logits(tmp_path / "run", batch)
    diff = _max_diff(ref, ours)
    with capsys.disabled():
        print(f"\nimport: max |logit diff| vs torch = {diff:.3g} (logit scale "
              f"{np.abs(ref).max():.3g})")
    assert diff < TOL
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["hidden"] == 64 and cfg["model"]["layers"] == 2
    assert cfg["data"]["tokenizer"] == str((tmp_path / "run" / "tokenizer.json").resolve())


def test_export_round_trip(hf_mlm: tuple[Path, Any], batch: dict, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    src, model = hf_mlm
    import_hf(src, tmp_path / "run", log=lambda _: None)
    export_hf(tmp_path / "run", tmp_path / "hf", log=lambda _: None)
    back, info = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "hf"),
                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    diff = _max_diff(torch_logits(back.eval(), batch), torch_logits(model, batch))
    with capsys.disabled():
        print(f"\nexport round trip: max |logit diff| torch(original) vs torch(exported) = "
              f"{diff:.3g}")
    assert diff < 1e-6  # pure copies: float32 in, float32 out
    # The exported tokenizer tokenizes exactly as the run does ([CLS] ... [SEP] added by HF).
    ours = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    hf_tok = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    for text, ids in zip(TEXTS, encode(ours, TEXTS), strict=True):
        assert hf_tok(text)["input_ids"] == [2, *ids.tolist(), 3]
    # ... and as the original HF tokenizer did.
    orig = transformers.BertTokenizerFast.from_pretrained(str(src))
    assert [orig(t)["input_ids"] for t in TEXTS] == [hf_tok(t)["input_ids"] for t in TEXTS]


def test_export_of_trained_vocab_drops_padding_rows(tmp_path: Path) -> None:
    """A run whose embedding table is padded past its tokenizer exports only the real rows."""
    from tlm_jax.hf import params_to_hf_state  # noqa: PLC0415

    cfg = load_config(None, ["model.preset=tiny", "model.layers=1", "model.vocab_size=256"])
    model = build_model(cfg.model)
    from tlm_jax.models import init_variables  # noqa: PLC0415
    from tlm_jax.sharding import unbox  # noqa: PLC0415

    params = jax.eval_shape(lambda r: unbox(init_variables(model, r, 8)), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params["params"])
    sd = params_to_hf_state(params, cfg.model, vocab_size=200)
    assert sd["bert.embeddings.word_embeddings.weight"].shape == (200, 128)
    assert sd["cls.predictions.bias"].shape == (200,)


def test_sequence_classification_import(batch: dict, tmp_path: Path) -> None:
    src = tmp_path / "hf_cls"
    model = _make_hf(src, transformers.BertForSequenceClassification, seed=1, num_labels=3)
    summary = import_hf(src, tmp_path / "run", log=lambda _: None)
    assert summary["architecture"] == "BertForSequenceClassification"
    assert summary["fresh_mlm_head"]
    head = np.load(tmp_path / "run" / "classifier.npz")
    meta = json.loads((tmp_path / "run" / "classifier.json").read_text())
    assert meta["num_labels"] == 3 and head["classifier_kernel"].shape == (64, 3)
    # HF's logits = classifier(tanh(pooler(h_CLS))) from our encoder's hidden states.
    cfg, _, params, _, _ = load_run_weights(tmp_path / "run", log=lambda _: None)
    model_ = build_model(cfg.model)
    out, _ = jax.jit(lambda p, x: apply_model(model_, {"params": p}, x))(
        params, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()})
    cls = np.asarray(out["hidden"])[:, 0]
    logits = np.tanh(cls @ head["pooler_kernel"] + head["pooler_bias"]) @ \
        head["classifier_kernel"] + head["classifier_bias"]
    assert _max_diff(logits, torch_logits(model, batch)) < TOL


@pytest.mark.parametrize("arch", ["BertForPreTraining", "BertModel"])
def test_pretraining_and_bare_encoder_layouts(arch: str, batch: dict, tmp_path: Path) -> None:
    src = tmp_path / "hf"
    model = _make_hf(src, getattr(transformers, arch), seed=2)
    summary = import_hf(src, tmp_path / "run", log=lambda _: None)
    assert summary["architecture"] == arch
    assert summary["fresh_mlm_head"] == (arch == "BertModel")
    assert any("pooler" in k for k in summary["unused_tensors"])
    cfg, _, params, _, _ = load_run_weights(tmp_path / "run", log=lambda _: None)
    ours = build_model(cfg.model)
    out, _ = jax.jit(lambda p, x: apply_model(ours, {"params": p}, x, heads=("mlm_dense",)))(
        params, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()})
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(batch["input_ids"]),
                    attention_mask=torch.tensor(batch["attention_mask"]),
                    output_hidden_states=True)
    assert _max_diff(np.asarray(out["hidden"]), ref.hidden_states[-1].numpy()) < TOL
    if arch == "BertForPreTraining":
        assert _max_diff(np.asarray(out["mlm_logits_dense"]), ref.prediction_logits.numpy()) < TOL


def test_pytorch_bin_and_vocab_txt_only(hf_mlm: tuple[Path, Any], batch: dict,
                                        tmp_path: Path) -> None:
    _, model = hf_mlm
    src = tmp_path / "bin"
    src.mkdir()
    model.config.save_pretrained(str(src))
    torch.save(model.state_dict(), src / "pytorch_model.bin")  # the legacy (pickle) layout
    (src / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (src / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    import_hf(src, tmp_path / "run", log=lambda _: None)
    assert _max_diff(torch_logits(model, batch), our_logits(tmp_path / "run", batch)) < TOL
    # A pickle that is not a plain state dict is refused (weights_only=True), in one line.
    torch.save({"w": torch.zeros(2), "evil": print}, src / "pytorch_model.bin")
    with pytest.raises(TLMError, match="cannot read .* safely"):
        import_hf(src, tmp_path / "run2", log=lambda _: None)


# --------------------------------------------------------------------------- errors


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_is_one_line_error(hf_mlm: tuple[Path, Any], tmp_path: Path) -> None:
    src = _copy(hf_mlm[0], tmp_path / "cut")
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(TLMError, match="truncated: tensor '.*' ends at byte") as e:
        import_hf(src, tmp_path / "run", log=lambda _: None)
    assert "\n" not in str(e.value)
    f.write_bytes(data[:5])
    with pytest.raises(TLMError, match="truncated"):
        read_safetensors(f)
    f.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(TLMError, match="corrupt safetensors header"):
        read_safetensors(f)


def test_unsupported_architecture(hf_mlm: tuple[Path, Any], tmp_path: Path) -> None:
    src = _copy(hf_mlm[0], tmp_path / "roberta")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["RobertaForMaskedLM"], model_type="roberta")
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TLMError, match="unsupported architecture RobertaForMaskedLM"):
        import_hf(src, tmp_path / "run", log=lambda _: None)


def test_shape_mismatch_names_the_tensor(hf_mlm: tuple[Path, Any], tmp_path: Path) -> None:
    src = _copy(hf_mlm[0], tmp_path / "bad")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TLMError, match=r"tensor 'encoder.layer.0.intermediate.dense.weight' .* "
                       r"shape \(128, 64\), expected \(100, 64\)"):
        import_hf(src, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()  # a refused import leaves nothing behind


def test_missing_files(hf_mlm: tuple[Path, Any], tmp_path: Path) -> None:
    with pytest.raises(TLMError, match="not a directory"):
        import_hf(tmp_path / "nope", tmp_path / "run")
    src = _copy(hf_mlm[0], tmp_path / "noweights")
    (src / "model.safetensors").unlink()
    with pytest.raises(TLMError, match="no model.safetensors or pytorch_model.bin"):
        import_hf(src, tmp_path / "run", log=lambda _: None)
    src = _copy(hf_mlm[0], tmp_path / "notok")
    (src / "vocab.txt").unlink()
    (src / "tokenizer.json").unlink()
    with pytest.raises(TLMError, match="no tokenizer.json or vocab.txt"):
        import_hf(src, tmp_path / "run", log=lambda _: None)
    (src / "config.json").unlink()
    with pytest.raises(TLMError, match="no config.json"):
        import_hf(src, tmp_path / "run", log=lambda _: None)


def test_export_refuses_conv_and_cli_errors_are_one_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "conv"
    run.mkdir()
    cfg = load_config(None, ["model.preset=bert-1-conv2-k3-c32-h8-cpu"])
    cfg.model.vocab_size = 1000
    save_config(cfg, run / "config.json")
    with pytest.raises(TLMError, match="convolutional front-end"):
        export_hf(run, tmp_path / "out", log=lambda _: None)
    assert tlm_main(["export-hf", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "conv" in err and "\n" not in err


def test_cli_import_then_export(hf_mlm: tuple[Path, Any], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    run, out = tmp_path / "run", tmp_path / "hf"
    assert tlm_main(["import-hf", str(hf_mlm[0]), "--workdir", str(run), "train.seed=3"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3
    assert tlm_main(["import-hf", str(hf_mlm[0]), "--workdir", str(run)]) == 2  # exists
    assert tlm_main(["export-hf", str(run), "--out", str(out)]) == 0
    assert tlm_main(["export-hf", str(run), "--out", str(out)]) == 2  # not empty
    assert tlm_main(["export-hf", str(run), "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert tlm_main(["import-hf", str(hf_mlm[0]), "--workdir", str(tmp_path / "r2"),
                     "model.hidden=32"]) == 2
    assert "fixed by the imported checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- counts, resume


def test_bert6_count_equals_hf_bert_for_masked_lm() -> None:
    """Our ``bert-6`` count equals HF ``BertForMaskedLM`` of the same shape (tied decoder counted
    once, no pooler: BertForMaskedLM builds ``BertModel(add_pooling_layer=False)``)."""
    from tlm_jax.models.summary import count_preset  # noqa: PLC0415

    with torch.device("meta"):
        hf = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=30522, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=128))
    n_hf = sum(p.numel() for p in hf.parameters())
    assert count_preset("bert-6", 30522)["params"] == n_hf == 66_692_154


@pytest.mark.slow
def test_imported_run_continues_pretraining(hf_mlm: tuple[Path, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tlm_jax.train.loop import pretrain  # noqa: PLC0415

    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    over = ["data.synthetic_docs=64", "data.max_len=16", "train.batch_size=8", "train.steps=2",
            "train.progress=false", "train.tensorboard=false", "train.eval_every=0",
            "train.eval_batches=1", "train.async_checkpoint=false", "optim.warmup_steps=0"]
    run = tmp_path / "run"
    import_hf(hf_mlm[0], run, over, log=lambda _: None)
    logs: list[str] = []
    cfg = load_config(str(run / "config.json"), over)
    summary = pretrain(cfg, run, log=logs.append)
    assert any("resumed from checkpoint at step 0" in m for m in logs), logs
    assert summary["start_step"] == 0 and summary["steps"] == 2
    assert np.isfinite(summary["final_train_loss"])


@pytest.mark.slow
def test_pretrained_run_exports_with_padded_vocab(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A `tlm pretrain` run (trained WordPiece, embedding rows padded past the vocabulary)
    exports to HF with the same logits on the real vocabulary and the same tokenization."""
    from tlm_jax.train.loop import pretrain  # noqa: PLC0415

    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(None, [
        "model.preset=tiny", "model.layers=1", "model.hidden=32", "model.heads=2",
        "model.intermediate=64", "data.synthetic_docs=300", "data.vocab_size=1000",
        "data.max_len=16", "train.batch_size=8", "train.steps=2", "train.progress=false",
        "train.tensorboard=false", "train.eval_every=0", "train.eval_batches=1",
        "train.async_checkpoint=false"])
    run, out = tmp_path / "run", tmp_path / "hf"
    pretrain(cfg, run, log=lambda _: None)
    summary = export_hf(run, out, log=lambda _: None)
    n = summary["vocab_size"]
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] >= n
    hf = transformers.BertForMaskedLM.from_pretrained(str(out)).eval()
    rng = np.random.default_rng(1)
    b = {"input_ids": rng.integers(5, n, (2, 12)).astype(np.int64),
         "attention_mask": np.ones((2, 12), np.int64)}
    assert _max_diff(torch_logits(hf, b), our_logits(run, b)[..., :n]) < TOL
    ours = load_tokenizer(run / "tokenizer.json")
    hf_tok = transformers.BertTokenizerFast.from_pretrained(str(out))
    for text, ids in zip(TEXTS, encode(ours, TEXTS), strict=True):
        assert hf_tok(text)["input_ids"] == [hf_tok.cls_token_id, *ids.tolist(),
                                             hf_tok.sep_token_id]
