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
them share identical sub-runs (e.g. ``pretrain_gap``'s run is the tokenizer of
``data_size`` and the base of ``continual``). Reports never contain checkpoints.

``python -m experiments.reproduce`` runs every experiment in that way (one runs
directory, shared runs first, resumable) and rewrites the README's tables from the
reports; every report carries its pretraining budget and the plateau guard's
verdict (:mod:`experiments.guard`).
"""
