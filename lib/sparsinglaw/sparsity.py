"""Activation sparsity: CETT, PPL-p% (paper Section 3, Algorithm 1) and the baselines it is compared with.

Definitions (paper Section 3). For layer l and token t the FFN intermediate is
h = act(W_gate x) * (W_up x) (Eq. 1-2, read from the hook point ``blocks.<l>.ffn.h``); neuron i's output
is h_i W_down[:, i] and its norm n_i = |h_i| * ||W_down[:, i]||. For a threshold tau the inactive set is
D = {i : n_i < tau} (strict, exactly as ``GatedFFN`` zeroes neurons) and

    CETT_t(tau) = || sum_{i in D} h_i W_down[:, i] || / || sum_i h_i W_down[:, i] ||        (Eq. 3)

CETT_l(tau) is the mean of CETT_t over the valid tokens of the evaluation set. Given a CETT value c,
each layer gets a threshold tau_l(c) from a grid of candidates; PPL-p% sparsity is the c at which
zeroing the inactive neurons of every layer raises perplexity by p% (Algorithm 1).

Conventions shared by everything below (a caller must know these):
  * Valid tokens are the positions with target y != -1. Padding is excluded from every statistic
    (losses, CETT means, the grid, activation counts); the model still runs on it.
  * A token whose dense FFN output is exactly zero (an all-zero h row, a dead layer) has CETT_t := 0
    for every tau and still counts in the mean. A layer whose h is zero everywhere has the degenerate
    grid {0}, so tau_l = 0: it runs dense and counts as inactive (see the activation ratio below).
  * Candidate grid: per layer ``N_GRID`` = 65,536 float32 points linspace(min n_i, q_0.99) (authors'
    code) where the 0.99 quantile (linear interpolation, computed in float64) is taken on every s-th
    entry of the flattened (valid tokens x d_ff) matrix of n_i in batch order, s the smallest stride
    >= max(N d_ff // N_GRID, 1) coprime with d_ff (``_grid_stride``). This departs from the authors'
    ``norm.view(-1)[::max(norm.numel() // num_thresholds, 1)].quantile(0.99)``: sample k sits in column
    k s mod d_ff, so their stride samples only the columns that are multiples of gcd(s, d_ff) -- 4
    neurons per layer on our cpu profiles (s = d_ff / 4), neuron 0 alone on the gpu profile (s = d_ff),
    where a ReLU layer whose neuron 0 is almost always zero got the degenerate grid {0} and ran dense.
    A coprime stride walks over every column (the fast pass samples batch by batch at the same flat
    indices). Candidates are float32 so that the tau used for the statistics is bit-for-bit the tau the
    model compares against; hence the PPL-p% entry points refuse a model whose parameters are not
    float32 (``_require_float32``). Under autocast (bench/ppl_p_speed.py --compare-precision, on purpose)
    h is bf16 while the statistics are float32: tau_l is then only close to the float32 one.
  * Thresholds from c (``invert_cett``): bisection over the grid for the first candidate whose mean
    CETT exceeds c (16 probes); tau_l is the candidate just below it. CETT_l(grid[0]) = 0 (D is empty),
    so tau_l exists for every c >= 0. When CETT_l is monotone this is the largest candidate with
    CETT <= c. The per-token CETT is *not* monotone in tau in general: adding a neuron to D can shorten
    the tail vector when neuron outputs cancel (test_sparsity shows a 3-neuron example), so the mean
    is monotone only in practice; bisection is therefore the definition both implementations share.
  * Algorithm 1: bisection on c in [0, 1] while hi - lo > tol; a mean PPL ratio below 1 + p/100 moves
    lo up, any other ratio (NaN included: not acceptable) moves hi down. We report c = lo, the largest
    *tested* c whose mean ratio is below the target, so the reported point satisfies the PPL constraint;
    the authors print the untested midpoint (lo + hi) / 2 (at most tol / 2 away). ``PPLpResult.bracket``
    keeps (lo, hi). When no tested c reaches the target (hi = 1 never tested), c = lo is only a lower
    bound, not PPL-p% sparsity: ``PPLpResult.reached`` is False and a ``TargetNotReachedWarning`` names
    the run and p.
  * Unlike the authors (who recompute thresholds and the PPL ratio per batch and average), thresholds
    come from the whole evaluation set and the ratio is exp(mean sparse loss - mean dense loss).
  * The activation ratio is the share of valid (token, neuron) pairs with n_i >= tau_l and h_i != 0
    measured in the sparse pass itself (so later layers see the already sparsified earlier layers),
    averaged over layers. A neuron whose h_i is exactly 0 adds nothing to the output and is never counted
    active, whatever keeps it: tau_l = 0 (a ReLU layer non-zero on under 1% of the pairs has the grid {0},
    and c = 0 gives tau_l = 0) would otherwise count a ReLU layer's zeros as active, and Top-k the zeros
    it keeps beyond a token's non-zero neurons, so that both read denser than the dense ReLU model.

Two implementations of PPL-p% sit behind one signature, ``ppl_p_sparsity(..., impl=...)``:
  * ``reference`` -- the straightforward algorithm, kept as the oracle and benchmark baseline: at every
    outer bisection step on c it re-runs the dense pass (holding every layer's h of every valid token),
    bisects each layer over the grid with a full masked matmul per candidate, then runs the sparse pass.
  * ``fast`` -- the same answer with less work. Per checkpoint, two streaming dense passes (one for the
    grid range and the dense loss, one truncated after the last FFN for the statistics) build the exact
    CETT curve of every layer at every grid point (``cett_curves``), which is then inverted for any c
    without touching the model. The search on c then needs sparse passes only: by default it probes the
    bisection's own sequence of c (so it returns exactly the reference's answer; a c whose thresholds
    equal those of a tested one is not run again); ``search="secant"`` needs fewer sparse passes (3
    instead of 10 on the cpu profile's relu-s4, bench/RESULTS.md; ``_secant_search``) but, where the
    ratio is noisy at the scale of tol, may return another crossing.
    Memory does not grow with the evaluation set (histograms of N_GRID + 1 float64 per layer).
    Exact: the grid (same subsample and quantile) and the CETT value at every grid point, hence tau_l;
    losses and activation ratios come from real sparse passes. Rounding: the curve is accumulated in
    float64 from float32 per-token prefix norms, the reference sums masked float32 matmuls; they differ by
    ~1e-7 relative, which moves tau_l by one grid step only when c lies that close to a curve value.
  * Cost, in forward passes F over the evaluation set: reference 10 x (2 F + 16 masked matmuls per
    layer, about 2-4 F); fast 1.5 F + the curves (about 2-6 F: a per-token sort and prefix sums) + 10 F
    (bisect) or about 3-6 F (secant). The sparse passes, which both need, bound the speedup at about
    3x (bisect) and 5-10x (secant) for our model sizes; bench/ppl_p_speed.py measures it.

Checkpoint lists are sequences whose items are either a ``Transformer`` or a zero-argument callable
returning one (loaded on demand, so a long list need not sit in memory; the fast search keeps only the
curves of each checkpoint, a few MB). Evaluation batches are a re-iterable sequence of (x, y) or
(x, y, domain) LongTensor tuples of shape (B, T) (e.g. ``list(data.eval_batches(...))``) or a zero-argument
callable returning a fresh iterator of them. Everything runs under ``torch.no_grad`` in float32 (the
model's dtype, see the grid above); sums over tokens are accumulated in float64. The dense statistics
(grid, curves, the reference's rows) run with any thresholds or masks set on the model lifted, as
``activation_stats`` does. On CUDA the same code runs on the model's device; ``measure.measure_device``
switches TF32 off there, so matmuls are float32 as on the CPU and only summation orders differ (the
prefix sums use one scan kernel instead of the CPU's loop).

Read top to bottom: result dataclasses; Eq. 3, the grid and its inversion; inputs and hooks; keep rules
for the baselines; evaluation passes and activation statistics; fast curves; the reference; Algorithm 1
(``ppl_p_sparsity``, ``apply_cett``); Pareto points and sweeps. The v4 App. E protocol of a whole run (c
searched on its last stable-stage checkpoints, applied to every checkpoint) is ``measure.measure_run``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from .model import GatedFFN, Transformer, sparse

N_GRID = 65_536  # candidate thresholds per layer (authors' code)
GRID_QUANTILE = 0.99  # top of the candidate grid: this quantile of the neuron output norms
TOL = 1e-3  # Algorithm 1: stop when hi - lo <= TOL (authors' tolerance)
C0 = 0.125  # fast search: the secant search's first probe of c
DEAD_FREQ = 1e-3  # a neuron active on fewer than 0.1% of tokens is dead
MIN_LOG_STEP = 0.05  # fast search: secant partners closer than 5% in c are too noisy for a slope
CHUNK = 1 << 22  # float32 elements of the (d_ff, tokens, d_model) prefix-sum workspace (fast)
CUDA_CHUNK = 1 << 28  # the same on a GPU (1 GiB): a whole block of ROWS tokens per kernel, not a few
ROWS = 1024  # tokens per block of the fast statistics (bounds its temporaries whatever the batch size)

Batch = tuple[Tensor, ...]  # (x, y) or (x, y, domain), each (B, T) int64
Batches = Sequence[Batch] | Callable[[], Iterable[Batch]]
Checkpoint = Transformer | Callable[[], Transformer]
Progress = Callable[[dict], None] | None


class TargetNotReachedWarning(UserWarning):
    """No tested c raised the mean PPL ratio to 1 + p/100: the reported c is a lower bound (``reached``)."""


# ----------------------------------------------------------------------------- results


@dataclass
class PassResult:
    """One forward pass over the evaluation set."""

    loss: float  # mean cross-entropy over valid tokens (nats)
    n_tokens: int  # valid tokens (y != -1)
    active_per_layer: list[float]  # share of valid (token, neuron) pairs kept with h_i != 0, per layer

    @property
    def activation_ratio(self) -> float:
        return sum(self.active_per_layer) / len(self.active_per_layer)


@dataclass
class CettCurves:
    """Dense statistics of one checkpoint (fast implementation): the exact CETT at every grid point."""

    grid: Tensor  # (L, G) float32 candidate thresholds tau
    cett: Tensor  # (L, G) float64 mean CETT_l(grid[l, g]) over valid tokens (Eq. 3)
    n_tokens: int
    dense_loss: float


@dataclass
class CheckpointResult:
    """One checkpoint sparsified with the thresholds of one CETT value c."""

    cett: float  # c
    taus: list[float]  # tau_l per layer
    dense_loss: float
    sparse_loss: float
    active_per_layer: list[float]

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.sparse_loss - self.dense_loss)

    @property
    def activation_ratio(self) -> float:
        return sum(self.active_per_layer) / len(self.active_per_layer)


@dataclass
class PPLpResult:
    """PPL-p% sparsity of a list of checkpoints (Algorithm 1); per-checkpoint values are at c = ``cett``."""

    p: float
    impl: str
    cett: float  # c*: the largest tested c with mean PPL ratio < 1 + p/100 (0 if none)
    bracket: tuple[float, float]  # final (lo, hi) of the search; the authors report their midpoint
    reached: bool  # a tested c (hi) reached the target; False: hi = 1 untested, c is only a lower bound
    checkpoints: list[CheckpointResult]
    n_dense_passes: int  # forward passes over the evaluation set without thresholds (all checkpoints)
    n_sparse_passes: int  # forward passes with thresholds (all checkpoints)
    wall_time: float  # seconds
    trace: list[tuple[float, float]] = field(default_factory=list)  # (c, mean ratio) in evaluation order

    @property
    def mean_ratio(self) -> float:
        return sum(r.ppl_ratio for r in self.checkpoints) / len(self.checkpoints)

    @property
    def ratios(self) -> list[float]:
        return [r.ppl_ratio for r in self.checkpoints]

    @property
    def thresholds(self) -> list[list[float]]:
        return [r.taus for r in self.checkpoints]

    @property
    def activation_ratio(self) -> list[float]:
        return [r.activation_ratio for r in self.checkpoints]

    @property
    def active_per_layer(self) -> list[list[float]]:
        return [r.active_per_layer for r in self.checkpoints]

    @property
    def dense_loss(self) -> list[float]:
        return [r.dense_loss for r in self.checkpoints]

    @property
    def sparse_loss(self) -> list[float]:
        return [r.sparse_loss for r in self.checkpoints]


@dataclass
class SparsePoint:
    """One (activation ratio, PPL) point of a Pareto curve."""

    method: str  # "cett", "topk", "topk_batch", "fat", "zeros", "moe"
    param: float  # c, k, eps (nan for zeros), routed experts k (moe)
    dense_loss: float
    sparse_loss: float
    active_per_layer: list[float]

    @property
    def activation_ratio(self) -> float:
        return sum(self.active_per_layer) / len(self.active_per_layer)

    @property
    def ppl(self) -> float:
        return math.exp(self.sparse_loss)

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.sparse_loss - self.dense_loss)


# ----------------------------------------------------------------------------- Eq. 3, grid, inversion


def neuron_norms(h: Tensor, col_norms: Tensor) -> Tensor:
    """n_i = |h_i| * ||W_down[:, i]|| (Section 3), the same float expression as ``GatedFFN``."""
    return h.abs() * col_norms.to(h.dtype)


def cett_per_token(h: Tensor, w_down: Tensor, tau: float | Tensor, n: Tensor | None = None,
                   full: Tensor | None = None) -> Tensor:
    """CETT_t(tau) of Eq. 3 for rows h (N, d_ff) and W_down (d_model, d_ff), the straightforward way (a
    masked copy of h and a full matmul); 0 where FFN(x) = 0. The neuron norms n and ||FFN(x)|| may be
    passed in when they are reused across candidates."""
    n = neuron_norms(h, w_down.norm(dim=0)) if n is None else n
    full = (h @ w_down.t()).norm(dim=-1) if full is None else full
    tail = h.clone()
    tail[n >= tau] = 0.0  # keep only D = {i : n_i < tau}
    part = (tail @ w_down.t()).norm(dim=-1)
    return torch.where(full > 0, part / torch.where(full > 0, full, 1.0), 0.0)


def threshold_grid(n_min: float, n_top: float, n_grid: int = N_GRID) -> Tensor:
    """The candidate thresholds: n_grid float32 points from min n_i to the 0.99 quantile."""
    if not n_grid >= 2:
        raise ValueError(f"n_grid must be >= 2 (the grid runs from min n_i to the 0.99 quantile), got {n_grid}")
    return torch.linspace(n_min, n_top, n_grid, dtype=torch.float32)


def _grid_from(n_min: float, sample: Tensor, n_grid: int) -> Tensor:
    """The grid from the exact min and the strided sample (quantile in float64: its interpolation weight
    in float32 is off by ~1e-5 relative on a tail with large gaps)."""
    return threshold_grid(n_min, torch.quantile(sample.double(), GRID_QUANTILE).item(), n_grid)


def _grid_stride(n_tokens: int, d_ff: int, n_grid: int) -> int:
    """Stride of the quantile sample over the flattened (tokens x d_ff) norms: the smallest s >= the
    authors' max(N d_ff // n_grid, 1) with gcd(s, d_ff) = 1, so that samples k s (column k s mod d_ff)
    walk over every column instead of the multiples of gcd(s, d_ff) only (module docstring)."""
    s = max(n_tokens * d_ff // n_grid, 1)
    while math.gcd(s, d_ff) != 1:
        s += 1
    return s


def invert_cett(cett_at: Callable[[int], float], n_grid: int, c: float) -> int:
    """Index of tau_l(c): bisection for the first candidate with CETT > c, minus one (16 probes)."""
    if not c >= 0:
        raise ValueError(f"CETT value c must be >= 0, got {c}")
    left, right = 0, n_grid
    while left < right:
        mid = (left + right) // 2
        if cett_at(mid) > c:
            right = mid
        else:
            left = mid + 1
    return max(left - 1, 0)


def ppl_ratio(sparse_loss: float, dense_loss: float) -> float:
    """PPL_sparse / PPL_dense = exp(loss_sparse - loss_dense) (Algorithm 1)."""
    return math.exp(sparse_loss - dense_loss)


# ----------------------------------------------------------------------------- inputs and hooks


def _iter(batches: Batches) -> Iterator[Batch]:
    if callable(batches):
        return iter(batches())
    if iter(batches) is batches:
        raise TypeError("batches must be re-iterable (e.g. a list) or a zero-argument callable returning an "
                        "iterator; wrap a generator in list(...)")
    return iter(batches)


def _load(ckpt: Checkpoint) -> Transformer:
    model = ckpt if isinstance(ckpt, nn.Module) else ckpt()
    if not isinstance(model, Transformer):
        raise TypeError(f"a checkpoint must be a Transformer or a callable returning one, got {type(model)}")
    return _require_float32(model).eval()


def _require_float32(model: Transformer) -> Transformer:
    """Refuse a model that is not float32: the statistics are float32 and GatedFFN compares n_i < tau_l in
    h's dtype, so only then is tau_l bit-for-bit the threshold the model applies (module docstring)."""
    bad = sorted({str(p.dtype) for p in model.parameters()} - {str(torch.float32)})
    if bad:
        raise ValueError(f"PPL-p% thresholds need a float32 model (statistics in float32 match the model's "
                         f"comparison in h's dtype only then); this one has {', '.join(bad)} parameters: "
                         "pass model.float()")
    return model


