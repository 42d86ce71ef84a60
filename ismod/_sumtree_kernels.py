"""Compiled loops for the CPU sum tree and the CPU importance sampler (numba).

On the CPU a draw of 128 indices through batched tensor operations costs about 20 operator calls of a
few µs each, whatever N; a compiled descent of a 16-ary tree costs a few hundred memory reads. These
kernels are that descent and its update, plus the two fused steps of
:class:`~ismod.sampling.ImportanceSampler` (draw with smoothing and weights; check, transform and
store new scores), so that one sampler step is two compiled calls.

numba was chosen over a C++ extension because it ships wheels for every platform PyTorch does, is
preinstalled on Google Colab, compiles nothing at install time, and caches its machine code on first
use (``cache=True``). CUDA trees stay in :class:`~ismod.sampling.SumTree`'s tensor form.

Layout: one flat float64 array; level 0 (the leaves) first, padded with zeros to a multiple of the
branching b, then each level of sums above it, to a single root. ``offsets[l]`` is where level l starts.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["layout", "build", "sample", "update", "sampler_draw", "sampler_update"]

# Method codes shared with ismod.sampling (strings cannot be passed cheaply into compiled code).
SOFTMAX, PROPORTIONAL = 0, 1

# Softmax masses exp((s - c)/T) are capped at exp(700) so float64 cannot overflow (as in sampling.py).
_MAX_EXPONENT = 700.0


def layout(n: int, branching: int) -> tuple[np.ndarray, int]:
    """``(offsets, depth)`` for n leaves: offsets[l] is where level l starts; the root is level depth."""
    offsets, start, size = [0], 0, n
    while size > 1:
        padded = -(-size // branching) * branching
        start += padded
        offsets.append(start)
        size = padded // branching
    offsets.append(start + 1)  # end of the root row
    return np.asarray(offsets, dtype=np.int64), len(offsets) - 2


@njit(cache=True, nogil=True, inline="always")
def _children_sum(nodes, base, b):  # pragma: no cover - compiled
    # four independent partial sums: a 16-term sum is then 4 adds deep, not 16. The order differs
    # from the descent's, which is safe: a sum of non-negative terms is 0 exactly when every term is,
    # and a descent whose target rounds past the last child takes the last child with mass.
    s0 = s1 = s2 = s3 = 0.0
    c = 0
    while c + 4 <= b:
        s0 += nodes[base + c]
        s1 += nodes[base + c + 1]
        s2 += nodes[base + c + 2]
        s3 += nodes[base + c + 3]
        c += 4
    while c < b:
        s0 += nodes[base + c]
        c += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True)
def build(nodes, offsets, depth, b):  # pragma: no cover - compiled
    """Recompute every level of sums from the leaves."""
    for level in range(1, depth + 1):
        lower, upper = offsets[level - 1], offsets[level]
        for j in range((upper - lower) // b):  # the padding slots above stay 0
            nodes[upper + j] = _children_sum(nodes, lower + j * b, b)


@njit(cache=True, nogil=True, inline="always")
def _descend_batch(nodes, offsets, depth, b, targets, out_idx):  # pragma: no cover - compiled
    # Level by level across all draws, not draw by draw: the draws' memory reads at one level are
    # independent, so the processor overlaps their cache misses (what makes N = 10^7 cheap).
    k = targets.shape[0]
    for i in range(k):
        out_idx[i] = 0
    for level in range(depth - 1, -1, -1):
        for i in range(k):
            base = offsets[level] + out_idx[i] * b
            target = targets[i]
            # branch-free: the child is the number of prefix sums <= target (zero-mass children are
            # skipped, their prefix equals the one before); a mispredicted early exit costs more
            # than summing all b children
            acc = 0.0
            below = 0.0
            chosen = 0
            for c in range(b):
                acc += nodes[base + c]
                ok = acc <= target
                chosen += ok
                below = acc if ok else below
            if chosen == b:  # rounding left the target past the last child: take the last with mass
                chosen = b - 1
                while chosen > 0 and nodes[base + chosen] <= 0.0:
                    chosen -= 1
                below = target
            targets[i] = target - below
            out_idx[i] = out_idx[i] * b + chosen


@njit(cache=True, nogil=True)
def sample(nodes, offsets, depth, b, u, out_idx, out_mass):  # pragma: no cover - compiled
    """For each uniform u[i] in [0, 1): the leaf where u[i] * total falls, and its mass."""
    targets = u * nodes[offsets[depth]]
    _descend_batch(nodes, offsets, depth, b, targets, out_idx)
    for i in range(u.shape[0]):
        out_mass[i] = nodes[out_idx[i]]


@njit(cache=True, nogil=True)
def update(nodes, offsets, depth, b, idx, masses):  # pragma: no cover - compiled
    """Set leaves ``idx`` to ``masses`` (a repeated index keeps its last value), then their ancestors,
    level by level (so a parent is summed after all of its children in this update are final)."""
    for i in range(idx.shape[0]):
        nodes[idx[i]] = masses[i]
    node = idx.copy()
    for level in range(1, depth + 1):
        lower, upper = offsets[level - 1], offsets[level]
        for i in range(node.shape[0]):
            node[i] //= b
            nodes[upper + node[i]] = _children_sum(nodes, lower + node[i] * b, b)


@njit(cache=True, nogil=True)
def sampler_draw(
    nodes, offsets, depth, b, n, u, smoothing, weight_at_draw, out_idx, out_w
):  # pragma: no cover
    """k = len(out_idx) draws for ImportanceSampler: from the tree with probability 1 - ε, uniformly
    with probability ε (the mixture p = (1-ε) m/total + ε/N); weights 1/(N p), also stored per index.
    ``u`` holds 2k uniforms: the first k choose tree or uniform, the second k place the draw."""
    k = out_idx.shape[0]
    total = nodes[offsets[depth]]
    _descend_batch(nodes, offsets, depth, b, u[k:] * total, out_idx)
    for i in range(k):
        if u[i] < smoothing:  # given u < ε, u/ε is uniform on [0, 1)
            out_idx[i] = min(int(u[i] / smoothing * n), n - 1)
        leaf = out_idx[i]
        p = (1.0 - smoothing) * nodes[leaf] / total + smoothing / n
        w = 1.0 / (n * p)
        out_w[i] = w
        weight_at_draw[leaf] = w


@njit(cache=True, nogil=True)
def sampler_update(
    nodes, offsets, depth, b, n, scores, idx, new, method, temperature, reference
):  # pragma: no cover
    """Check and store new scores, then their masses in the tree. Returns -1 when all is well, else the
    position in ``idx``/``new`` of the first bad entry (index out of range, score NaN, inf or < 0), so the
    caller can name it; nothing is written then."""
    for i in range(idx.shape[0]):
        s = new[i]
        if idx[i] < 0 or idx[i] >= n or not (s >= 0.0) or s == math.inf:
            return i
    for i in range(idx.shape[0]):
        scores[idx[i]] = new[i]
    masses = np.empty(idx.shape[0])
    # the masses of ismod.sampling.unnormalized_masses (its definition), per entry; a test compares the
    # two (test_sampler_probabilities_match_function, on incremental updates)
    for i in range(idx.shape[0]):
        s = scores[idx[i]]  # the stored value: with a repeated index, the last one
        if method == SOFTMAX:
            masses[i] = math.exp(min((s - reference) / temperature, _MAX_EXPONENT))
        elif s == 0.0:
            masses[i] = 0.0
        elif temperature == 1.0:
            masses[i] = s / reference
        else:
            masses[i] = math.exp(min(math.log(s / reference) / temperature, _MAX_EXPONENT))
    update(nodes, offsets, depth, b, idx, masses)
    return -1
