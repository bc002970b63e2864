"""INGENIOUS subset selection (Renduchintala et al., Findings of EMNLP 2023): the maths and the schedule.

Given one feature vector per training example (computed by a higher layer from a
tlm_jax model, :mod:`tlm_jax.train.selection`), this module

1. partitions the ``n`` examples at random into ``N_P`` (nearly) equal blocks;
2. inside each block runs greedy maximisation of the facility-location function
   ``f(A) = sum_i max(0, max_{j in A} K_ij)`` over the block's cosine kernel ``K``,
   recording each element's marginal gain at its insertion;
3. turns the gains of each block into sampling probabilities with the Taylor
   softmax ``p_i = (1 + g_i + g_i^2/2) / sum_j (...)`` (gains divided by ``tau`` first);
4. draws a subset of ``k = fraction * n`` examples -- ``min(ceil(|P| k / n), |P| - 1)``
   from each block ``P``, without replacement, with those probabilities;
5. redraws the subset (from the *same* probabilities) every ``R`` steps after a warm
   start of ``W`` steps on all the data (:class:`SubsetSchedule`).

Choices where the paper or its code leave room (documented, tested):

* Negative cosine similarities are clipped to 0, as submodlib does by starting every
  "nearest selected similarity" at 0; this keeps ``f`` monotone and ``f(empty) = 0``.
* Greedy runs over the whole block (budget ``|P|``), not ``|P| - 1`` as the released
  code does, so the last element also gets a gain and every element has ``p > 0``.
* Blocks are processed *together*: kernels are stacked into ``[blocks, b, b]`` arrays
  and every greedy step is one vectorised numpy operation over all blocks, so the
  Python loop runs ``b`` (block size) times, not ``n`` or ``n^2`` times. Blocks are
  taken in chunks so the kernel memory stays under ``max_kernel_bytes``.

Optimizers: ``"stochastic"`` (LazierThanLazyGreedy / stochastic greedy,
Mirzasoleiman et al. 2015, what the paper uses: each step evaluates a random
sample of ``ceil(|P| / budget * ln(1/eps))`` remaining candidates), ``"lazy"``
(Minoux's lazy greedy with a heap, exact), ``"greedy"`` (plain exact greedy).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import numpy as np

from tlm_jax.data.pipeline import ExampleSource, ShardInfo, local_shard
from tlm_jax.errors import TLMError

OPTIMIZERS = ("stochastic", "lazy", "greedy")
METHODS = ("none", "ingenious", "random")
_SALT_PARTITION = 0x1A9E
_SALT_SUBSET = 0x5B5E7
_SALT_ORDER = 0x0D3E
_SALT_GREEDY = 0x57C6


# ----------------------------------------------------------------------------- partition


def random_partition(n: int, num_blocks: int, seed: int) -> np.ndarray:
    """A seeded random partition of ``range(n)`` into ``num_blocks`` nearly equal blocks.

    Returns an int64 ``[num_blocks, ceil(n / num_blocks)]`` array of element ids,
    padded with ``-1``; block sizes differ by at most one.
    """
    if n <= 0:
        raise TLMError("subset selection needs at least one example", "check the training data")
    num_blocks = max(1, min(int(num_blocks), n))
    perm = np.random.default_rng([seed, _SALT_PARTITION]).permutation(n)
    width = -(-n // num_blocks)
    out = np.full((num_blocks, width), -1, np.int64)
    for b, part in enumerate(np.array_split(perm, num_blocks)):
        out[b, :len(part)] = np.sort(part)
    return out


def auto_partitions(n: int, block_size: int = 256) -> int:
    """``N_P`` when none is configured: blocks of about ``block_size`` examples."""
    return max(1, -(-n // block_size))


# ----------------------------------------------------------------------------- kernel and f


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    x = np.asarray(features, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def mean_cosine(features: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the rows (``i != j``), in ``O(n d)``.

    Near 1, the features are (nearly) collinear: every kernel entry is ~1, facility-location
    gains vanish after each block's first pick and the probabilities become uniform.
    """
    x = normalize_rows(features).astype(np.float64)
    n = len(x)
    if n < 2:
        return 1.0
    s = x.sum(axis=0)
    return float((s @ s - (x * x).sum()) / (n * (n - 1)))