def count_tokens(batches: Batches) -> int:
    """Valid tokens (y != -1) of the evaluation set."""
    return sum(int((b[1] != -1).sum()) for b in _iter(batches))


class _StopForward(Exception):
    """Raised from the last layer's hook when the rest of the forward pass is not needed."""


class _Batch:
    """The batch being processed: what the hooks need besides h."""

    valid: Tensor  # (B, T) bool
    x: Tensor
    domain: Tensor | None


@contextmanager
def _hooks(model: Transformer, on_h: Callable, need_gate: bool = False) -> Iterator[None]:
    """Call on_h(l, ffn, h, s) at every layer's hook point; its return value (if any) replaces h.

    s = act(W_gate x) is captured from ``w_gate`` only when need_gate (else None).
    """
    gates: dict[int, Tensor] = {}
    handles = []
    for l, ffn in enumerate(model.ffns()):
        if need_gate:
            handles.append(ffn.w_gate.register_forward_hook(
                lambda m, i, o, l=l: gates.__setitem__(l, o)))
        handles.append(ffn.h.register_forward_hook(
            lambda m, i, o, l=l, ffn=ffn: on_h(l, ffn, o, ffn.act(gates.pop(l)) if need_gate else None)))
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def _forward(model: Transformer, batches: Batches, on_h: Callable, *, need_gate: bool = False,
             need_loss: bool = True, state: _Batch | None = None) -> tuple[float, int]:
    """One pass: (summed loss over valid tokens, valid tokens); on_h sees every layer (see ``_hooks``)."""
    dev = next(model.parameters()).device
    state = state or _Batch()
    total, count = 0.0, 0
    with _hooks(model, on_h, need_gate):
        for b in _iter(batches):
            x, y = b[0].to(dev), b[1].to(dev)
            state.x, state.valid = x, y != -1
            state.domain = b[2].to(dev) if len(b) > 2 else None
            try:
                _, loss = model(x, y, reduction="sum")
                total += float(loss)
            except _StopForward:
                pass
            count += int(state.valid.sum())
    if need_loss and count == 0:
        raise ValueError("the evaluation set has no valid tokens (no batches, or every target is -1)")
    return total, count


