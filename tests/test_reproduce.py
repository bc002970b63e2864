"""The plateau guard (tlm_jax/eval/plateau.py, experiments/guard.py) and the one-command
reproduction (experiments/reproduce.py): synthetic numbers, then two tiny experiments end
to end, interrupted and resumed, with the README's marked tables rewritten."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_experiment_preset

from experiments import common as C
from experiments import guard
from experiments import readme_tables as RT
from experiments import reproduce as R
from experiments.reproduce_plan import planned_runs
from tlm_jax.eval import plateau as PL

# ----------------------------------------------------------------------------- the helper


def test_unigram_entropy_and_loss_match_the_distribution() -> None:
    assert PL.unigram_entropy(np.array([0, 1, 2, 3] * 10), 4) == pytest.approx(math.log(4))
    # Excluded (special) ids are neither counted nor predicted.
    assert PL.unigram_entropy(np.array([0, 0, 0, 5, 6]), 8, exclude=[0]) == pytest.approx(math.log(2))
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(50, 0.3))
    h = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    train, held = rng.choice(50, 400_000, p=p), rng.choice(50, 100_000, p=p)
    # A frequency model estimated on train scores the true entropy on held-out samples.
    assert PL.unigram_loss(train, held, 50) == pytest.approx(h, abs=0.01)
    assert PL.unigram_entropy(train, 50) == pytest.approx(h, abs=0.01)
    # A token never seen in training costs a finite amount (add-one smoothing) ...
    unseen = PL.unigram_loss(np.array([1, 1, 2]), np.array([3]), 5, exclude=[0])
    assert unseen == pytest.approx(-math.log(1 / (3 + 4)))
    # ... and the better the train/eval match, the lower the loss.
    assert PL.unigram_loss(train, held, 50) < PL.unigram_loss(rng.permutation(50)[train], held, 50)


def test_plateau_verdict_on_synthetic_numbers() -> None:
    on = PL.plateau_verdict(6.52, 7.00)
    assert on.on_plateau is True and on.threshold == pytest.approx(6.0) and "on the plateau" in on.reason
    off = PL.plateau_verdict(4.96, 7.00)
    assert off.on_plateau is False and "left" in off.reason
    assert PL.plateau_verdict(6.0, 7.0).on_plateau is False  # the threshold itself counts as left
    assert PL.plateau_verdict(6.4, 7.0, margin=0.5).on_plateau is False
    for v, u in ((None, 7.0), (float("nan"), 7.0), (6.0, None)):
        assert PL.plateau_verdict(v, u).on_plateau is None
    assert PL.token_loss({"slm_loss": 7.1, "mlm_loss": 6.9, "loss": 7.0}) == ("mlm_loss", 6.9)
    assert PL.token_loss({"rts_loss": 12.0, "loss": 12.0}) is None


def _record(loss: float | None, unigram: float | None, steps: int = 100) -> dict:
    return {"run": f"/runs/pretrain/m{steps}", "steps": steps, "seconds": 10.0,
            "final_val": {"mlm_loss": loss} if loss is not None else {"rts_loss": 9.0},
            "unigram": {"unigram_loss": unigram, "source": "test"} if unigram else None}


def test_guard_annotates_reports_idempotently() -> None:
    data = {"runs": {"a": {"pretrain": _record(6.8, 7.0)}, "b": {"pretrain": _record(4.9, 7.0)},
                     "c": {"pretrain": _record(None, 7.0)}}, "environment": {"cpu": "X", "cpu_count": 2}}
    md, out = guard.annotate("# Title\n\nbody", data)
    assert list(out["plateau"]["models"]) == ["a", "b", "c"]
    assert out["plateau"]["flagged"] is True and out["plateau"]["models"]["c"]["on_plateau"] is None
    lines = md.splitlines()
    assert lines[0] == "# Title"
    assert lines[2].startswith("> **Plateau guard: NOT out of the MLM plateau.** 1 of 2")
    assert lines[4].startswith("> **Pretraining budget:** a: 100 steps") and "Machine: X" in lines[4]
    assert guard.annotate(md, out)[0] == md  # a second pass replaces its own lines
    assert guard.summary_line(out).startswith("PLATEAU: 1 of 2")
    # A model without its own baseline is judged against the fallback; none at all: not judged.
    bare = {"pretrain": _record(5.5, None)}
    assert guard.judge(guard.report_models(bare))["flagged"] is None
    fb = guard.judge(guard.report_models(bare), {"unigram_loss": 7.0, "source": "ref"})
    assert fb["flagged"] is False and fb["models"]["m100"]["unigram_source"] == "ref"
    # A report without runs judges the runs it borrows (token_overlap reuses data_size's).
    _, b = guard.annotate("# T", {"points": []}, borrowed={"500": _record(6.9, 7.0)})
    assert b["plateau"]["flagged"] is True and "models_from" in b["plateau"]


def test_readme_blocks_are_replaced_between_markers_only() -> None:
    text = ("intro 1.0\n<!-- reproduce:a -->\nold 9.9\n<!-- /reproduce:a -->\nmid\n"
            "<!-- reproduce:b -->\n<!-- /reproduce:b -->\nend\n")
    out, done, missing = RT.rewrite_readme(text, {"a": "new A", "b": "new B", "zz": "x"})
    assert done == ["a", "b"] and missing == ["zz"]
    assert out == ("intro 1.0\n<!-- reproduce:a -->\nnew A\n<!-- /reproduce:a -->\nmid\n"
                   "<!-- reproduce:b -->\nnew B\n<!-- /reproduce:b -->\nend\n")
    assert RT.rewrite_readme(out, {"a": "new A", "b": "new B"})[0] == out
    assert "lacks what this table needs" in RT.block("pretrain_gap", {"preset": "cpu"}, "res/x")
    assert "No `res/x/report.json` yet" in RT.block("pretrain_gap", None, "res/x")


# ----------------------------------------------------------------------------- end to end

# A hidden-32 one-layer model, 4 steps on 200 Wikipedia articles; data_size on 100 and 200
# of them (200 is the gap run itself, so the two experiments share it), two seeds.
TINY = dataclasses.replace(tiny_experiment_preset(steps=4, docs=200), data_sizes=(100, 200),
                           size_tasks=("ag_news",), size_steps=0, seeds=(0, 1))
ONLY = "pretrain_gap,data_size"
README = """# x

