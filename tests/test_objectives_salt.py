"""SALT: KD loss identities, the weight schedule, SALT_DS selection, the in-step teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.config import ModelConfig, ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.models import build_model, init_variables
from tlm_jax.objectives import build_objectives
from tlm_jax.objectives.base import with_step
from tlm_jax.objectives.salt import (
    _masked_median,
    distill_terms,
    kd_weight_schedule,
    select_top,
    selection_scores,
)
from tlm_jax.sharding import unbox

V = 40
SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=V)


def _case(seed=0, b=3, length=6):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    s = jax.random.normal(k1, (b, length, V))
    t = 2.0 * jax.random.normal(k2, (b, length, V))
    labels = jax.random.randint(k3, (b, length), 5, V)
    w = jnp.ones((b, length)).at[:, -2:].set(0.0)
    return s, t, labels, w


def _ce(s, labels, w):
    logp = jax.nn.log_softmax(s, -1)
    return float(-(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * w).sum())


def test_kl_is_zero_when_student_equals_teacher() -> None:
    s, _, labels, w = _case()
    terms = distill_terms(s, s, labels, w, jnp.full((3,), 0.7), V, 1.0, "salt")
    assert abs(float(terms.metrics["salt_kl"])) < 1e-4
    np.testing.assert_allclose(float(terms.loss_sum), 0.3 * _ce(s, labels, w), rtol=1e-5)
    terms2 = distill_terms(s, s, labels, w, jnp.full((3,), 0.7), V, 2.0, "salt")
    assert abs(float(terms2.metrics["salt_kl"])) < 1e-4  # at any temperature


def test_weight_zero_is_ce_and_weight_one_is_kl() -> None:
    s, t, labels, w = _case(1)
    t0 = distill_terms(s, t, labels, w, jnp.zeros(3), V, 1.0, "salt")
    np.testing.assert_allclose(float(t0.loss_sum), _ce(s, labels, w), rtol=1e-5)
    t1 = distill_terms(s, t, labels, w, jnp.ones(3), V, 1.0, "salt")
    ps, pt = jax.nn.log_softmax(s, -1), jax.nn.softmax(t, -1)
    kl = (pt * (jnp.log(pt) - ps)).sum(-1)
    np.testing.assert_allclose(float(t1.loss_sum), float((kl * w).sum()), rtol=1e-5)
    assert float(t1.weight_sum) == float(w.sum())


def test_one_hot_teacher_gives_kd_equal_to_ce() -> None:
    s, _, labels, w = _case(2)
    teacher = 1e4 * jax.nn.one_hot(labels, V)  # p_T = one-hot(y): KL = CE - H(p_T) = CE
    t1 = distill_terms(s, teacher, labels, w, jnp.ones(3), V, 1.0, "salt")
    np.testing.assert_allclose(float(t1.loss_sum), _ce(s, labels, w), rtol=1e-4)


def test_padding_rows_of_the_vocabulary_are_ignored_by_the_kl() -> None:
    s, _, labels, w = _case(3)
    padded_teacher = jnp.concatenate([s, jnp.full((*s.shape[:2], 24), 50.0)], -1)
    terms = distill_terms(s, padded_teacher, labels, w, jnp.ones(3), V, 1.0, "salt")
    assert abs(float(terms.metrics["salt_kl"])) < 1e-4


def test_weight_schedule() -> None:
    steps = jnp.asarray([0, 50, 99, 100, 150])
    np.testing.assert_allclose(kd_weight_schedule(steps, 0.5, 100, "constant"),
                               [0.5, 0.5, 0.5, 0.0, 0.0])
    lin = np.asarray(kd_weight_schedule(steps, 0.5, 100, "linear"))
    np.testing.assert_allclose(lin, [0.5, 0.25, 0.005, 0.0, 0.0], atol=1e-6)
    assert np.all(np.diff(lin) <= 0)
    np.testing.assert_array_equal(kd_weight_schedule(steps, 0.5, 0), np.zeros(5))


def test_selection_score_is_the_median_loss_of_learnable_tokens() -> None:
    np.testing.assert_allclose(_masked_median(jnp.asarray([[5.0, 1.0, 3.0, 9.0]]),
                                              jnp.asarray([[True, True, True, False]])), [3.0])
    np.testing.assert_allclose(_masked_median(jnp.asarray([[4.0, 1.0, 2.0, 0.0]]),
                                              jnp.asarray([[True, True, True, True]])), [1.5])
    assert float(_masked_median(jnp.ones((1, 3)), jnp.zeros((1, 3), bool))[0]) == -np.inf
    # toy teacher over 4 ids: gold of token 0 ranked 1st, token 1 ranked 3rd, token 2 ranked 2nd
    logits = jnp.log(jnp.asarray([[[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.15, 0.05],
                                   [0.6, 0.3, 0.05, 0.05]]]))
    labels = jnp.asarray([[0, 2, 1]])
    w = jnp.ones((1, 3))
    sc = selection_scores(logits, labels, w, top_k=2)  # keeps tokens 0 and 2
    np.testing.assert_allclose(sc, [0.5 * (-np.log(0.7) - np.log(0.3))], rtol=1e-5)
    sc1 = selection_scores(logits, labels, w, top_k=1)  # keeps token 0 only
    np.testing.assert_allclose(sc1, [-np.log(0.7)], rtol=1e-5)
    # padding is invariant: a zero-weight token changes nothing
    sc_pad = selection_scores(logits, labels, w.at[0, 1].set(0.0), top_k=2)
    np.testing.assert_allclose(sc_pad, sc, rtol=1e-6)


def test_select_top_takes_the_highest_finite_scores() -> None:
    scores = jnp.asarray([0.5, 3.0, -jnp.inf, 2.0])
    np.testing.assert_array_equal(select_top(scores, 0.5), [False, True, False, True])
    np.testing.assert_array_equal(select_top(scores, 1.0), [True, True, False, True])


def _init(model, seed):
    return jax.jit(lambda r: unbox(init_variables(model, r, 8, heads=("lm",))))(
        jax.random.PRNGKey(seed))["params"]


@pytest.fixture(scope="module")
def salt_obj():
    cfg = ModelConfig(arch="gpt", vocab_size=V, hidden=16, layers=1, heads=2, intermediate=32,
                      max_len=8, dropout=0.0, attention_dropout=0.0)
    teacher = build_model(cfg)
    params = _init(teacher, 0)
    ocfg = ObjectiveConfig(names=["salt"], options={"salt": {
        "kd_steps": 10, "kd_weight": 0.5, "select_fraction": 0.5}})
    obj = build_objectives(ocfg, SPECIAL, 8)[0][0]
    obj.set_teacher(teacher, params)
    return obj, teacher, params


def test_transform_runs_the_teacher_only_during_the_kd_stage(salt_obj) -> None:
    obj, teacher, params = salt_obj
    ids = jnp.asarray(np.random.default_rng(0).integers(5, V, (4, 8)), jnp.int32)
    batch = {"input_ids": ids, "index": jnp.arange(4)}
    fn = jax.jit(obj.transform)
    _, t = fn(with_step(batch, 3), jax.random.PRNGKey(0))
    ref = teacher.apply({"params": params}, {"input_ids": ids}, heads=("lm",))["lm_logits"]
    np.testing.assert_allclose(t["teacher_logits"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t["kd_weight"], 0.5 * (1 - 3 / 10) * np.ones(4), rtol=1e-6)
    assert (np.asarray(t["weights"]).sum(1) > 0).sum() == 2  # SALT_DS keeps half the batch
    _, late = fn(with_step(batch, 10), jax.random.PRNGKey(0))
    assert not np.asarray(late["teacher_logits"]).any()  # the teacher branch was skipped
    np.testing.assert_array_equal(late["kd_weight"], np.zeros(4))
    assert (np.asarray(late["weights"]).sum(1) > 0).all()  # every sequence trains after KD


def test_teacher_gets_no_gradient_and_is_not_updated(salt_obj) -> None:
    obj, _, params = salt_obj
    before = jax.tree.map(np.array, params)
    student = build_model(obj.teacher_model.cfg)
    sparams = _init(student, 1)
    batch = with_step({"input_ids": jnp.asarray(np.random.default_rng(1).integers(5, V, (4, 8)),
                                                jnp.int32), "index": jnp.arange(4)}, 0)

    def loss(p, tp):
        obj.teacher_params = tp  # the transform's teacher forward now depends on tp
        inputs, targets = obj.transform(batch, jax.random.PRNGKey(0))
        out = student.apply({"params": p}, inputs, heads=("lm",))
        return obj.loss(out, targets).loss_sum

    try:
        g_student, g_teacher = jax.jit(jax.grad(loss, argnums=(0, 1)))(sparams, params)
    finally:
        obj.teacher_params = params
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_teacher)) == 0.0
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_student)) > 0.0
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