# ----------------------------------------------------------------------------- keep rules


Rule = Callable[[int, Tensor, Tensor, Tensor], Tensor]  # (layer, h, s, valid) -> keep mask (B, T, d_ff)


def topk_rule(k: int, per_batch: bool = False) -> Rule:
    """Top-k on |s_i| = |act(W_gate x)_i|.

    per_batch=False (ours, as the paper describes Top-k): each token keeps its k largest |s_i| per layer.
    The activation ratio counts the kept neurons with h_i != 0 (activation_stats): a ReLU token with fewer
    than k positive s_i keeps some zeros, which add nothing, so the ratio can be below k / d_ff.
    per_batch=True (the authors' code): each layer keeps the k * n_valid largest |s_i| of the whole batch,
    so a token may keep more or fewer than k; padding positions are left dense (and not counted).
    """

    def rule(l: int, h: Tensor, s: Tensor, valid: Tensor) -> Tensor:
        a = s.abs()
        if not per_batch:
            return torch.zeros_like(a, dtype=torch.bool).scatter_(-1, a.topk(min(k, a.size(-1)), -1).indices, True)
        keep = torch.ones_like(a, dtype=torch.bool)
        rows = a[valid]  # (n_valid, d_ff)
        kept = torch.zeros(rows.numel(), dtype=torch.bool, device=a.device)
        kept[rows.flatten().topk(min(k * rows.size(0), rows.numel())).indices] = True
        keep[valid] = kept.view_as(rows)
        return keep

    return rule