def block_kernels(features: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Clipped cosine kernels ``K[p, i, j] = max(0, cos(h_i, h_j))`` of each block.

    Padded slots (id ``-1``) have all-zero rows and columns, so they neither add to
    ``f`` nor can they be useful candidates.
    """
    x = normalize_rows(features)
    valid = blocks >= 0
    xb = np.where(valid[..., None], x[np.where(valid, blocks, 0)], 0.0).astype(np.float32)
    k = np.einsum("pid,pjd->pij", xb, xb, optimize=True)
    return np.maximum(k, 0.0, out=k)


def facility_location(kernel: np.ndarray, subset: np.ndarray | list[int]) -> float:
    """``f(A) = sum_i max(0, max_{j in A} K_ij)`` for one block's kernel ``[b, b]``."""
    subset = np.asarray(subset, np.int64)
    if subset.size == 0:
        return 0.0
    return float(np.maximum(kernel[:, subset].max(axis=1), 0.0).sum())


# ----------------------------------------------------------------------------- greedy


def _marginal(kernel: np.ndarray, cur: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Gains ``sum_i max(K[p, i, c] - cur[p, i], 0)`` of candidates ``cand [P, s]``."""
    cols = np.take_along_axis(kernel, cand[:, None, :], axis=2)  # [P, b, s]
    return np.maximum(cols - cur[:, :, None], 0.0).sum(axis=1)


def _greedy_batched(kernel: np.ndarray, valid: np.ndarray, sample: int | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exact (``sample=None``) or stochastic greedy over all blocks at once.

    Returns ``(order, gains)``: ``order[p, t]`` is the slot inserted at step ``t``
    (``-1`` once a block is exhausted) and ``gains[p, j]`` the gain of slot ``j``.
    """
    num, width = valid.shape
    cur = np.zeros((num, width), np.float32)
    avail = valid.copy()
    order = np.full((num, width), -1, np.int64)
    gains = np.zeros((num, width), np.float32)
    rows = np.arange(num)
    for t in range(width):
        active = avail.any(axis=1)
        if not active.any():
            break
        if sample is None or sample >= width:
            cand = np.broadcast_to(np.arange(width), (num, width))
        else:
            # A uniform sample of the remaining slots: the ``sample`` smallest random keys.
            keys = np.where(avail, rng.random((num, width)), np.inf)
            cand = np.argpartition(keys, sample - 1, axis=1)[:, :sample]
        g = _marginal(kernel, cur, np.ascontiguousarray(cand))
        g = np.where(np.take_along_axis(avail, cand, axis=1), g, -np.inf)
        best = cand[rows, np.argmax(g, axis=1)]
        best_gain = g[rows, np.argmax(g, axis=1)]
        sel = rows[active]
        order[sel, t] = best[sel]
        gains[sel, best[sel]] = np.maximum(best_gain[sel], 0.0)
        cur[sel] = np.maximum(cur[sel], kernel[sel, :, best[sel]])
        avail[sel, best[sel]] = False
    return order, gains


def _lazy_block(kernel: np.ndarray, n_valid: int) -> tuple[np.ndarray, np.ndarray]:
    """Minoux's lazy greedy on one block's first ``n_valid`` slots (exact greedy's result)."""
    k = kernel[:n_valid, :n_valid]
    cur = np.zeros(n_valid, np.float32)
    # Upper bounds start at the singleton gains; submodularity keeps stale bounds valid.
    heap = [(-float(v), j) for j, v in enumerate(k.sum(axis=0))]
    heapq.heapify(heap)
    order, gains = [], np.zeros(n_valid, np.float32)
    while heap:
        _, j = heapq.heappop(heap)
        g = float(np.maximum(k[:, j] - cur, 0.0).sum())
        if heap and g < -heap[0][0]:
            heapq.heappush(heap, (-g, j))
            continue
        order.append(j)
        gains[j] = g
        cur = np.maximum(cur, k[:, j])
    return np.asarray(order, np.int64), gains


def greedy_gains(kernel: np.ndarray, valid: np.ndarray, *, optimizer: str = "stochastic",
                 epsilon: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy facility-location over every block; each slot's gain at its insertion.

    Args:
        kernel: ``[P, b, b]`` block kernels (:func:`block_kernels`).
        valid: ``[P, b]`` mask of real (non-padding) slots.
        optimizer: ``"stochastic"``, ``"lazy"`` or ``"greedy"``.
        epsilon: stochastic greedy's accuracy parameter (sample size
            ``ceil(ln(1/eps))`` when, as here, the budget is the whole block).
        seed: the stochastic greedy's candidate samples.

    Returns:
        ``(order [P, b], gains [P, b])`` (see :func:`_greedy_batched`).
    """
    if optimizer not in OPTIMIZERS:
        raise TLMError(f"unknown selection optimizer {optimizer!r}",
                       f"use one of: {', '.join(OPTIMIZERS)}")
    rng = np.random.default_rng([seed, _SALT_GREEDY])
    if optimizer == "lazy":
        num, width = valid.shape
        order = np.full((num, width), -1, np.int64)
        gains = np.zeros((num, width), np.float32)
        for p in range(num):
            n_valid = int(valid[p].sum())  # random_partition puts real slots first
            o, g = _lazy_block(kernel[p], n_valid)
            order[p, :len(o)] = o
            gains[p, :n_valid] = g
        return order, gains
    sample = None
    if optimizer == "stochastic":
        if not 0.0 < epsilon < 1.0:
            raise TLMError(f"selection epsilon={epsilon} is outside (0, 1)", "use e.g. 0.01")
        # (n / budget) * ln(1 / eps) with budget = n: independent of the block size.
        sample = max(1, math.ceil(math.log(1.0 / epsilon)))
    return _greedy_batched(kernel, valid, sample, rng)


def taylor_softmax(gains: np.ndarray, valid: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-block ``p = (1 + x + x^2/2) / sum(...)`` with ``x = gains / temperature``.

    ``1 + x + x^2/2 = ((x + 1)^2 + 1) / 2 > 0`` for every real ``x``, so every
    valid slot gets ``p > 0``; padded slots get 0. Each block's row sums to 1.
    """
    if temperature <= 0:
        raise TLMError(f"selection temperature={temperature} must be positive", "use e.g. 1.0")
    x = np.asarray(gains, np.float64) / temperature
    num = np.where(valid, 1.0 + x + 0.5 * x * x, 0.0)
    tot = num.sum(axis=1, keepdims=True)
    return np.divide(num, tot, out=np.zeros_like(num), where=tot > 0)


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SelectionPlan:
    """Everything needed to draw subsets: blocks and each example's probability.

    Attributes:
        blocks: ``[P, b]`` example ids per block, ``-1`` padded.
        gains: ``[n]`` facility-location gain of each example at its insertion.
        probs: ``[n]`` sampling probability of each example within its block.
        fraction: subset size ``k / n``.
        method: ``"ingenious"`` or ``"random"`` (uniform probabilities).
    """

    blocks: np.ndarray
    gains: np.ndarray
    probs: np.ndarray
    fraction: float
    method: str = "ingenious"

    @property
    def num_examples(self) -> int:
        """``n``."""
        return int(self.probs.size)

    @property
    def subset_size(self) -> int:
        """``k = round(fraction * n)`` (the per-block shares round up, so draws are >= k)."""
        return max(1, int(round(self.fraction * self.num_examples)))

    def block_shares(self) -> np.ndarray:
        """``min(ceil(|P| k / n), |P| - 1)`` draws per block, as the paper's code."""
        sizes = (self.blocks >= 0).sum(axis=1)
        share = np.ceil(sizes * self.subset_size / self.num_examples).astype(np.int64)
        return np.maximum(np.minimum(share, sizes - 1), 0)

    def sample(self, seed: int) -> np.ndarray:
        """One subset: sorted example ids, drawn per block without replacement from ``probs``.

        Efraimidis-Spirakis keys ``u^(1/p)`` (compared as ``log(u) / p``): the ``m``
        largest keys of a block are a draw of ``m`` items without replacement with
        probabilities proportional to ``p`` -- vectorised over all blocks at once.
        """
        valid = self.blocks >= 0
        p = np.where(valid, self.probs[np.where(valid, self.blocks, 0)], 0.0)
        u = np.random.default_rng([seed, _SALT_SUBSET]).random(p.shape)
        with np.errstate(divide="ignore"):
            keys = np.where(p > 0, np.log(np.maximum(u, 1e-300)) / np.where(p > 0, p, 1.0),
                            -np.inf)
        rank = np.argsort(-keys, axis=1, kind="stable")
        take = np.arange(p.shape[1])[None, :] < self.block_shares()[:, None]
        chosen = np.take_along_axis(self.blocks, rank, axis=1)[take]
        return np.sort(chosen[chosen >= 0])

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` atomically (tmp + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, blocks=self.blocks, gains=self.gains, probs=self.probs,
                 fraction=np.float64(self.fraction), method=np.asarray(self.method))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SelectionPlan:
        """Read a plan written by :meth:`save`."""
        try:
            z = np.load(Path(path))
            return cls(z["blocks"], z["gains"], z["probs"], float(z["fraction"]),
                       str(z["method"]))
        except (OSError, KeyError, ValueError) as e:
            raise TLMError(f"cannot read the selection plan {path}: {e}",
                           "delete it; it is recomputed from the warm-start checkpoint") from e


def plan_selection(features: np.ndarray | None, *, num_examples: int, fraction: float,
                   partitions: int = 0, method: str = "ingenious", optimizer: str = "stochastic",
                   epsilon: float = 0.01, temperature: float = 1.0, seed: int = 0,
                   center: bool = False, max_kernel_bytes: int = 256 << 20) -> SelectionPlan:
    """Partition, greedy gains and Taylor-softmax probabilities for ``num_examples`` examples.

    ``features`` (``[n, d]``) is needed for ``"ingenious"``; ``"random"`` uses uniform
    probabilities inside the same kind of blocks (the paper's random-subset baseline,
    with the same block shares and refresh schedule). ``center`` subtracts the mean
    feature before the cosine kernel -- not in the paper; it restores an informative
    kernel when a barely trained model's pooled features share one dominant direction
    (see :func:`mean_cosine`).
    """
    if method not in ("ingenious", "random"):
        raise TLMError(f"unknown selection method {method!r}", "use ingenious or random")
    if not 0.0 < fraction <= 1.0:
        raise TLMError(f"selection fraction={fraction} is outside (0, 1]", "use e.g. 0.25")
    n = int(num_examples)
    blocks = random_partition(n, partitions or auto_partitions(n), seed)
    valid = blocks >= 0
    gains = np.zeros(n, np.float32)
    if method == "ingenious":
        if features is None or len(features) != n:
            raise TLMError(f"INGENIOUS needs one feature row per example ({n}), got "
                           f"{None if features is None else len(features)}",
                           "compute features for every training example")
        if center:
            features = np.asarray(features, np.float32)
            features = features - features.mean(axis=0, keepdims=True)
        width = blocks.shape[1]
        per_block = max(1, width * width * 4 * 4)  # kernel + temporaries, float32
        chunk = max(1, int(max_kernel_bytes // per_block))
        for lo in range(0, len(blocks), chunk):
            b, v = blocks[lo:lo + chunk], valid[lo:lo + chunk]
            _, g = greedy_gains(block_kernels(features, b), v, optimizer=optimizer,
                                epsilon=epsilon, seed=seed + lo)
            gains[b[v]] = g[v]
    block_gains = np.where(valid, gains[np.where(valid, blocks, 0)], 0.0)
    p = taylor_softmax(block_gains, valid, temperature if method == "ingenious" else 1.0)
    if method == "random":
        p = np.where(valid, 1.0, 0.0) / np.maximum(valid.sum(axis=1, keepdims=True), 1)
    probs = np.zeros(n, np.float64)
    probs[blocks[valid]] = p[valid]
    return SelectionPlan(blocks, gains, probs, float(fraction), method)


# ----------------------------------------------------------------------------- schedule


class SubsetSchedule:
    """Which examples global batch ``g`` holds under warm start + periodic refresh.

    Steps ``[0, W)`` read the full data in exactly the order
    :func:`tlm_jax.data.pipeline.make_dataset` would (shuffled, reshuffled each epoch),
    so they equal a full-data run's first ``W`` steps. From step ``W`` on, phase
    ``q = (g - W) // R`` (``R = 0``: one phase) reads subset ``S_q = plan.sample(seed, q)``
    in a per-phase shuffled order (reshuffled on every pass). Every batch is a pure
    function of ``g``, which is what keeps checkpoint/resume exact: the Grain
    iterator's position is all the state there is.
    """

    def __init__(self, num_examples: int, global_batch: int, *, seed: int, warm_steps: int,
                 refresh_every: int, plan: SelectionPlan | None = None, cache: int = 4) -> None:
        if warm_steps < 0 or refresh_every < 0:
            raise TLMError("selection warm_steps and refresh_every must be >= 0", "fix them")
        self.n, self.batch, self.seed = int(num_examples), int(global_batch), int(seed)
        self.warm, self.every, self.plan = int(warm_steps), int(refresh_every), plan
        self._full = grain.MapDataset.range(self.n).shuffle(seed=self.seed).repeat(None)
        self._subsets: OrderedDict[int, np.ndarray] = OrderedDict()
        self._orders: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache = cache

    def phase(self, step: int) -> int:
        """``-1`` during the warm start, else the subset phase of ``step``."""
        if step < self.warm:
            return -1
        return (step - self.warm) // self.every if self.every else 0

    def subset(self, phase: int) -> np.ndarray:
        """The sorted example ids of subset ``phase`` (needs the plan)."""
        if self.plan is None:
            raise TLMError("the subset schedule reached the selection step without a plan",
                           "compute the selection plan at the end of the warm start")
        if phase not in self._subsets:
            self._subsets[phase] = self.plan.sample(_mix(self.seed, _SALT_SUBSET, phase))
            if len(self._subsets) > self._cache:
                self._subsets.popitem(last=False)
        return self._subsets[phase]

    def _order(self, phase: int, epoch: int, m: int) -> np.ndarray:
        key = (phase, epoch)
        if key not in self._orders:
            rng = np.random.default_rng([self.seed, _SALT_ORDER, phase, epoch])
            self._orders[key] = rng.permutation(m)
            if len(self._orders) > self._cache:
                self._orders.popitem(last=False)
        return self._orders[key]

    def example_ids(self, step: int) -> np.ndarray:
        """The ``global_batch`` example ids of global batch ``step``."""
        q = self.phase(step)
        if q < 0:
            lo = step * self.batch
            return np.asarray([self._full[i] for i in range(lo, lo + self.batch)], np.int64)
        sub = self.subset(q)
        m = len(sub)
        start = self.warm + q * self.every if self.every else self.warm
        pos = np.arange((step - start) * self.batch, (step - start + 1) * self.batch)
        out = np.empty(self.batch, np.int64)
        for epoch in np.unique(pos // m):
            sel = pos // m == epoch
            out[sel] = sub[self._order(q, int(epoch), m)[pos[sel] % m]]
        return out


def _mix(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(0, 2**62))


class _ScheduledBatches:
    """A random-access source of this process's rows of each scheduled global batch."""

    def __init__(self, source: ExampleSource, schedule: SubsetSchedule, shard: ShardInfo,
                 length: int) -> None:
        self.source, self.schedule, self.shard, self.length = source, schedule, shard, length
        self.local = schedule.batch // shard.count

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        ids = self.schedule.example_ids(int(g))
        lo = self.shard.index * self.local
        rows = np.stack([self.source[int(i)] for i in ids[lo:lo + self.local]])
        return {"input_ids": rows, "index": np.arange(lo, lo + self.local, dtype=np.int32)}


def make_scheduled_dataset(source: ExampleSource, schedule: SubsetSchedule, *,
                           shard: ShardInfo | None = None, length: int = 1 << 40
                           ) -> grain.MapDataset:
    """A ``MapDataset`` of batches shaped like :func:`~tlm_jax.data.pipeline.make_dataset`'s.

    Element ``g`` is this process's share of global batch ``g`` of ``schedule``.
    """
    shard = shard or local_shard()
    if len(source) != schedule.n:
        raise TLMError(f"the schedule covers {schedule.n} examples but the source has "
                       f"{len(source)}", "build the schedule from the same training source")
    if schedule.batch % shard.count:
        raise TLMError(f"global batch {schedule.batch} does not divide over {shard.count} "
                       "processes", "use a batch that is a multiple of the process count")
    return grain.MapDataset.source(_ScheduledBatches(source, schedule, shard, length))


def phase_summary(schedule: SubsetSchedule, steps: int) -> list[dict[str, Any]]:
    """Start step, size and overlap with the previous subset of every phase up to ``steps``."""
    out: list[dict[str, Any]] = []
    if schedule.plan is None or steps <= schedule.warm:
        return out
    last = schedule.phase(steps - 1)
    prev: np.ndarray | None = None
    for q in range(last + 1):
        sub = schedule.subset(q)
        start = schedule.warm + q * schedule.every if schedule.every else schedule.warm
        overlap = None if prev is None else round(len(np.intersect1d(prev, sub)) / len(sub), 4)
        out.append({"phase": q, "start_step": start, "size": int(len(sub)),
                    "overlap_with_previous": overlap})
        prev = sub
    return out

