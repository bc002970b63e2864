"""Experiments of "Tiny language models" (arXiv 2507.14871), composed from tlm_jax.

Each experiment is ``python -m experiments.<name> --workdir DIR [--preset cpu|paper]``
and writes ``DIR/report.md``, ``DIR/report.json`` and PNG plots:

* ``pretrain_gap``   -- pretrained vs random-init twin on every available task;
* ``data_size``      -- that gap as a function of the pretraining subset size;
* ``token_overlap``  -- token overlap between pretraining corpus and each task, vs the gap;
* ``soft_committee`` -- K shallow pretrained models averaged vs one deep model, with latency.

Sub-runs (pretraining runs, fine-tunes) live under ``--runs-dir`` (default
``DIR/runs``), one workdir each; a finished sub-run (``summary.json`` /
``results.json`` present) is skipped, an unfinished pretraining run resumes from
its checkpoints. Pointing several experiments at the same ``--runs-dir`` lets
them share identical sub-runs (e.g. the largest ``data_size`` run *is* the
``pretrain_gap`` run). Reports never contain checkpoints.
"""