def fat_rule(eps: float) -> Rule:
    """FAT-eps: one global eps for all layers; neuron i kept iff |s_i| >= eps."""
    return lambda l, h, s, valid: s.abs() >= eps


def zeros_rule() -> Rule:
    """Straightforward ReLU: neuron i kept iff s_i != 0 (meaningful for ReLU-like activations only)."""
    return lambda l, h, s, valid: s != 0


# ----------------------------------------------------------------------------- evaluation passes


@dataclass
class ActivationStats:
    """Activation counts of one pass: per layer, per token (input id) and per neuron (per domain)."""

    n_tokens: int
    loss: float  # mean loss of the pass
    active: Tensor  # (L,) float64 active (token, neuron) pairs per layer: kept, with h_i != 0
    d_ff: int
    token_sum: Tensor | None = None  # (L, vocab) float64: sum over tokens with input id v of the share active
    token_count: Tensor | None = None  # (vocab,) int64 valid tokens per input id
    neuron_active: Tensor | None = None  # (L, d_ff) int64 tokens on which neuron i is active
    domain_neuron_active: Tensor | None = None  # (n_domains, L, d_ff) int64, when batches carry domains
    domain_tokens: Tensor | None = None  # (n_domains,) int64

    @property
    def active_per_layer(self) -> list[float]:
        return (self.active / (self.n_tokens * self.d_ff)).tolist()

    @property
    def activation_ratio(self) -> float:
        return float(self.active.sum() / (self.n_tokens * self.d_ff * len(self.active)))

    def token_ratio(self) -> Tensor:
        """(vocab,) share of neurons active per vocabulary id, averaged over layers (nan for unseen ids)."""
        return self.token_sum.mean(0) / self.token_count.double()

    def neuron_frequency(self) -> Tensor:
        """(L, d_ff) activation frequency: share of valid tokens on which each neuron is active."""
        return self.neuron_active.double() / self.n_tokens

    def domain_frequency(self) -> Tensor:
        """(n_domains, L, d_ff) activation frequency per data domain (nan for empty domains)."""
        return self.domain_neuron_active.double() / self.domain_tokens.double()[:, None, None]

    def dead_ratio(self, min_freq: float = DEAD_FREQ) -> float:
        """Share of neurons active on fewer than min_freq of the tokens (dead neurons)."""
        return float((self.neuron_frequency() < min_freq).double().mean())


def _grow(t: Tensor, n: int) -> Tensor:
    return t if t.size(0) >= n else torch.cat([t, t.new_zeros((n - t.size(0), *t.shape[1:]))])


@torch.no_grad()
def activation_stats(model: Transformer, batches: Batches, *, taus: Sequence[float] | None = None,
                     rule: Rule | None = None, per_token: bool = False, per_neuron: bool = False
                     ) -> ActivationStats:
    """One pass that keeps neurons by thresholds ``taus`` (n_i >= tau_l, the model's own sparse forward),
    or by a ``rule`` (Top-k, FAT-eps, exact zeros: kept neurons pass, the rest are zeroed), or keeps
    everything (both None: the dense pass). Counts kept (token, neuron) pairs with h_i != 0 over valid
    tokens per layer (a kept zero contributes nothing; the dense pass counts the non-zero pairs),
    and optionally per token (``per_token``: by input id x, the token whose hidden state it is) and per
    neuron (``per_neuron``: activation frequency, and per domain when batches carry a domain tensor: a
    position counts for the domain of its target y, as its loss does, which at a code/prose boundary is not
    its input token's; 4.4% of the cpu profile's evaluation positions).
    Static masks set on the model are lifted during the pass. Dead neurons (``dead_ratio``) are counted
    under the pass's own thresholds or rule: the measurement (measure.measure_run) counts them under the
    PPL-p% thresholds; with ``zeros_rule()`` they are the ReLU neurons whose s_i is > 0 on fewer than
    ``min_freq`` of the valid tokens (``dead_ratio``; 0.1% by default), not only those never > 0.
    """
    if taus is not None and rule is not None:
        raise ValueError("give thresholds taus or a keep rule, not both")
    L, d_ff, V = model.cfg.n_layers, model.cfg.d_ff, model.cfg.vocab_size
    st = ActivationStats(0, 0.0, torch.zeros(L, dtype=torch.float64), d_ff)
    # the integer counts stay on the activations' device until the pass ends: copying a (tokens, d_ff)
    # tensor to the host for every layer and batch, and summing it there on one thread, took longer than
    # the forward on a GPU; integer sums are exact in any order, so the counts do not depend on where
    dev = next(model.parameters()).device
    active = torch.zeros(L, dtype=torch.int64, device=dev)
    if per_token:
        st.token_sum, st.token_count = torch.zeros(L, V, dtype=torch.float64), torch.zeros(V, dtype=torch.int64)
    if per_neuron:
        st.neuron_active = torch.zeros(L, d_ff, dtype=torch.int64, device=dev)
        st.domain_neuron_active = torch.zeros(0, L, d_ff, dtype=torch.int64, device=dev)
        st.domain_tokens = torch.zeros(0, dtype=torch.int64, device=dev)
    b = _Batch()
    dom = torch.zeros(0, dtype=torch.int64)  # the batch's valid tokens' domains (set at layer 0)

    def on_h(l: int, ffn: GatedFFN, h: Tensor, s: Tensor | None) -> Tensor | None:
        nonlocal dom
        if rule is not None:
            keep = rule(l, h, s, b.valid)
        elif ffn.threshold is not None:  # the comparison GatedFFN makes
            keep = ~(neuron_norms(h, ffn.down_col_norms()) < ffn.threshold.to(h.device, h.dtype))
        else:
            keep = torch.ones_like(h, dtype=torch.bool)
        kv = (keep & (h != 0))[b.valid]  # (n_valid, d_ff): kept and contributing (module docstring)
        active[l] += kv.sum()
        if per_token:  # float sums: added on the CPU in one fixed order (a GPU's atomic adds have none)
            ids = b.x[b.valid]
            st.token_sum[l].index_add_(0, ids.cpu(), kv.double().mean(-1).cpu())
            if l == 0:
                st.token_count.index_add_(0, ids.cpu(), torch.ones_like(ids.cpu()))
        if per_neuron:
            st.neuron_active[l] += kv.sum(0)
            if b.domain is not None:
                if l == 0:  # once per batch: the domains are the same at every layer
                    dom = b.domain[b.valid]
                    n_dom = int(dom.max()) + 1 if dom.numel() else 0
                    st.domain_neuron_active = _grow(st.domain_neuron_active, n_dom)
                    st.domain_tokens = _grow(st.domain_tokens, n_dom)
                    st.domain_tokens.index_add_(0, dom, torch.ones_like(dom))
                st.domain_neuron_active[:, l].index_add_(0, dom, kv.long())
        return None if rule is None else h * keep.to(h.dtype)

    with sparse(model, taus=taus):
        total, st.n_tokens = _forward(model, batches, on_h, need_gate=rule is not None, state=b)
    st.active = active.cpu().double()  # exact: far below 2**53 pairs
    if per_neuron:  # one copy to the host, at the end
        st.neuron_active, st.domain_tokens = st.neuron_active.cpu(), st.domain_tokens.cpu()
        st.domain_neuron_active = st.domain_neuron_active.cpu()
    st.loss = total / st.n_tokens
    return st


