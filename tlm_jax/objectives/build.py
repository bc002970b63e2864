"""The objective registry's entries and building the configured mixture.

Each import below registers that module's objectives (``@register``): a new objective is one
new file plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.objectives import (  # noqa: F401  (registry lines)
    clm,  # clm
    conditional,  # conditional
    lem,  # lem
    mlm,  # mlm
    rts,  # rts, crts, slm
    salt,  # salt
    thinking,  # thinking
)
from tlm_jax.objectives.base import OBJECTIVES, Objective, parse_names
from tlm_jax.objectives.runs import RunAccess


def build_objectives(cfg: ObjectiveConfig, special: SpecialTokens,
                     max_len: int, corpus: Any = None,
                     runs: RunAccess | None = None) -> list[tuple[Objective, float]]:
    """Instantiate the weighted mixture named by ``cfg.names``.

    With ``corpus`` (a :class:`~tlm_jax.data.corpus.Corpus`), each objective's
    :meth:`Objective.setup` runs once on it. ``runs`` reaches trained runs for the objectives
    that build on one (C-RTS embedding clusters, a SALT teacher, LM thinking trajectories).
    """
    built = []
    for name, weight in parse_names(cfg.names):
        if name not in OBJECTIVES:
            raise TLMError(f"unknown objective '{name}'",
                           f"use one of: {', '.join(sorted(OBJECTIVES))}")
        opts = dict(cfg.options.get(name, {})) if isinstance(cfg.options.get(name), dict) else {}
        built.append((OBJECTIVES[name](cfg=cfg, special=special, max_len=max_len,
                                       options=opts, name=name, runs=runs), weight))
    if corpus is not None:
        for obj, _ in built:
            obj.setup(corpus)
    return built


@dataclass(frozen=True)
class DocumentHooks:
    """What the objectives ask of data preparation: a batched rewrite, its key, tokens."""

    transform: Callable[[list[str]], list[str]] | None = None
    key: str = ""
    extra_special: tuple[str, ...] = ()


def document_hooks(cfg: ObjectiveConfig, max_len: int = 128,
                   runs: RunAccess | None = None) -> DocumentHooks:
    """Collect the host-side document rewrites and extra special tokens of ``cfg.names``.

    Rewrites compose in the order the objectives are named. Built before the
    tokenizer exists, so the objectives see placeholder special-token ids here.
    """
    placeholder = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=0)
    objs = [o for o, _ in build_objectives(cfg, placeholder, max_len, runs=runs)]
    extra: list[str] = []
    for o in objs:
        extra += [t for t in o.extra_special if t not in extra]
    rewriters = [o for o in objs if o.document_key()]
    if not rewriters:
        return DocumentHooks(None, "", tuple(extra))

    def transform(texts: list[str]) -> list[str]:
        for o in rewriters:
            texts = o.prepare_documents(texts)
        return texts

    return DocumentHooks(transform, "|".join(o.document_key() for o in rewriters), tuple(extra))