## Experiments

Kept 12.3.

<!-- reproduce:pretrain_gap -->
stale 99.9
<!-- /reproduce:pretrain_gap -->

<!-- reproduce:data_size -->
<!-- /reproduce:data_size -->

Also kept.
"""


def _mtimes(runs: Path) -> dict[str, float]:
    files = [*runs.glob("pretrain/*/summary.json"), *runs.glob("finetune/*/results.json"),
             *runs.glob("finetune/*/seed_*/results.json")]
    return {str(f): f.stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_reproduce_two_experiments_resume_and_readme(tmp_path: Path, data_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(C.PRESETS, "tiny", TINY)
    wd, runs, readme = tmp_path / "results", tmp_path / "runs", tmp_path / "README.md"
    readme.write_text(README)
    argv = ["--preset", "tiny", "--workdir", str(wd), "--runs-dir", str(runs), "--only", ONLY,
            "--readme", str(readme)]

    # Run 1 is interrupted (as by Ctrl-C) at data_size's first fine-tune.
    real = C.run_finetune

    def interrupt(preset, root, name, *a, **kw):  # noqa: ANN001, ANN202
        if "docs100" in name:
            raise KeyboardInterrupt
        return real(preset, root, name, *a, **kw)

    monkeypatch.setattr(C, "run_finetune", interrupt)
    with pytest.raises(KeyboardInterrupt):
        R.main(argv)
    monkeypatch.setattr(C, "run_finetune", real)
    state = json.loads((runs / R.STATE_FILE).read_text())
    assert list(state["experiments"]) == ["pretrain_gap"]
    before = _mtimes(runs)

    # Run 2 resumes: pretrain_gap is skipped whole, data_size reuses both pretraining runs.
    assert R.main(argv) == 0
    log = (runs / "logs" / "data_size.log").read_text()
    assert log.count("start/resume") == 1  # the 100-document run, in run 1 (the gap run: in
    last = log.split(R.RUN_HEADER)[-1]       # pretrain_gap's log); in run 2 both are skipped
    assert "start/resume" not in last and last.count("finished earlier, skipped") >= 2
    after = _mtimes(runs)
    assert all(after[f] == t for f, t in before.items())  # nothing finished was redone
    # The shared run was pretrained once: two runs, exactly the ones the dry-run plan names.
    dirs = {d.name for d in (runs / "pretrain").iterdir() if d.is_dir()}
    planned = {n for e in ONLY.split(",") for n, _, _ in planned_runs(e, "tiny", runs)}
    assert dirs == planned and len(dirs) == 2

    # Run 3 does nothing: both experiments are in the state file.
    assert R.main(argv) == 0
    assert _mtimes(runs) == after

    # The tiny model (4 steps) has not left the plateau: the report and the README say so.
    rep = json.loads((wd / "pretrain_gap" / "report.json").read_text())
    (m,) = rep["plateau"]["models"].values()
    assert rep["plateau"]["flagged"] is True and m["on_plateau"] is True
    assert m["val_loss"] > m["unigram_loss"] - PL.PLATEAU_MARGIN
    assert m["unigram_source"].startswith("token cache ")
    b = rep["budget"]["models"][next(iter(rep["budget"]["models"]))]
    assert b["steps"] == 4 and b["tokens_seen"] == 4 * TINY.pretrain_batch * TINY.max_len
    assert rep["budget"]["machine"]["cpu"]
    md = (wd / "pretrain_gap" / "report.md").read_text().splitlines()
    assert md[2].startswith("> **Plateau guard: NOT out of the MLM plateau.**")
    text = readme.read_text()
    acc = C.fmt_ci(rep["tasks"]["ag_news"]["pretrained"]["accuracy"])
    assert "stale 99.9" not in text and "Kept 12.3." in text and "Also kept." in text
    assert f"| AG News (8) | {acc} |" in text and "still on the MLM plateau" in text
    assert "| 100 | 4 |" in text  # data_size's row for 100 documents

    # --readme-only re-renders the same tables; a report whose runs' caches are gone is judged
    # against the preset's reference corpus -- here the gap run's own corpus, same number.
    rep["pretrain"]["unigram"] = None
    (wd / "pretrain_gap" / "report.json").write_text(json.dumps(rep))
    readme.write_text(README)
    assert R.main([*argv, "--readme-only"]) == 0
    again = json.loads((wd / "pretrain_gap" / "report.json").read_text())
    (m2,) = again["plateau"]["models"].values()
    assert m2["unigram_source"].startswith("reference: ")
    assert m2["unigram_loss"] == pytest.approx(m["unigram_loss"])
    assert readme.read_text() == text
    assert _mtimes(runs) == after