def evaluate(model: Transformer, batches: Batches, taus: Sequence[float] | None = None,
             rule: Rule | None = None) -> PassResult:
    """Mean loss and per-layer activation ratio of one pass (dense, with thresholds, or with a rule)."""
    st = activation_stats(model, batches, taus=taus, rule=rule)
    return PassResult(st.loss, st.n_tokens, st.active_per_layer)


# ----------------------------------------------------------------------------- fast: dense statistics once


@torch.no_grad()
def _grid_ranges(model: Transformer, batches: Batches, n_grid: int) -> tuple[list[Tensor], tuple[float, int]]:
    """Dense pass: per layer the candidate grid (exact min of n_i, 0.99 quantile of the strided sample),
    and (summed loss, valid tokens)."""
    L, d_ff = model.cfg.n_layers, model.cfg.d_ff
    n_tokens = count_tokens(batches)
    if n_tokens == 0:
        raise ValueError("the evaluation set has no valid tokens (no batches, or every target is -1)")
    stride = _grid_stride(n_tokens, d_ff, n_grid)
    mins = [math.inf] * L
    samples: list[list[Tensor]] = [[] for _ in range(L)]
    offset = [0] * L  # flat index (valid tokens x d_ff) of the batch's first entry, per layer
    b = _Batch()

    def on_h(l: int, ffn: GatedFFN, h: Tensor, s: Tensor | None) -> None:
        n = neuron_norms(h[b.valid].float(), ffn.down_col_norms().float()).flatten()
        if not torch.isfinite(n).all():
            raise ValueError(f"layer {l}: non-finite FFN activations (a diverged checkpoint?)")
        if n.numel():
            mins[l] = min(mins[l], n.min().item())
            samples[l].append(n[(-offset[l]) % stride::stride].clone().cpu())  # a copy: a view keeps n
        offset[l] += n.numel()

    with sparse(model):  # dense: thresholds or masks set on the model are lifted (as activation_stats)
        loss = _forward(model, batches, on_h, state=b)
    return [_grid_from(mins[l], torch.cat(samples[l]), n_grid) for l in range(L)], loss


