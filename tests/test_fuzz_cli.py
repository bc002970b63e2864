"""Fuzzing the ``tlm`` command in-process (issue #19).

Hypothesis generates config overrides and YAML files, task files (CSV/TSV/JSONL), JSONL corpora,
Hugging Face checkpoint folders and command-line options, valid and broken, and runs the real
entry point :func:`tlm_jax.cli.main` on them. Every run must end with exit 0, or with exit 2 and
one short ``error: ...`` line on stderr: never a traceback, never an ``internal error`` (a bug),
never a non-finite number in a metrics/results file, never a file touched outside its own work
directory. Derandomized with fixed budgets: CI sees the same inputs every run, and the commands
that train (pretrain, finetune, import-hf) get a handful of examples on tiny models.
``TLM_FUZZ_SCALE=10`` multiplies every budget for a deeper search by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tlm_jax import cli
from tlm_jax.config import Config

# An error line without its paths stays under this many characters.
MAX_LINE = 200
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits)
         + ["##" + c for c in string.ascii_lowercase] + ["the", "good", "bad", "film", "city"])
TINY_MODEL = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
              "model.max_len=16"]


def _settings(n: int) -> settings:
    """Derandomized, ``n`` examples (times ``$TLM_FUZZ_SCALE`` for a deeper local search)."""
    n *= int(os.environ.get("TLM_FUZZ_SCALE", "1"))
    return settings(derandomize=True, max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def _top_level() -> set[str]:
    return set(os.listdir(REPO))


def _no_nonfinite(work: Path, since: float) -> None:
    """Every JSON / JSONL file written under ``work`` since ``since`` parses without NaN or Infinity
    (files the test wrote as inputs are older)."""
    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite {token} written")

    for f in work.rglob("*.json*"):
        if f.is_file() and f.suffix in (".json", ".jsonl") and f.stat().st_mtime >= since:
            for line in f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]:
                if line.strip():
                    json.loads(line, parse_constant=refuse)


def expect_clean(argv: list[str], capsys: pytest.CaptureFixture, work: Path) -> int:
    """Run ``tlm argv`` in-process; assert it ends cleanly (see the module doc); return its status."""
    capsys.readouterr()
    before, start = _top_level(), time.time()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc in (0, 2), f"exit {rc} for {[a[:100] for a in argv]}: {err[-600:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-600:]
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-600:]
        short = lines[0].replace(str(work), "W")
        assert len(short) < MAX_LINE, f"{len(short)} chars: {short}"
    assert _top_level() == before, f"{argv} touched the repository's top level"
    _no_nonfinite(work, start)
    return rc


# ----------------------------------------------------------------------------
# Values and keys
# ----------------------------------------------------------------------------


def _leaf_keys(cls: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                   else f.default)
        out += _leaf_keys(type(default), key + ".") if dataclasses.is_dataclass(default) else [key]
    return out


KEYS = _leaf_keys(Config)
SECTIONS = ["data", "model", "objective", "optim", "train", "mesh", "distributed", "continual",
            "interventions", "data.selection", "data.filter_options", "objective.options"]
BROKEN_KEYS = ["nosuch", "model.nosuch", "model.hidden.deeper", "", ".", "model..hidden", "a b",
               "model.[0]", "train.steps.x", "=", "data.paths[0]", "${x}"]
SPECIAL_VALUES = ["", "nan", "-nan", "inf", "-inf", "1e999", "-1e999", "[1,2]", "[]", "{a: 1}",
                  "{}", "[", "{", "null", "~", "true", "${x}", "${model.hidden}", "'", '"', "???",
                  "-0", "0x10", "1_000", "\\", "a=b", "\x00", "é", "[[1]]"]

numbers = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True))
values = st.one_of(numbers.map(str), st.sampled_from(SPECIAL_VALUES),
                   st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
                   st.just("x" * 3000))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.sampled_from(BROKEN_KEYS))
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", keys, values), max_size=4)


def _yaml_value(depth: int = 0) -> st.SearchStrategy:
    scalar = st.one_of(numbers, st.text(max_size=10), st.booleans(), st.none())
    if depth >= 2:
        return scalar
    return st.one_of(scalar, st.lists(_yaml_value(depth + 1), max_size=3),
                     st.dictionaries(st.sampled_from([k.rsplit(".", 1)[-1] for k in KEYS] + ["zz"]),
                                     _yaml_value(depth + 1), max_size=3))


yaml_docs = st.one_of(
    st.dictionaries(st.sampled_from([s for s in SECTIONS if "." not in s] + ["name", "zz"]),
                    _yaml_value(), max_size=4).map(json.dumps),  # JSON is YAML
    st.sampled_from(["", "model: 3", "train: [1, 2]", "model:\n  preset: nosuch", "- a\n- b",
                     "model: {hidden: -1}", "data:\n  selection: 7", ": :", "a: [", "\t\tx",
                     "model: !!python/object:os.system {}", "optim: {lr: .nan}"]),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")))


# ----------------------------------------------------------------------------
# tlm config: overrides and YAML files (cheap: many examples)
# ----------------------------------------------------------------------------


@_settings(80)
@given(over=overrides)
def test_config_overrides(over: list[str], capsys, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("cfg")
    if expect_clean(["config", *over], capsys, work) == 0:
        pass  # printed a config: load_config accepted (and validated) it


@_settings(50)
@given(doc=yaml_docs, over=overrides)
def test_config_files(doc: str, over: list[str], capsys, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("yaml")
    f = work / "c.yaml"
    f.write_text(doc, encoding="utf-8", errors="surrogateescape")
    expect_clean(["config", "--config", str(f), *over], capsys, work)


# ----------------------------------------------------------------------------
# tlm params / tlm mem / tlm generate options (fail fast)
# ----------------------------------------------------------------------------

preset_names = st.one_of(st.sampled_from(["tiny", "bert-1-cpu"]),
                         st.text(string.ascii_lowercase + "-0123456789", min_size=1, max_size=12))
int_text = st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["0", "-1", "x", "1.5", "",
                                                                        "99999999999999999999"]))


@_settings(20)
@given(presets=st.lists(preset_names, min_size=1, max_size=2), vocab=int_text)
def test_params(presets: list[str], vocab: str, capsys, tmp_path_factory) -> None:
    expect_clean(["params", *presets, f"--vocab-size={vocab}"], capsys, tmp_path_factory.mktemp("p"))


@_settings(20)
@given(mesh=st.one_of(st.none(), st.sampled_from(["data=1,fsdp=8", "data=0", "fsdp=-1,data=-1",
                                                   "tensor=3", "x=1", "data=a", ",,", "data"])),
       devices=st.one_of(st.none(), int_text), over=overrides)
def test_mem(mesh: str | None, devices: str | None, over: list[str], capsys, tmp_path_factory) -> None:
    argv = ["mem", *(["--mesh", mesh] if mesh is not None else []),
            *([f"--devices={devices}"] if devices is not None else []),
            "model.preset=tiny", "data.vocab_size=500", *over]
    expect_clean(argv, capsys, tmp_path_factory.mktemp("mem"))


float_text = st.one_of(numbers.map(str), st.sampled_from(["x", ""]))
GENERATE_INT = ["--max-new", "--top-k", "--num-samples", "--seed", "--step"]


@_settings(30)
@given(opts=st.dictionaries(
    st.sampled_from([*GENERATE_INT, "--temperature", "--top-p"]), st.one_of(
        st.integers(-3, 3).map(str), int_text, float_text), max_size=3).map(
    # Mostly the option's own type, so the range checks (not argparse) see the value.
    lambda d: {k: (v if k not in GENERATE_INT or v.lstrip("-").isdigit() or len(d) == 3 else "1")
               for k, v in d.items()}),
    run=st.sampled_from(["missing", "file", "empty"]))
def test_generate_options(opts: dict[str, str], run: str, capsys, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("gen")
    path = work / "run"
    if run == "file":
        path.write_text("not a run")
    elif run == "empty":
        path.mkdir()
    argv = ["generate", "--run", str(path), "--prompt", "the"]
    for k, v in opts.items():
        argv.append(f"{k}={v}")
    expect_clean(argv, capsys, work)


@_settings(12)
@given(where=st.sampled_from(["file", "under_file", "empty", "ok"]),
       cmd=st.sampled_from(["pretrain", "finetune", "import-hf", "export-hf"]))
def test_output_dirs(where: str, cmd: str, capsys, tmp_path_factory) -> None:
    """Every --workdir/--out that is (or is under) a regular file is refused before any work."""
    work = tmp_path_factory.mktemp("out")
    (work / "f").write_text("x")
    out = {"file": str(work / "f"), "under_file": str(work / "f" / "sub"), "empty": "",
           "ok": str(work / "new")}[where]
    argv = {"pretrain": ["pretrain", "--workdir", out, "data.source=jsonl",
                         f"data.paths=[{work / 'missing.jsonl'}]"],
            "finetune": ["finetune", "--pretrained", str(work / "norun"), "--task", "synthetic",
                         "--workdir", out],
            "import-hf": ["import-hf", str(work / "nohf"), "--workdir", out],
            "export-hf": ["export-hf", str(work / "norun"), "--out", out]}[cmd]
    rc = expect_clean(argv, capsys, work)
    assert rc == 2
    assert (work / "f").read_text() == "x"


# ----------------------------------------------------------------------------
# Task files -> tlm finetune (a tiny random-init backbone, one training step)
# ----------------------------------------------------------------------------

JUNK = st.binary(min_size=1, max_size=40)
words = st.lists(st.sampled_from(["the", "good", "bad", "film", "city", "a1", "Zq", "é", ","]),
                 max_size=6).map(" ".join)
cell = st.one_of(words, st.sampled_from(["", '"', 'a "quoted" b', "line\nbreak", "x\ty", "a,b"]),
                 st.just("long " * 40_000))
ODD_LABELS = ["", " ", "-1", "nan", "[1]", "0"]


@st.composite
def task_files(draw: Any) -> tuple[str, bytes]:
    """A task file's format and bytes: a well-formed base (two classes, enough rows to split), odd
    cells, then one kind of damage."""
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    rows = [(f"the {w} film {i}", lab) for i, (w, lab) in
            enumerate([("good", "pos"), ("bad", "neg")] * draw(st.integers(0, 8)))]
    rows += draw(st.lists(st.tuples(cell, st.sampled_from(["pos", "neg"])), max_size=4))
    damage = draw(st.sampled_from(["none", "none", "no_header", "bad_header", "short_row",
                                   "junk_row", "junk_file", "empty", "bad_json", "blank_texts",
                                   "odd_labels"]))
    if damage == "blank_texts":  # well-formed, but not one word (the TF-IDF baseline has nothing)
        rows = [(draw(st.sampled_from(["", ".", "!!", " "])), lab) for _, lab in rows]
    elif damage == "odd_labels":  # an empty, blank, numeric or list-like label value as a class
        odd = draw(st.sampled_from(ODD_LABELS))
        rows = [(t, odd) if i % 3 == 0 else (t, lab) for i, (t, lab) in enumerate(rows)]
    if damage == "empty":
        return fmt, b""
    if damage == "junk_file":
        return fmt, draw(JUNK)
    if fmt == "jsonl":
        recs = [json.dumps({"text": t, "label": lab}) for t, lab in rows]
        if damage in ("bad_header", "short_row"):
            recs.append(json.dumps({"txt": "the film", "label": "pos"}))
        if damage == "bad_json":
            recs.append(draw(st.sampled_from(["{", "[1, 2]", "3", "null", '{"text": "a"}'])))
        body = "\n".join(recs).encode()
    else:
        sep = "," if fmt == "csv" else "\t"

        def line(fields: list[str]) -> str:
            if fmt == "tsv":
                return sep.join(f.replace("\t", " ").replace("\n", " ") for f in fields)
            return sep.join('"' + f.replace('"', '""') + '"' for f in fields)

        header = {"no_header": [], "bad_header": [line(["body", "y"])]}.get(damage, [line(["text", "label"])])
        lines = header + [line([t, lab]) for t, lab in rows]
        if damage == "short_row":
            lines.append("only_one_field")
        body = "\n".join(lines).encode()
    if damage == "junk_row":
        body += b"\n" + draw(JUNK)
    return fmt, body


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


VALID_TASK = "text,label\n" + "".join(f"the {w} film {i},{lab}\n" for i in range(8)
                                      for w, lab in (("good", "pos"), ("bad", "neg")))


@_settings(8)
@example(task=("csv", VALID_TASK.encode()), over=[])  # always one that trains
@given(task=task_files(), over=st.lists(st.sampled_from([
    "task.test_fraction=0.5", "task.val_fraction=0", "task.max_train=3", "task.train_per_class=2",
    "train.eval_every=1", "task.max_len=1"]), max_size=2))
def test_finetune_task_files(task: tuple[str, bytes], over: list[str], vocab_file: Path, capsys,
                             tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("ft")
    fmt, body = task
    path = work / f"task.{fmt}"
    path.write_bytes(body)
    argv = ["finetune", "--pretrained", "none", "--tokenizer-from", str(vocab_file),
            "--task", f"{fmt}:{path}", "--workdir", str(work / "out"), *TINY_MODEL,
            # task.max_len=8: every file that trains (2 or 3 classes) reuses one of two programs.
            "task.max_len=8", "train.steps=1", "train.batch_size=8", "train.eval_batch_size=16",
            "train.checkpoint=false", *over]
    expect_clean(argv, capsys, work)


# ----------------------------------------------------------------------------
# JSONL corpora -> tlm pretrain (a tiny model, one step)
# ----------------------------------------------------------------------------

good_doc = words.map(lambda w: json.dumps({"text": ("the good film " + w + " ") * 12}))
doc = st.one_of(
    good_doc,
    st.sampled_from(['{"text": ""}', '{"text": 3}', '{"text": null}', '{"text": ["a"]}',
                     '{"other": "the film"}', "[1, 2]", "not json", "", '"just a string"',
                     json.dumps({"text": "word " * 50_000})]),
    JUNK.map(lambda b: b.decode("latin-1")))


@_settings(4)
@example(docs=[json.dumps({"text": f"the good film {i} " * 12}) for i in range(40)],
         over=[])  # always one that trains (and then generates)
@given(docs=st.tuples(st.lists(good_doc, max_size=30), st.lists(doc, min_size=1, max_size=3)).map(
    lambda t: t[0] + t[1]), over=st.lists(st.sampled_from([
    "data.val_docs=1", "data.subset=first", "data.num_docs=3", "data.packing=pack",
    "data.text_field=body", "model.arch=bert"]), max_size=2))
def test_pretrain_corpora(docs: list[str], over: list[str], capsys, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("pre")
    corpus = work / "corpus.jsonl"
    corpus.write_text("\n".join(docs), encoding="utf-8", errors="surrogateescape")
    argv = ["pretrain", "--workdir", str(work / "run"), "data.source=jsonl",
            f"data.paths=[{corpus}]", *TINY_MODEL, "data.max_len=16", "data.vocab_size=200",
            "train.steps=1", "train.batch_size=8", "train.eval_every=0", "train.eval_batches=1",
            "train.progress=false", "train.tensorboard=false", "train.async_checkpoint=false",
            "optim.warmup_steps=0", "model.arch=gpt", *over]
    if expect_clean(argv, capsys, work) == 0 and "model.arch=bert" not in over:
        # Extreme but valid sampling options: more tokens than fit, top-k past the vocabulary.
        opts = ["--top-k=100000", "--top-p=1e-9", "--num-samples=2", "--max-new=40",
                "--temperature=0", "--json"]
        assert expect_clean(["generate", "--run", str(work / "run"), "--prompt", "the good", *opts],
                            capsys, work) == 0


# ----------------------------------------------------------------------------
# Hugging Face checkpoint folders -> tlm import-hf (then export-hf)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_parts() -> tuple[dict[str, Any], bytes]:
    """A valid tiny BertForMaskedLM's config.json dict and model.safetensors bytes."""
    import jax  # noqa: PLC0415
    from safetensors.numpy import save  # noqa: PLC0415

    from tlm_jax.config import load_config  # noqa: PLC0415
    from tlm_jax.hf.mapping import model_config_to_hf, params_to_hf_state  # noqa: PLC0415
    from tlm_jax.models import build_model, init_variables  # noqa: PLC0415
    from tlm_jax.sharding import unbox  # noqa: PLC0415

    cfg = load_config(None, [*TINY_MODEL, "data.max_len=16", f"model.vocab_size={len(VOCAB)}"])
    model = build_model(cfg.model)
    shapes = jax.eval_shape(lambda r: unbox(init_variables(model, r, 16)), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)  # random weights of the right shapes: no compile needed
    params = jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.02).astype(a.dtype),
                          shapes["params"])
    sd = params_to_hf_state(params, cfg.model, len(VOCAB))
    return model_config_to_hf(cfg.model, len(VOCAB), 0), save(sd)


