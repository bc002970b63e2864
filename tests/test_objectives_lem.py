"""LEM: heuristic tagger, unit construction, one token per unit, priority, 80/10/10."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.objectives import build_objectives
from tlm_jax.objectives.lem import (
    ENTITY,
    NONE,
    NOUN,
    VERB,
    continuation_table,
    entity_spans,
    lem_select,
    tag_text,
    vocabulary_tags,
)

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=100)
# Toy vocabulary: ids 5-19 entity words, 20-29 verbs, 30-49 nouns, 50-79 other words,
# 80-99 continuation pieces ("##...").
TAGS = np.zeros(100, np.int32)
TAGS[5:20], TAGS[20:30], TAGS[30:50] = ENTITY, VERB, NOUN
CONT = np.zeros(100, bool)
CONT[80:] = True


def _obj(**options):
    obj = build_objectives(ObjectiveConfig(names=["lem"], options={"lem": options}), SPECIAL,
                           32)[0][0]
    obj.set_tables(TAGS, CONT)
    return obj


def test_tagger_heuristics() -> None:
    tags = dict(tag_text("Yesterday the Santa Cruz Warriors signed a new player in Boston. "
                         "He wanted to celebrate the organisation."))
    assert tags["Santa"] == tags["Cruz"] == tags["Warriors"] == ENTITY
    assert tags["Boston"] == ENTITY
    assert tags["Yesterday"] == NONE  # sentence-initial, next word not capitalised
    assert tags["signed"] == VERB and tags["celebrate"] == VERB and tags["wanted"] == VERB
    assert tags["player"] == NOUN and tags["organisation"] == NOUN
    assert tags["the"] == NONE and tags["He"] == NONE
    assert entity_spans("Jarred Shaw joined the Santa Cruz Warriors.") == [
        "Jarred Shaw", "Santa Cruz Warriors"]


class _Enc:
    def __init__(self, ids):
        self.ids = ids


class _Tok:
    """A whole-word toy tokenizer: each known lowercase word is one id."""

    vocab = {"paris": 10, "is": 11, "a": 12, "city": 13, "##s": 14}

    def encode_batch(self, words, add_special_tokens=False):
        return [_Enc([self.vocab.get(w.lower(), 1)]) for w in words]

    def get_vocab(self):
        return self.vocab


def test_vocabulary_tags_take_the_majority_tag_of_each_first_piece() -> None:
    docs = ["He said Paris is a city. In Paris the city is old. Paris is big."]
    tags = vocabulary_tags(docs, _Tok(), 20)
    assert tags[10] == ENTITY and tags[11] == VERB and tags[13] == NOUN and tags[12] == NONE
    np.testing.assert_array_equal(np.nonzero(continuation_table(_Tok(), 20))[0], [14])


def _select(ids, key=0, rate=0.15, P=8, priority=(0, 1, 2, 3)):
    ids = jnp.asarray(ids, jnp.int32)
    cands = ids > 4
    return lem_select(ids, jax.random.PRNGKey(key), jnp.asarray(TAGS), jnp.asarray(CONT),
                      jnp.asarray(priority), cands, ids != 0, rate, P)


def test_one_token_per_unit_and_entity_runs_merge() -> None:
    # [CLS] ent ent ##x | verb ##x | noun | other other | ent [SEP] pad
    ids = [2, 5, 6, 80, 20, 81, 30, 50, 51, 7, 3, 0]
    for key in range(20):
        pos, sel, info = _select(ids, key, rate=1.0, P=10)
        unit = np.asarray(info["unit"])
        # units: {5,6,##}=0, {verb,##}=1, {noun}=2, {50}=3, {51}=4, {ent 7}=5
        np.testing.assert_array_equal(unit[1:10], [0, 0, 0, 1, 1, 2, 3, 4, 5])
        chosen = np.asarray(pos)[np.asarray(sel)]
        assert len(chosen) == 6  # budget min(round(1.0 * 11), 6 units)
        assert len(set(unit[chosen])) == len(chosen), "two tokens of one unit were masked"
        assert np.all(np.asarray(ids)[chosen] > 4), "a special token was masked"


def test_priority_entities_then_verbs_then_nouns_then_others() -> None:
    # units: 2 entity words (separate: a verb between), 2 verbs, 2 nouns, 4 others
    ids = [2, 5, 20, 6, 21, 30, 31, 50, 51, 52, 53, 3]
    order = {ENTITY: 0, VERB: 1, NOUN: 2, NONE: 3}
    for budget_rate, n in [(2 / 12, 2), (4 / 12, 4), (6 / 12, 6)]:
        for key in range(10):
            pos, sel, _ = _select(ids, key, rate=budget_rate, P=10)
            chosen = np.asarray(pos)[np.asarray(sel)]
            assert len(chosen) == n
            got = sorted(order[TAGS[ids[c]]] for c in chosen)
            assert got == sorted([0, 0, 1, 1, 2, 2][:n]), (n, got)


def test_disabled_types_become_ordinary_words() -> None:
    ids = [2, 5, 20, 6, 21, 30, 31, 50, 51, 52, 53, 3]
    seen_other = False
    for key in range(30):
        pos, sel, _ = _select(ids, key, rate=2 / 12, P=10, priority=(0, 0, 0, 3))
        chosen = np.asarray(pos)[np.asarray(sel)]
        assert sorted(TAGS[np.asarray(ids)[chosen]].tolist()) == [ENTITY, ENTITY]
        pos, sel, _ = _select(ids, key, rate=3 / 12, P=10, priority=(0, 0, 0, 3))
        third = [c for c in np.asarray(pos)[np.asarray(sel)] if TAGS[ids[c]] != ENTITY]
        seen_other |= TAGS[ids[third[0]]] == NONE
    assert seen_other, "with verbs/nouns disabled, other words must compete for the budget"


def test_budget_counts_non_pad_tokens_and_is_deterministic() -> None:
    obj = _obj()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (64, 32)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 1] = 50  # a word start, so no row begins with a continuation
    batch = {"input_ids": jnp.asarray(ids), "index": jnp.arange(64)}
    fn = jax.jit(obj.transform)
    inputs, t = fn(batch, jax.random.PRNGKey(0))
    again, _ = fn(batch, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(inputs["input_ids"], again["input_ids"])
    w = np.asarray(t["weights"])
    assert np.all(w.sum(1) <= round(0.15 * 32))
    np.testing.assert_array_equal(np.asarray(t["labels"])[w > 0],
                                  ids[np.repeat(np.arange(64)[:, None], 5, 1)[w > 0],
                                      np.asarray(inputs["masked_positions"])[w > 0]])


def test_corruption_is_80_10_10() -> None:
    obj = _obj()
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 80, (512, 32)).astype(np.int32)  # no continuations: every token a unit
    ids[:, 0], ids[:, -1] = 2, 3
    inputs, t = jax.jit(obj.transform)({"input_ids": jnp.asarray(ids), "index": jnp.arange(512)},
                                       jax.random.PRNGKey(2))
    pos, w = np.asarray(inputs["masked_positions"]), np.asarray(t["weights"]) > 0
    rows = np.repeat(np.arange(512)[:, None], pos.shape[1], 1)
    orig, new = ids[rows, pos][w], np.asarray(inputs["input_ids"])[rows, pos][w]
    n = len(orig)
    assert abs(np.mean(new == SPECIAL.mask) - 0.8) < 4 * np.sqrt(0.16 / n)
    assert abs(np.mean(new == orig) - 0.1) < 4 * np.sqrt(0.09 / n) + 0.003