def _prefix_norms(h: Tensor, w_t: Tensor, order: Tensor, buf: Tensor, scan: bool | None = None) -> Tensor:
    """||S_k||, k = 1..d_ff, per token: S_k = sum of the outputs of the k neurons first in ``order``.

    Neuron outputs h_i W_down[:, i] are gathered in sorted order into a (d_ff, tokens, d_model) block and
    prefix-summed in place, one sorted position at a time (on CPU a short loop over contiguous slabs is
    several times faster than ``cumsum`` along a middle dimension). ``buf`` (>= d_ff * d_model elements)
    is reused for every block of tokens: fresh large allocations cost more than the arithmetic here.
    On other devices (``scan``, default: not CPU) one ``cumsum_`` kernel replaces the d_ff launches.
    """
    m, f = h.shape
    d = w_t.size(1)
    chunk = max(buf.numel() // (f * d), 1)
    hs, out = h.gather(1, order), torch.empty_like(h)
    for i in range(0, m, chunk):
        o = order[i:i + chunk].t().flatten()  # sorted position major: (f * c,)
        outs = torch.index_select(w_t, 0, o, out=buf[:o.numel() * d].view(-1, d)).view(f, -1, d)
        outs.mul_(hs[i:i + chunk].t().unsqueeze(-1))
        if scan if scan is not None else outs.device.type != "cpu":
            outs.cumsum_(dim=0)  # float32 like the loop, in another summation order
        else:
            for k in range(1, f):
                outs[k].add_(outs[k - 1])
        out[i:i + chunk] = torch.linalg.vector_norm(outs, dim=-1).t()
    return out


def _argsort_rows(n: Tensor, use_numpy: bool | None = None) -> Tensor:
    """Ascending order of every row (numpy's vectorised sort is ~3x faster than torch's on CPU; torch's on
    a GPU). `use_numpy` None: numpy on CPU tensors (False runs the GPU branch on the CPU, for tests)."""
    if not (n.device.type == "cpu" if use_numpy is None else use_numpy):
        return n.argsort(dim=-1)
    return torch.from_numpy(np.argsort(n.numpy(), axis=-1))


def _curve_increments(h: Tensor, w_t: Tensor, col_norms: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
    """Per token: the sorted norms n_(k) and the CETT increments r_k - r_{k-1}, r_k = ||S_k|| / ||FFN(x)||.

    S_k is the sum of the outputs of the k neurons with the smallest n_i, so CETT_t(tau) = r_k with
    k = #{i : n_i < tau} (Eq. 3); the k-th increment applies once tau > n_(k-1). Tied norms enter D
    together, so their order inside the tie does not matter.
    """
    n = neuron_norms(h, col_norms)
    full = (h @ w_t).norm(dim=-1, keepdim=True)  # ||FFN(x)||, as the reference computes it
    order = _argsort_rows(n)
    vals = n.gather(1, order)
    r = _prefix_norms(h, w_t, order, buf)
    r = torch.where(full > 0, r / torch.where(full > 0, full, 1.0), 0.0).double()  # CETT_t := 0 if FFN(x) = 0
    return vals, torch.diff(r, dim=1, prepend=r.new_zeros(r.size(0), 1))


def _bins(grid: Tensor, vals: Tensor) -> Tensor:
    """#{g : grid[g] <= v} for every v: ``searchsorted(grid, vals, right=True)`` for a linspace grid, from
    the arithmetic guess corrected against the float32 grid itself (exact, 3x faster on CPU)."""
    G, a = grid.numel(), grid[0].item()
    step = (grid[-1].item() - a) / (G - 1)
    if not step > 0:
        return torch.where(vals >= a, G, 0)
    inf = grid.new_tensor([math.inf])
    above, below = torch.cat([grid, inf]), torch.cat([-inf, grid])  # grid[b] and grid[b - 1]
    b = ((vals - a) / step).floor_().clamp_(-1, G - 1).long().add_(1)
    while True:
        down, up = below[b] > vals, above[b] <= vals
        if not (down.any() or up.any()):
            return b
        b += up.long() - down.long()


@torch.no_grad()
def cett_curves(model: Transformer, batches: Batches, n_grid: int = N_GRID) -> CettCurves:
    """The exact mean CETT at every grid candidate of every layer, from two streaming dense passes.

    Each increment r_k - r_{k-1} of each token goes into the histogram bin of its sorted norm n_(k-1) on
    the grid (bin b = #{g : grid[g] <= n_(k-1)}, it counts for candidates g >= b), so
    CETT_l(grid[g]) = cumsum(hist)[g] / N. Histograms are float64 (G + 1 per layer): memory is constant in
    the evaluation set size, and the sum over millions of increments stays exact to ~1e-12.
    The grid-range pass also gives the dense loss; the statistics pass stops after the last FFN.
    """
    grids, (total, count) = _grid_ranges(_require_float32(model), batches, n_grid)
    L = model.cfg.n_layers
    w = model.ffns()[0].w_down.weight
    hist = torch.zeros(L, n_grid + 1, dtype=torch.float64, device=w.device)
    chunk = CHUNK if w.device.type == "cpu" else CUDA_CHUNK
    buf = torch.empty(max(chunk, w.numel()), dtype=torch.float32, device=w.device)  # prefix-sum workspace
    b = _Batch()

    def on_h(l: int, ffn: GatedFFN, h: Tensor, s: Tensor | None) -> None:
        w_t, cn = ffn.w_down.weight.t().float().contiguous(), ffn.down_col_norms().float()
        rows = h[b.valid].float()
        for i in range(0, rows.size(0), ROWS):
            vals, inc = _curve_increments(rows[i:i + ROWS], w_t, cn, buf)
            hist[l].index_add_(0, _bins(grids[l].to(vals.device), vals).flatten(), inc.flatten())
        if l == L - 1:
            raise _StopForward

    with sparse(model):  # the dense statistics, as in _grid_ranges
        _forward(model, batches, on_h, need_loss=False, state=b)
    cett = hist[:, :-1].cpu().cumsum(1) / count
    return CettCurves(torch.stack(grids), cett, count, total / count)


def thresholds_from_cett(curves: CettCurves, c: float) -> list[float]:
    """tau_l(c) for every layer from precomputed curves (no model pass)."""
    G = curves.grid.size(1)
    return [curves.grid[l, invert_cett(lambda g, l=l: float(curves.cett[l, g]), G, c)].item()
            for l in range(curves.grid.size(0))]


# ----------------------------------------------------------------------------- reference: everything per step


@torch.no_grad()
def dense_rows(model: Transformer, batches: Batches) -> tuple[list[Tensor], float]:
    """Dense pass holding every layer's h for every valid token: ([(N, d_ff)] * L, mean loss). Memory
    grows with the evaluation set (the reference's way; the fast path never does this)."""
    _require_float32(model)
    rows: list[list[Tensor]] = [[] for _ in range(model.cfg.n_layers)]
    b = _Batch()

    def on_h(l: int, ffn: GatedFFN, h: Tensor, s: Tensor | None) -> None:
        rows[l].append(h[b.valid].float())

    with sparse(model):  # dense: thresholds or masks set on the model are lifted
        total, count = _forward(model, batches, on_h, state=b)
    return [torch.cat(r) for r in rows], total / count


@torch.no_grad()
def reference_tau(h: Tensor, w_down: Tensor, c: float, n_grid: int = N_GRID) -> float:
    """tau_l(c) of one layer the straightforward way: rows h (N, d_ff) of every valid token, the grid from
    them, and a bisection with one full masked matmul over all tokens per candidate (authors' code)."""
    n, full = neuron_norms(h, w_down.norm(dim=0)), (h @ w_down.t()).norm(dim=-1)  # once, as the authors
    grid = _grid_from(n.min().item(), n.flatten()[::_grid_stride(h.size(0), h.size(1), n_grid)], n_grid)
    g = invert_cett(lambda i: cett_per_token(h, w_down, grid[i], n, full).mean().item(), n_grid, c)
    return grid[g].item()


@torch.no_grad()
def reference_thresholds(model: Transformer, rows: list[Tensor], c: float, n_grid: int = N_GRID
                         ) -> list[float]:
    """tau_l(c) for every layer from the rows of ``dense_rows`` (``reference_tau`` per layer): the
    reference's thresholds, also usable as an independent check of ``thresholds_from_cett``."""
    return [reference_tau(h, ffn.w_down.weight.float(), c, n_grid)
            for ffn, h in zip(model.ffns(), rows, strict=True)]


# ----------------------------------------------------------------------------- Algorithm 1


def _levels(tol: float) -> int:
    """m such that bisection on [0, 1] stops at width 2^-m (the first width <= tol)."""
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    m = 0
    while 2.0**-m > tol:
        m += 1
    return m


def _bisect(f: Callable[[int], float], m: int, target: float) -> tuple[int, int]:
    """Algorithm 1 on the integer scale j / 2^m: halve [0, 2^m] until one cell is left. The cell is a
    crossing (below the target at a, not below at b), not necessarily the first: where the ratio falls
    back below the target between lattice points (noise of a few 1e-4 on a toy checkpoint), a later one."""
    a, b = 0, 1 << m
    while b - a > 1:
        j = (a + b) // 2
        if f(j) < target:
            a = j
        else:  # at or above the target, or NaN: not acceptable
            b = j
    return a, b


def _secant_estimate(pts: list[tuple[float, float]], yT: float) -> float:
    """Root of the secant of y = log log ratio on x = log c, through the latest point and the latest one at
    least MIN_LOG_STEP away (nearby points give a slope made of noise; none: slope 2), at most c = 1 (a
    nearly flat stretch of the ratio gives a tiny slope, and its root would overflow)."""
    (x0, y0), far = pts[-1], [p for p in pts[:-1] if abs(p[0] - pts[-1][0]) > MIN_LOG_STEP]
    x1, y1 = far[-1] if far else (x0 - 1.0, y0 - 2.0)
    slope = (y1 - y0) / (x1 - x0)
    return math.exp(min(x0 + (yT - y0) / (slope if slope > 0 else 2.0), 0.0))


def _secant_search(f: Callable[[int], float], m: int, target: float, c0: float, slack: int = 2
                   ) -> tuple[int, int]:
    """The same cell as ``_bisect`` (for a monotone ratio) with fewer evaluations.

    The loss increase log ratio(c) grows about like a power of c (quadratic for small perturbations), so
    y = log log ratio is about linear in x = log c and its secant (``_secant_estimate``) predicts the
    crossing. First the upper end is established: probe just above the prediction (1% above, 4x more
    after every miss, at most 8x the lower end). Then, inside the tested bracket [a, b], probes follow the
    prediction rounded to the nearest cell end, projected as in ITP (Oliveira & Takahashi 2020) onto
    [mid - r_k, mid + r_k], r_k = 2^(ceil(log2(b0 - a0)) + slack - k - 1) - (b - a) / 2, which bounds
    this phase at log2(b0 - a0) + slack probes whatever the ratio does (noise just makes it a bisection).
    """
    n = 1 << m
    a, b = 0, n  # f(0) = 1 < target is known without a pass; b = n is untested, as in the bisection
    yT = math.log(math.log(target))
    pts: list[tuple[float, float]] = []  # (log c, log log ratio) of probes with ratio > 1
    j, misses = min(max(round(c0 * n), 1), n - 1), 0
    while b == n and b - a > 1:  # establish the upper end
        r = f(j)
        if r > 1:
            pts.append((math.log(j / n), math.log(math.log(r))))
        if not r < target:  # NaN is not acceptable, as in the bisection
            b = j
            break
        a, misses = j, misses + 1
        x = _secant_estimate(pts, yT) * n if pts else 2 * a
        j = min(max(math.ceil(min(x * (1 + 0.01 * 4 ** (misses - 1)), 8 * a)), a + 1), n - 1)
    m2, k = math.ceil(math.log2(max(b - a, 1))), 0
    while b - a > 1:  # ITP-safeguarded secant inside [a, b]
        x = _secant_estimate(pts, yT) * n if pts else (a + b) / 2
        r_k, mid = 2.0 ** (m2 + slack - k - 1) - (b - a) / 2, (a + b) / 2
        j = min(max(round(min(max(x, mid - r_k), mid + r_k)), a + 1), b - 1)
        r, k = f(j), k + 1
        if r > 1:
            pts.append((math.log(j / n), math.log(math.log(r))))
        if r < target:
            a = j
        else:
            b = j
    return a, b


def _reference_at(c: float, ckpts: Sequence[Checkpoint], batches: Batches, n_grid: int, counts: dict
                  ) -> list[CheckpointResult]:
    """One outer step of the reference: per checkpoint a dense pass, tau_l(c) by masked matmuls, a sparse pass."""
    out = []
    for ck in ckpts:
        model = _load(ck)
        rows, dense = dense_rows(model, batches)
        taus = reference_thresholds(model, rows, c, n_grid)
        del rows
        res = evaluate(model, batches, taus=taus)
        counts["dense"] += 1
        counts["sparse"] += 1
        out.append(CheckpointResult(c, taus, dense, res.loss, res.active_per_layer))
    return out


def _fast_at(c: float, ckpts: Sequence[Checkpoint], batches: Batches, curves: list[CettCurves], counts: dict,
             memo: dict) -> list[CheckpointResult]:
    """tau_l(c) from the cached curves, then a sparse pass per checkpoint -- skipped when every checkpoint's
    thresholds equal those of an earlier c (e.g. c above the top of every curve), which changes nothing."""
    taus = [thresholds_from_cett(cv, c) for cv in curves]
    key = tuple(map(tuple, taus))
    if key not in memo:
        memo[key] = []
        for ck, cv, t in zip(ckpts, curves, taus, strict=True):
            res = evaluate(_load(ck), batches, taus=t)
            counts["sparse"] += 1
            memo[key].append(CheckpointResult(c, t, cv.dense_loss, res.loss, res.active_per_layer))
    return [replace(r, cett=c) for r in memo[key]]


def _check_impl(impl: str) -> None:
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")


def ppl_p_sparsity(models: Checkpoint | Sequence[Checkpoint], batches: Batches, p: float = 1.0, *,
                   impl: str = "fast", tol: float = TOL, n_grid: int = N_GRID, search: str = "bisect",
                   progress: Progress = None, curves: Sequence[CettCurves] | None = None,
                   name: str = "") -> PPLpResult:
    """PPL-p% sparsity (Algorithm 1): the CETT value c at which the mean PPL ratio over ``models`` reaches
    1 + p/100, each checkpoint with its own per-layer thresholds tau_l(c).

    models: one checkpoint or a list (a Transformer or a zero-argument callable returning one).
    impl: "fast" or "reference" (module docstring).
    tol: stop when the bracket on c is at most tol wide (2^-10 for 1e-3, i.e. 10 bisection steps).
    n_grid: candidate thresholds per layer (65,536 as the authors; fewer only to speed up tests).
    search (fast only; the reference always bisects): "bisect" (default) probes exactly the reference's
      sequence of c, so with the same thresholds it returns exactly the reference's answer. "secant"
      (``_secant_search``, 3 sparse passes instead of 10 on relu-s4's final checkpoint) ends in the
      bisection's cell whenever the mean ratio is monotone in c; on real checkpoints the ratio is noisy at
      the scale of tol (each step of c moves a few (token, neuron) pairs across the thresholds), so it may
      return another valid crossing a few cells away, and the activation ratio there differs by a few 1e-3.
    progress: called with {"stage": "curves", "checkpoint"} after each checkpoint's curves (fast) and
      {"stage": "search", "c", "mean_ratio", "step"} after every tested c.
    curves (fast only): the checkpoints' ``cett_curves`` on these batches and n_grid, computed once by the
      caller for several p (not recomputed here; nothing checks that they belong to these checkpoints).
    name: what the checkpoints are (e.g. the run), named by the ``TargetNotReachedWarning`` given when no
      tested c reaches the target (``PPLpResult.reached`` False).
    """
    _check_impl(impl)
    if search not in ("secant", "bisect"):
        raise ValueError(f"search must be 'secant' or 'bisect', got {search!r}")
    if not p > 0:
        raise ValueError(f"p must be > 0 (percent), got {p}")
    t0 = time.perf_counter()
    ckpts = [models] if isinstance(models, nn.Module) or not isinstance(models, Sequence) else list(models)
    if not ckpts:
        raise ValueError("models: give at least one checkpoint (the mean PPL ratio is over them)")
    target, m = 1.0 + p / 100.0, _levels(tol)
    counts, memo = {"dense": 0, "sparse": 0}, {}
    if curves is not None:
        if impl != "fast" or len(curves) != len(ckpts):
            raise ValueError(f"curves: give one CettCurves per checkpoint ({len(ckpts)}) with impl='fast', got "
                             f"{len(curves)} with impl={impl!r}")
        curves = list(curves)
    else:
        curves = []
        for i, ck in enumerate(ckpts if impl == "fast" else []):
            curves.append(cett_curves(_load(ck), batches, n_grid))
            counts["dense"] += 2  # the grid-range pass and the (truncated) statistics pass
            if progress:
                progress({"stage": "curves", "checkpoint": i})

    def at(c: float) -> list[CheckpointResult]:
        if impl == "fast":
            return _fast_at(c, ckpts, batches, curves, counts, memo)
        return _reference_at(c, ckpts, batches, n_grid, counts)

    tested: dict[int, list[CheckpointResult]] = {}
    trace: list[tuple[float, float]] = []

    def f(j: int) -> float:
        tested[j] = at(j / (1 << m))
        ratio = sum(r.ppl_ratio for r in tested[j]) / len(ckpts)
        trace.append((j / (1 << m), ratio))
        if progress:
            progress({"stage": "search", "c": j / (1 << m), "mean_ratio": ratio, "step": len(trace)})
        return ratio

    secant = impl == "fast" and search == "secant"
    a, b = _secant_search(f, m, target, C0) if secant else _bisect(f, m, target)
    if a not in tested:  # lo = 0 was never tested
        tested[a] = at(0.0)
    reached = b < (1 << m)  # hi was tested (ratio >= target or NaN); else hi = 1 is the untested start
    if not reached:
        ratio = sum(r.ppl_ratio for r in tested[a]) / len(ckpts)
        warnings.warn(f"{name or 'checkpoints'}: PPL-{p:g}% not reached: no tested CETT value c in [0, 1) raised "
                      f"the mean PPL ratio to {target:g} (largest tested c = {a / (1 << m):.4f}, ratio {ratio:.4f}); "
                      f"the reported c is a lower bound, not PPL-{p:g}% sparsity (reached = False)",
                      TargetNotReachedWarning, stacklevel=2)
    return PPLpResult(p, impl, a / (1 << m), (a / (1 << m), b / (1 << m)), reached, tested[a], counts["dense"],
                      counts["sparse"], time.perf_counter() - t0, trace)


def apply_cett(models: Sequence[Checkpoint], batches: Batches, c: float, *, impl: str = "fast",
               n_grid: int = N_GRID) -> list[CheckpointResult]:
    """Sparsify each checkpoint with its own thresholds tau_l(c) for one shared c; one result each."""
    _check_impl(impl)
    out = []
    for ck in models:
        counts = {"dense": 0, "sparse": 0}
        if impl == "fast":
            model = _load(ck)
            out += _fast_at(c, [model], batches, [cett_curves(model, batches, n_grid)], counts, {})
        else:
            out += _reference_at(c, [ck], batches, n_grid, counts)
    return out


# ----------------------------------------------------------------------------- Pareto points and sweeps


def _point(method: str, param: float, model: Transformer, batches: Batches, dense_loss: float | None,
           taus: Sequence[float] | None = None, rule: Rule | None = None) -> SparsePoint:
    if dense_loss is None:
        dense_loss = evaluate(model, batches).loss
    res = evaluate(model, batches, taus=taus, rule=rule)
    return SparsePoint(method, param, dense_loss, res.loss, res.active_per_layer)


def topk_point(model: Transformer, batches: Batches, k: int, per_batch: bool = False,
               dense_loss: float | None = None) -> SparsePoint:
    """Top-k (``topk_rule``); ``dense_loss`` saves the dense pass when already known."""
    return _point("topk_batch" if per_batch else "topk", k, model, batches, dense_loss,
                  rule=topk_rule(k, per_batch))


def fat_point(model: Transformer, batches: Batches, eps: float, dense_loss: float | None = None) -> SparsePoint:
    """FAT-eps (``fat_rule``)."""
    return _point("fat", eps, model, batches, dense_loss, rule=fat_rule(eps))


def zeros_point(model: Transformer, batches: Batches, dense_loss: float | None = None) -> SparsePoint:
    """Exact zeros (``zeros_rule``): for ReLU the PPL equals the dense PPL."""
    return _point("zeros", math.nan, model, batches, dense_loss, rule=zeros_rule())


def _sweep(point: Callable[[float], SparsePoint], params: Iterable[float], progress: Progress
           ) -> list[SparsePoint]:
    out = []
    for x in params:
        out.append(point(x))
        if progress:
            progress({"stage": "sweep", "method": out[-1].method, "param": x})
    return out


def sweep_topk(model: Transformer, batches: Batches, ks: Iterable[int], per_batch: bool = False,
               progress: Progress = None) -> list[SparsePoint]:
    """Top-k points for every k (one dense pass, then one pass per k)."""
    dense = evaluate(model, batches).loss
    return _sweep(lambda k: topk_point(model, batches, int(k), per_batch, dense), ks, progress)


def sweep_fat(model: Transformer, batches: Batches, eps: Iterable[float], progress: Progress = None
              ) -> list[SparsePoint]:
    """FAT-eps points for every eps (one dense pass, then one pass per eps)."""
    dense = evaluate(model, batches).loss
    return _sweep(lambda e: fat_point(model, batches, e, dense), eps, progress)


def expert_point(model: Transformer, batches: Batches, k: int, dense_loss: float | None = None) -> SparsePoint:
    """An MoE model routing every token to k of its E experts (paper Fig. 2's baseline): the activation
    ratio is the share of neurons in routed experts, k / E, in every layer (by construction: unlike
    activation_stats it counts a routed neuron whose h_i is 0, which a SiLU expert all but never has);
    ``dense_loss`` is the loss at the trained top_k (the MoE as trained). Leaves the model routing its
    trained top_k."""
    cfg = model.cfg
    if dense_loss is None:
        model.set_active_experts(None)
        dense_loss = evaluate(model, batches).loss
    try:
        if k == cfg.top_k:  # the MoE as trained: no second pass
            loss = dense_loss
        else:
            model.set_active_experts(k)
            loss = evaluate(model, batches).loss
    finally:
        model.set_active_experts(None)
    return SparsePoint("moe", k, dense_loss, loss, [k / cfg.n_experts] * cfg.n_layers)


def sweep_experts(model: Transformer, batches: Batches, ks: Iterable[int], progress: Progress = None
                  ) -> list[SparsePoint]:
    """MoE points for every number of routed experts k (one pass at the trained top_k, then one per k)."""
    model.set_active_experts(None)
    dense = evaluate(model, batches).loss
    return _sweep(lambda k: expert_point(model, batches, int(k), dense), ks, progress)


def sweep_cett(model: Transformer, batches: Batches, cs: Iterable[float], n_grid: int = N_GRID,
               progress: Progress = None) -> list[SparsePoint]:
    """The PPL-p% curve: for each CETT value c, thresholds tau_l(c) (curves computed once), one sparse pass."""
    curves = cett_curves(model, batches, n_grid)
    return _sweep(lambda c: _point("cett", c, model, batches, curves.dense_loss,
                                   taus=thresholds_from_cett(curves, c)), cs, progress)