hf_config_edits = st.dictionaries(
    st.sampled_from(["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                     "vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                     "hidden_dropout_prob", "type_vocab_size", "architectures", "model_type"]),
    st.one_of(st.integers(-2, 40), st.sampled_from([None, "abc", 1e30, -0.5, [], {}, True,
                                                    float("nan"), 2**40]), st.just("DELETE")),
    max_size=2)


@_settings(10)
@given(edits=hf_config_edits,
       config_kind=st.sampled_from(["ok", "ok", "ok", "junk", "list", "missing"]),
       weights=st.sampled_from(["ok", "ok", "missing", "truncated", "junk", "renamed"]),
       vocab=st.sampled_from(["ok", "ok", "missing", "empty", "no_specials", "junk"]),
       out=st.sampled_from(["new", "new", "file", "existing_run"]))
def test_import_hf_folders(edits: dict[str, Any], config_kind: str, weights: str, vocab: str,
                           out: str, hf_parts: tuple[dict[str, Any], bytes], capsys,
                           tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("hf")
    src = work / "src"
    src.mkdir()
    hf_cfg, st_bytes = dict(hf_parts[0]), hf_parts[1]
    for k, v in edits.items():
        if v == "DELETE":
            hf_cfg.pop(k, None)
        else:
            hf_cfg[k] = v
    text = {"ok": json.dumps(hf_cfg), "junk": "{not json", "list": "[1, 2]"}.get(config_kind)
    if text is not None:
        (src / "config.json").write_text(text)
    body = {"ok": st_bytes, "truncated": st_bytes[: len(st_bytes) // 2], "junk": b"\x00\xff" * 40,
            "renamed": st_bytes.replace(b"bert.", b"xxxx."), "missing": None}[weights]
    if body is not None:
        (src / "model.safetensors").write_bytes(body)
    vtext = {"ok": "\n".join(VOCAB), "empty": "", "no_specials": "\n".join(VOCAB[5:]),
             "junk": "\udcff\x00"}.get(vocab)
    if vtext is not None:
        (src / "vocab.txt").write_text(vtext, encoding="utf-8", errors="surrogateescape")
    dest = work / "run"
    if out == "file":
        dest.write_text("x")
    elif out == "existing_run":
        (dest / "checkpoints" / "0").mkdir(parents=True)
    rc = expect_clean(["import-hf", str(src), "--workdir", str(dest)], capsys, work)
    if rc == 0:  # a second import into the same run is refused; an export round-trips
        assert expect_clean(["import-hf", str(src), "--workdir", str(dest)], capsys, work) == 2
        assert expect_clean(["export-hf", str(dest), "--out", str(work / "exp")], capsys, work) == 0
        assert json.loads((work / "exp" / "config.json").read_text())["hidden_size"] > 0
