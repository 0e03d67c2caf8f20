"""Tests for sparsinglaw.sparsity: the fast implementation against the reference one, Eq. 3 against a
per-token numpy oracle, edge cases (zero rows, a dead layer, padding, one token, one sequence), the
search on c, the baselines and the activation statistics. Tiny models, one thread (conftest)."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import nonzero_share
from sparsinglaw import sparsity as S
from sparsinglaw.model import ModelConfig, Transformer, sparse

V, T = 64, 32
CFG = dict(vocab_size=V, d_model=32, n_layers=2, head_dim=8, d_ff=80, seq_len=T, dim_model_base=16)
SMALL_GRID = 1024  # the reference bisects with one masked matmul per candidate: fewer candidates in most tests


def markov(n_seq: int, seed: int, length: int = T) -> torch.Tensor:
    """A learnable synthetic language: next = (5 * cur + 3 + noise) mod V, noise in {0, 1, 2} 30% of the time."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n_seq, length + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (n_seq,), generator=g)
    for t in range(length):
        noise = torch.randint(0, 3, (n_seq,), generator=g) * (torch.rand(n_seq, generator=g) < 0.3)
        x[:, t + 1] = (5 * x[:, t] + 3 + noise) % V
    return x


def batches_of(seqs: torch.Tensor, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(seqs[i:i + bs, :-1], seqs[i:i + bs, 1:]) for i in range(0, len(seqs), bs)]


def train(act: str, steps: int = 150, seed: int = 0, snapshots: tuple[int, ...] = ()) -> tuple[Transformer, list]:
    """A tiny model trained briefly on ``markov`` (seeded), so it has a real loss to lose."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**CFG, activation=act))
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.0), lr=1e-2)
    data, g, states = markov(1024, seed + 1), torch.Generator().manual_seed(seed + 2), []
    for step in range(1, steps + 1):
        b = data[torch.randint(0, len(data), (16,), generator=g)]
        _, loss = model(b[:, :-1], b[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in snapshots:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    return model.eval(), states


def random_model(act: str, seed: int = 0) -> tuple[Transformer, list]:
    """A random-init model scored on its own greedy predictions (on random targets it barely reacts)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**CFG, activation=act, init_std=0.3)).eval()
    x = markov(96, seed + 7)[:, :-1]
    with torch.no_grad():
        y = model(x)[0].argmax(-1)
    return model, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]


@pytest.fixture(scope="module")
def trained():
    return {act: train(act)[0] for act in ("relu", "silu", "gelu")}


@pytest.fixture(scope="module")
def val():
    return batches_of(markov(96, 99))


# ----------------------------------------------------------------------------- fast == reference


def assert_valid_bracket(res: S.PPLpResult) -> None:
    """lo = c has mean ratio < 1 + p/100; hi, when tested, has mean ratio >= 1 + p/100; hi - lo <= tol;
    ``reached`` exactly when hi was tested."""
    lo, hi = res.bracket
    tested = dict(res.trace)
    assert res.cett == lo and 0 < hi - lo <= S.TOL and res.mean_ratio < 1 + res.p / 100
    assert hi == 1.0 or tested[hi] >= 1 + res.p / 100
    assert res.reached == (hi < 1.0)


@contextlib.contextmanager
def reached(expected: bool):
    """Expect a TargetNotReachedWarning (expected False), or make one an error (expected True)."""
    if not expected:
        with pytest.warns(S.TargetNotReachedWarning, match="not reached"):
            yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.TargetNotReachedWarning)
        yield


def assert_same_answer(f: S.PPLpResult, r: S.PPLpResult, tol: float = S.TOL) -> None:
    assert abs(f.cett - r.cett) <= tol
    assert abs(f.activation_ratio[0] - r.activation_ratio[0]) <= 0.002
    assert abs(f.mean_ratio - r.mean_ratio) <= 0.001
    assert all(math.isfinite(t) for ts in f.thresholds + r.thresholds for t in ts)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("kind", ["trained", "random"])
def test_fast_equals_reference(act, kind, trained, val):
    model, batches = (trained[act], val) if kind == "trained" else random_model(act)
    with reached(kind == "trained"):  # a random model scored on its own predictions only gains: out of reach
        f = S.ppl_p_sparsity(model, batches, p=1.0, impl="fast", n_grid=SMALL_GRID)
        r = S.ppl_p_sparsity(model, batches, p=1.0, impl="reference", n_grid=SMALL_GRID)
        s = S.ppl_p_sparsity(model, batches, p=1.0, impl="fast", n_grid=SMALL_GRID, search="secant")
    assert f.reached == r.reached == s.reached == (kind == "trained")
    assert_same_answer(f, r)
    assert f.cett == r.cett and f.thresholds == r.thresholds and f.ratios == r.ratios  # bit-identical
    assert f.mean_ratio < 1.01 and 0 < f.activation_ratio[0] < 1  # a random model may even gain
    assert r.n_dense_passes == r.n_sparse_passes == 10 and f.n_dense_passes == 2 and f.n_sparse_passes <= 10
    assert [c for c, _ in f.trace] == [c for c, _ in r.trace] and r.trace[0][0] == 0.5
    assert_valid_bracket(f)
    assert_valid_bracket(s)
    assert s.n_sparse_passes <= 12 and abs(s.cett - f.cett) <= 8 * S.TOL  # another crossing, if any, is near


@pytest.mark.slow
def test_fast_equals_reference_on_the_full_grid(trained, val):
    f = S.ppl_p_sparsity(trained["silu"], val, p=1.0, impl="fast")
    r = S.ppl_p_sparsity(trained["silu"], val, p=1.0, impl="reference")
    assert_same_answer(f, r)
    assert f.thresholds == r.thresholds
    curves = S.cett_curves(trained["silu"], val)
    assert curves.grid.shape == curves.cett.shape == (2, S.N_GRID)


def test_curve_equals_masked_matmul_cett(trained, val):
    model = trained["gelu"]
    curves = S.cett_curves(model, val, n_grid=4096)
    rows, dense = S.dense_rows(model, val)
    assert dense == pytest.approx(curves.dense_loss, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    for l, (ffn, h) in enumerate(zip(model.ffns(), rows, strict=True)):
        for i in torch.randint(0, 4096, (24,), generator=g).tolist() + [0, 4095]:
            ref = S.cett_per_token(h, ffn.w_down.weight, curves.grid[l, i]).double().mean().item()
            assert curves.cett[l, i].item() == pytest.approx(ref, abs=2e-6)


def test_curves_are_exact_across_row_blocks(trained, monkeypatch):
    """The fast statistics split each batch into blocks of ROWS tokens; every other test's batches hold at
    most ROWS valid tokens, the profiles' 4,096. One batch of 2,048 tokens (two blocks, and many at ROWS = 7)
    must still give, at every grid point tested, the masked-matmul mean over all its tokens."""
    model = trained["silu"]
    big = batches_of(markov(64, 5), bs=64)
    assert S.count_tokens(big) > S.ROWS
    rows, _ = S.dense_rows(model, big)
    for rows_per_block in (S.ROWS, 7):
        monkeypatch.setattr(S, "ROWS", rows_per_block)
        curves = S.cett_curves(model, big, n_grid=512)
        for l, (ffn, h) in enumerate(zip(model.ffns(), rows, strict=True)):
            for i in (0, 50, 200, 400, 511):
                ref = S.cett_per_token(h, ffn.w_down.weight, curves.grid[l, i]).double().mean().item()
                assert curves.cett[l, i].item() == pytest.approx(ref, abs=2e-6), (rows_per_block, l, i)


# ----------------------------------------------------------------------------- Eq. 3 against numpy


def oracle_cett(h: np.ndarray, w: np.ndarray, tau: float) -> float:
    """Eq. 3 token by token in float64: ||sum_{i: n_i < tau} h_i w_i|| / ||sum_i h_i w_i||, 0 if the output is 0."""
    col = np.linalg.norm(w, axis=0)
    vals = []
    for row in h:
        out = w @ row
        tail = w @ np.where(np.abs(row) * col < tau, row, 0.0)
        den = np.linalg.norm(out)
        vals.append(np.linalg.norm(tail) / den if den > 0 else 0.0)
    return float(np.mean(vals))


def test_a_neuron_whose_norm_equals_tau_stays_active():
    """D = {i : n_i < tau} is strict, as GatedFFN zeroes neurons: orthogonal outputs (1, 2, -2) have norms
    (1, 2, 2) and ||FFN(x)|| = 3, so at tau = 1 D is empty and at tau = 2 it holds neuron 0 alone."""
    h, w = torch.tensor([[1.0, 2.0, -2.0]]), torch.eye(3)
    taus = (1.0, 1.5, 2.0, 2.5)
    got = [S.cett_per_token(h, w, tau).item() for tau in taus]
    assert got == pytest.approx([0.0, 1 / 3, 1 / 3, 1.0])
    assert got == pytest.approx([oracle_cett(h.double().numpy(), w.double().numpy(), tau) for tau in taus])


def oracle_tau_index(h: np.ndarray, w: np.ndarray, grid: np.ndarray, c: float) -> int:
    left, right = 0, len(grid)
    while left < right:
        mid = (left + right) // 2
        if oracle_cett(h, w, grid[mid]) > c:
            right = mid
        else:
            left = mid + 1
    return max(left - 1, 0)


def test_inversion_is_the_largest_candidate_at_or_below_c():
    """On a monotone curve with flat stretches (ties) tau_l(c) is the largest candidate with CETT <= c
    (brute force), also when c equals a curve value exactly (c = 0 included) or lies above the whole curve."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        G = int(rng.integers(1, 40))
        curve = np.cumsum(rng.integers(0, 3, G) * 0.125)  # steps of 0, 1/8 or 1/4: exact in float64
        curve[0] = 0.0
        for c in [0.0, 0.0625, *curve.tolist(), float(curve[-1]) + 1.0]:
            want = max(g for g in range(G) if curve[g] <= c)
            assert S.invert_cett(lambda i, curve=curve: float(curve[i]), G, c) == want, (curve, c)


def test_thresholds_match_a_per_token_numpy_oracle(trained):
    model = trained["silu"]
    batches = batches_of(markov(5, 3))  # 160 tokens
    curves = S.cett_curves(model, batches)  # the full 65,536-point grid
    rows, _ = S.dense_rows(model, batches)
    for l, (ffn, h) in enumerate(zip(model.ffns(), rows, strict=True)):
        h64, w64 = h.double().numpy(), ffn.w_down.weight.double().detach().numpy()
        n = np.abs(h64) * np.linalg.norm(w64, axis=0)  # float64: our float32 norms agree to ~1 ulp
        stride = max(n.size // S.N_GRID, 1)
        assert curves.grid[l, 0].item() == pytest.approx(n.min(), rel=1e-6)
        assert curves.grid[l, -1].item() == pytest.approx(np.quantile(n.ravel()[::stride], 0.99), rel=1e-6)
        grid = curves.grid[l].double().numpy()
        for c in (0.02, 0.1, 0.25, 0.5):
            want = oracle_tau_index(h64, w64, grid, c)
            got = S.invert_cett(lambda i, l=l: curves.cett[l, i].item(), S.N_GRID, c)
            if got != want:  # only where a norm n_i lies on the candidate within float32 rounding, so that
                edge = grid[max(got, want)]  # float32 and float64 put neuron i on either side of it
                assert abs(got - want) == 1 and np.abs(n - edge).min() < 1e-6 * edge, (l, c, got, want)
            assert S.thresholds_from_cett(curves, c)[l] == curves.grid[l, got].item()


def coprime_stride(n_tokens: int, d_ff: int, n_grid: int) -> int:
    """The grid's sample stride by brute force: the first s >= max(N d_ff // n_grid, 1) with gcd(s, d_ff) = 1."""
    return next(s for s in range(max(n_tokens * d_ff // n_grid, 1), 10 * d_ff * n_tokens) if math.gcd(s, d_ff) == 1)


@pytest.mark.parametrize("n_tokens,d_ff", [(160, 80), (3072, 80), (16384, 120), (16384, 80), (65536, 480),
                                            (1248, 210), (2458, 80), (3823, 120)],
                         ids=["stride-1", "stride-d_ff", "cpu", "cpu-d_ff-80", "gpu", "several-steps",
                              "coprime-3", "coprime-7"])
def test_grid_sample_walks_over_every_column(n_tokens, d_ff):
    """The stride is the first s >= the authors' max(N d_ff // n_grid, 1) coprime with d_ff (brute force).
    The last two shapes have an authors' stride (3, 7) already coprime with d_ff: it must be kept as it is,
    not moved on to the next coprime one (every other shape's authors' stride is 1 or shares a factor)."""
    grid = 3072 if n_tokens == 3072 else S.N_GRID  # 3072 x 80 / 3072: the authors' stride is d_ff itself
    old, s = max(n_tokens * d_ff // grid, 1), S._grid_stride(n_tokens, d_ff, grid)
    assert s == coprime_stride(n_tokens, d_ff, grid) and s >= old
    columns = np.arange(0, n_tokens * d_ff, s) % d_ff  # the flat indices the quantile sample takes
    assert set(columns.tolist()) == set(range(d_ff))
    assert len(set((np.arange(0, n_tokens * d_ff, old) % d_ff).tolist())) == d_ff // math.gcd(old, d_ff)


@pytest.mark.parametrize("lo,hi,G", [(0.013, 0.731, 65536), (0.0, 3.7, 4096), (0.25, 1.9, 3000), (2.0, 2.0, 7)],
                         ids=["offset-65536", "zero-start-4096", "offset-3000", "degenerate"])
def test_bins_count_the_grid_points_at_or_below_each_value(lo, hi, G):
    """_bins(grid, v) = #{g : grid[g] <= v} = searchsorted(grid, v, right=True), the bin of a CETT increment
    (cett_curves): a norm lying exactly on candidate g goes to bin g + 1, i.e. it joins D = {i : n_i < tau}
    only at the next candidate, as the model keeps a neuron whose norm equals tau. Checked on float32 linspace
    grids (an offset start, a length that is not a power of two, a degenerate grid of equal points) at every
    grid point, at both float32 neighbours of each, out of range (finite) and at seeded random values;
    torch.searchsorted is the oracle. A "<" in place of "<=" in the correction loop put values on a grid
    point one bin too low (16,129 of 65,536 on the first grid)."""
    grid = torch.linspace(lo, hi, G, dtype=torch.float32)
    g = torch.Generator().manual_seed(G)
    up, down = torch.nextafter(grid, torch.tensor(math.inf)), torch.nextafter(grid, torch.tensor(-math.inf))
    vals = torch.cat([grid, up, down,
                      torch.tensor([lo - 1.0, hi + 1.0, hi * 1e30], dtype=torch.float32),
                      lo - 0.1 + (hi - lo + 0.2) * torch.rand(4096, generator=g)])
    for v in (vals, vals[:vals.numel() // 2 * 2].view(-1, 2)):  # flat and in rows, as cett_curves bins blocks
        want = torch.searchsorted(grid, v.contiguous(), right=True)
        got = S._bins(grid, v)
        assert got.shape == v.shape and torch.equal(got, want), (got != want).nonzero()[:5].tolist()
    if lo < hi:  # each grid point counts itself and every one below it
        assert torch.equal(S._bins(grid, grid), torch.arange(1, G + 1))


def test_grid_top_sees_every_neuron():
    """The gpu profile's geometry (stride = d_ff with the authors' rule) in small: 3 batches, 3072 tokens,
    d_ff 80, a 3072-point grid. Neuron 0 of layer 0 is silenced (a ReLU neuron that never fires): the
    authors' sample holds neuron 0 alone, its top is 0 and the layer ran dense. The grid top now is the
    0.99 quantile of a sample over every column (float64 numpy oracle, near the quantile of all entries),
    the fast grid (sampled across batches) equals the reference's, and the layer is sparsified."""
    model, val, G = train("relu", steps=60)[0], batches_of(markov(96, 99)), 3072
    hd = model.ffns()[0].h.register_forward_hook(lambda m, i, h: h.index_fill(-1, torch.tensor([0]), 0.0))
    try:
        curves = S.cett_curves(model, val, G)
        rows, _ = S.dense_rows(model, val)
        for l, (ffn, h) in enumerate(zip(model.ffns(), rows, strict=True)):
            n = np.abs(h.double().numpy()) * np.linalg.norm(ffn.w_down.weight.double().detach().numpy(), axis=0)
            s = coprime_stride(*n.shape, G)
            assert n.shape == (3072, 80) and s == 81 and (l > 0 or (n[:, 0] == 0).all())
            top = curves.grid[l, -1].item()
            assert top == pytest.approx(np.quantile(n.ravel()[::s], 0.99), rel=1e-6)
            assert top == pytest.approx(np.quantile(n, 0.99), rel=0.05)
        zeros = S.activation_stats(model, val, rule=S.zeros_rule()).active_per_layer
        for c in (0.05, 0.2):
            taus = S.thresholds_from_cett(curves, c)
            assert taus == S.reference_thresholds(model, rows, c, G)  # same grid, sample and inversion
            active = S.activation_stats(model, val, taus=taus).active_per_layer
            assert all(t > 0 for t in taus) and all(a < z for a, z in zip(active, zeros, strict=True))
    finally:
        hd.remove()


def test_cett_is_not_monotone_per_token_but_the_mean_nearly_is(trained, val):
    # three neurons along one direction with outputs +1, -1.5, +3 (norms 1, 1.5, 3): FFN(x) = 2.5
    w = torch.tensor([[1.0, -1.0, 1.0]])
    h = torch.tensor([[1.0, 1.5, 3.0]])
    got = [S.cett_per_token(h, w, tau).item() for tau in (0.5, 1.2, 2.0, 4.0)]
    assert got == pytest.approx([0.0, 0.4, 0.2, 1.0])  # adding neuron 2 to D shortens the tail
    for act, model in trained.items():
        cett = S.cett_curves(model, val, n_grid=4096).cett
        assert (cett[:, 0] == 0).all() and (cett[:, -1] > 0.5).all() and (cett[:, -1] <= 1.0).all(), act
        assert (cett.cummax(1).values - cett).max() < 1e-3, act  # cancellations are rare and small
        assert (cett[:, ::256].diff(dim=1) > 0).all(), act


# ----------------------------------------------------------------------------- c = 0 and edge cases


@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_c_zero_keeps_every_neuron(act, trained, val):
    model = trained[act]
    curves = S.cett_curves(model, val, n_grid=SMALL_GRID)
    taus = S.thresholds_from_cett(curves, 0.0)
    res = S.evaluate(model, val, taus=taus)
    assert res.loss == curves.dense_loss  # exactly: only exact zeros may be dropped
    if act != "relu":
        assert res.activation_ratio == 1.0
    else:  # only the exact zeros, which c = 0 keeps too, are not counted active
        assert res.active_per_layer == pytest.approx(nonzero_share(model, val), abs=1e-12)
    rows, _ = S.dense_rows(model, val)
    assert S.reference_thresholds(model, rows, 0.0, SMALL_GRID) == taus


def zero_rows_hook(model: Transformer, token: int):
    """Make h exactly zero in layer 0 wherever the input token is ``token`` (all-zero rows)."""
    state = {}
    pre = model.embed.register_forward_hook(lambda m, i, o: state.__setitem__("x", i[0]))
    hook = model.ffns()[0].h.register_forward_hook(
        lambda m, i, o: o.masked_fill((state["x"] == token).unsqueeze(-1), 0.0))
    return pre, hook


def test_all_zero_rows_and_a_dead_layer(trained, val):
    model = train("silu", steps=60)[0]
    with torch.no_grad():
        model.ffns()[1].w_gate.weight.zero_()  # layer 1 is dead: s = silu(0) = 0, so h = 0 for every token
    handles = zero_rows_hook(model, token=int(val[0][0][0, 0]))
    try:
        curves = S.cett_curves(model, val, n_grid=SMALL_GRID)
        assert torch.isfinite(curves.cett).all()
        assert (curves.cett[1] == 0).all() and (curves.grid[1] == 0).all()
        f = S.ppl_p_sparsity(model, val, impl="fast", n_grid=SMALL_GRID, search="bisect")
        r = S.ppl_p_sparsity(model, val, impl="reference", n_grid=SMALL_GRID)
        assert f.cett == r.cett and f.thresholds == r.thresholds and f.ratios == r.ratios
        assert_valid_bracket(S.ppl_p_sparsity(model, val, n_grid=SMALL_GRID))
        assert f.thresholds[0][1] == 0.0  # degenerate grid {0}: the dead layer runs dense, its zeros inactive
        assert f.active_per_layer[0][1] == 0.0 and 0.0 < f.active_per_layer[0][0] < 1.0
        st = S.activation_stats(model, val, rule=S.zeros_rule(), per_neuron=True)
        assert st.active_per_layer[1] == 0.0 and st.dead_ratio() >= 0.5
    finally:
        for hd in handles:
            hd.remove()
    h = torch.zeros(3, 5)
    w = torch.randn(4, 5)
    assert S.cett_per_token(h, w, 1.0).tolist() == [0.0, 0.0, 0.0]
    vals, inc = S._curve_increments(h, w.t().contiguous(), w.norm(dim=0), torch.empty(1 << 10))
    assert (inc == 0).all() and (vals == 0).all()


def test_a_layer_of_equal_norms_has_cett_zero_at_its_single_candidate():
    """Every n_i equal and positive (h constant, W_down columns of equal norm): the grid degenerates to
    {n} like the dead layer's {0}, D = {i : n_i < n} is empty there, so the curve is 0 as the masked
    matmul says (not 1, as if every neuron sat in D)."""
    model, batches = random_model("silu")
    ffn = model.ffns()[0]
    with torch.no_grad():
        signs = torch.randn(ffn.w_down.weight.shape, generator=torch.Generator().manual_seed(0)).sign()
        ffn.w_down.weight.copy_(signs / 4)  # every column norm is sqrt(d_model / 16), bit for bit
    hd = ffn.h.register_forward_hook(lambda m, i, h: torch.full_like(h, 0.5))
    try:
        curves = S.cett_curves(model, batches, SMALL_GRID)
        rows, _ = S.dense_rows(model, batches)
    finally:
        hd.remove()
    n = S.neuron_norms(rows[0], ffn.down_col_norms())
    assert (n == n[0, 0]).all() and n[0, 0] > 0 and (curves.grid[0] == n[0, 0]).all()
    assert S.cett_per_token(rows[0], ffn.w_down.weight, curves.grid[0, 0]).max().item() == 0.0
    assert (curves.cett[0] == 0).all()


def test_padding_is_excluded_everywhere(trained):
    model = trained["relu"]
    seqs = markov(40, 5)
    keep = 20  # the last T - keep targets of every sequence are padding
    padded = [(x, y.masked_fill(torch.arange(T) >= keep, -1)) for x, y in batches_of(seqs, 16)]
    short = batches_of(seqs[:, :keep + 1], 16)  # causal model: the same tokens see the same context
    assert S.count_tokens(padded) == S.count_tokens(short) == 40 * keep
    cp, cs = S.cett_curves(model, padded, SMALL_GRID), S.cett_curves(model, short, SMALL_GRID)
    assert cp.n_tokens == cs.n_tokens and cp.dense_loss == pytest.approx(cs.dense_loss, abs=1e-6)
    torch.testing.assert_close(cp.grid, cs.grid, rtol=1e-6, atol=1e-7)
    # another sequence length rounds attention differently, so a neuron norm can cross a grid point: one
    # point of layer 1 moved by 1.0e-5 on one machine; feeding the padding rows into the curves moves it by 0.5
    torch.testing.assert_close(cp.cett, cs.cett, rtol=0, atol=1e-4)
    fp = S.ppl_p_sparsity(model, padded, impl="fast", n_grid=SMALL_GRID)
    fs = S.ppl_p_sparsity(model, short, impl="fast", n_grid=SMALL_GRID)
    assert_same_answer(fp, fs)
    st = S.activation_stats(model, padded, taus=fp.thresholds[0], per_token=True, per_neuron=True)
    assert st.n_tokens == 800 and int(st.token_count.sum()) == 800
    assert st.activation_ratio == pytest.approx(fp.activation_ratio[0], abs=1e-12)


def test_both_row_sorts_give_ascending_rows():
    """The fast curves sort every token's neuron norms: numpy on the CPU, torch on a GPU (its branch run here
    on the CPU); both give each row in ascending order, ties included."""
    n = torch.rand(50, 37, generator=torch.Generator().manual_seed(3)).mul_(8).floor_()  # many ties
    for use_numpy in (True, False):
        idx = S._argsort_rows(n, use_numpy)
        torch.testing.assert_close(n.gather(-1, idx), n.sort(dim=-1).values, rtol=0, atol=0)


def test_losses_are_token_weighted_over_unequal_batches(trained):
    """The loss of a pass is the sum of every valid token's NLL over their number (not a mean of batch means,
    the authors' convention): batches of 16, 16 and 5 sequences, one with padding, against a per-token oracle."""
    import torch.nn.functional as F

    model = trained["silu"]
    seqs = markov(37, 21)
    batches = batches_of(seqs, 16)
    batches[1] = (batches[1][0], batches[1][1].masked_fill(torch.arange(T) >= 9, -1))
    with torch.no_grad():
        nll = [F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")
               for x, y in batches]
    n = sum(int((y != -1).sum()) for _, y in batches)
    want = float(sum(nll)) / n
    assert n == 21 * T + 16 * 9 and S.evaluate(model, batches).loss == pytest.approx(want, rel=1e-6)
    assert S.cett_curves(model, batches, SMALL_GRID).dense_loss == pytest.approx(want, rel=1e-6)


def test_domain_counts_leave_padding_out(trained):
    """Per-domain token counts and neuron frequencies (Fig. 9) over valid tokens only: padding positions carry
    a domain id too, and counted they would divide the frequencies by too many tokens."""
    model = trained["relu"]
    seqs = markov(32, 8)
    dom = torch.zeros(32, T, dtype=torch.long)
    dom[:, ::3] = 1
    batches = [(x, y.masked_fill(torch.arange(T) >= 12, -1), d) for (x, y), d in
               zip(batches_of(seqs, 16), dom.split(16), strict=True)]
    st = S.activation_stats(model, batches, rule=S.zeros_rule(), per_neuron=True)
    valid = torch.arange(T) < 12
    assert int(st.domain_tokens.sum()) == st.n_tokens == 32 * 12
    assert st.domain_tokens.tolist() == [int((dom[:, valid] == k).sum()) for k in (0, 1)]
    seen = {}
    model.get_submodule("blocks.0.ffn.h").register_forward_hook(lambda mod, a, h: seen.setdefault("h", []).append(h))
    try:
        model.eval()
        with torch.no_grad():
            for x, _, _ in batches:
                model(x)
    finally:
        model.get_submodule("blocks.0.ffn.h")._forward_hooks.clear()
    h = torch.cat(seen["h"])  # (32, T, d_ff): exact zeros are inactive
    for k in (0, 1):
        mask = (dom == k) & valid
        want = (h[mask] != 0).sum(0)
        assert st.domain_neuron_active[k, 0].tolist() == want.tolist()


@pytest.mark.parametrize("shape", [(1, 1), (1, T)], ids=["single-token", "one-sequence"])
def test_single_token_and_single_sequence(shape, trained):
    model = trained["gelu"]
    seq = markov(1, 11)[:, :shape[1] + 1]
    batches = [(seq[:, :-1], seq[:, 1:])]
    f = S.ppl_p_sparsity(model, batches, impl="fast", n_grid=256, search="bisect")
    r = S.ppl_p_sparsity(model, batches, impl="reference", n_grid=256)
    assert f.cett == r.cett and f.thresholds == r.thresholds and f.ratios == r.ratios
    assert f.checkpoints[0].dense_loss == pytest.approx(r.checkpoints[0].dense_loss, abs=1e-6)
    assert_valid_bracket(S.ppl_p_sparsity(model, batches, n_grid=256))  # few tokens: a noisy ratio


def test_dense_statistics_lift_thresholds_and_masks_set_on_the_model(trained, val):
    """Thresholds and masks left on a model change neither its grid and curves nor the reference's rows
    and dense loss (layer 1 and the loss would see the sparsified layer 0), and they are restored after."""
    model = trained["silu"]
    clean, (rows, dense) = S.cett_curves(model, val, SMALL_GRID), S.dense_rows(model, val)
    kinds = ({}, {"rule": S.fat_rule(0.05)}, {"taus": [0.01, 0.01]})
    clean_stats = [S.activation_stats(model, val, **kw) for kw in kinds]
    taus, masks = [0.5, 0.5], [torch.arange(CFG["d_ff"]) % 2 == 0] * 2
    model.set_thresholds(taus)
    model.set_masks(masks)
    try:
        with_set, (rows2, dense2) = S.cett_curves(model, val, SMALL_GRID), S.dense_rows(model, val)
        assert torch.equal(with_set.grid, clean.grid) and torch.equal(with_set.cett, clean.cett)
        assert with_set.dense_loss == clean.dense_loss and dense2 == dense
        assert all(torch.equal(a, b) for a, b in zip(rows, rows2, strict=True))
        assert [f.threshold.item() for f in model.ffns()] == taus and all(f.mask is m for f, m in
                                                                          zip(model.ffns(), masks, strict=True))
        with torch.no_grad():  # the model's own forward is still sparse
            assert sum(model(x, y, reduction="sum")[1].item() for x, y in val) / S.count_tokens(val) > dense + 0.01
        for kw, b in zip(kinds, clean_stats, strict=True):  # activation_stats lifts them too
            a = S.activation_stats(model, val, **kw)
            assert a.loss == b.loss and a.active_per_layer == b.active_per_layer, kw
    finally:
        model.set_thresholds(None)
        model.set_masks(None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_non_float32_models_are_refused(dtype, val):
    """tau_l is bit-for-bit the model's threshold only in float32: the PPL-p% entry points refuse others."""
    model = random_model("silu")[0].to(dtype)
    calls = [lambda: S.ppl_p_sparsity(model, val, n_grid=256), lambda: S.cett_curves(model, val, 256),
             lambda: S.ppl_p_sparsity(model, val, impl="reference", n_grid=256), lambda: S.dense_rows(model, val),
             lambda: S.apply_cett([model], val, 0.1, n_grid=256)]
    for call in calls:
        with pytest.raises(ValueError, match=f"need a float32 model.*{str(dtype)}"):
            call()


def test_bad_inputs(trained, val):
    model = trained["silu"]
    with pytest.raises(TypeError, match="re-iterable"):
        S.cett_curves(model, (b for b in val))
    with pytest.raises(ValueError, match="no valid tokens"):
        S.cett_curves(model, [(val[0][0], torch.full_like(val[0][1], -1))])
    with pytest.raises(ValueError, match="impl"):
        S.ppl_p_sparsity(model, val, impl="slow")
    with pytest.raises(ValueError, match="impl must be"):  # not the reference run instead
        S.apply_cett([model], val, 0.1, impl="typo")
    with pytest.raises(ValueError, match="p must be"):
        S.ppl_p_sparsity(model, val, p=0)
    with pytest.raises(ValueError, match="c must be"):
        S.invert_cett(lambda i: 0.0, 8, -0.1)
    with pytest.raises(ValueError, match="p must be"):  # NaN fails every comparison: refused, not c = 0
        S.ppl_p_sparsity(model, val, p=math.nan, n_grid=256)
    with pytest.raises(ValueError, match="c must be"):  # not the top candidate
        S.invert_cett(lambda i: 0.0, 8, math.nan)
    diverged = copy.deepcopy(model)  # an inf weight: a clear error, not a NaN grid
    with torch.no_grad():
        diverged.ffns()[0].w_up.weight[0, 0] = math.inf
    with pytest.raises(ValueError, match="non-finite FFN activations"):
        S.cett_curves(diverged, val, n_grid=256)
    with pytest.raises(ValueError, match="not both"):
        S.activation_stats(model, val, taus=[0.1, 0.1], rule=S.zeros_rule())
    for impl in ("fast", "reference"):  # a one-point grid: a clear error (fast divided by zero in _bins)
        with pytest.raises(ValueError, match="n_grid must be >= 2"):
            S.ppl_p_sparsity(model, val, impl=impl, n_grid=1)
        with pytest.raises(ValueError, match="at least one checkpoint"):  # was a ZeroDivisionError
            S.ppl_p_sparsity([], val, impl=impl, n_grid=256)
        with pytest.raises(ValueError, match="no batches, or every target is -1"):
            S.ppl_p_sparsity(model, [], impl=impl, n_grid=256)


# ----------------------------------------------------------------------------- the search on c


def test_levels_and_bisection_cell():
    assert S._levels(1e-3) == 10 and S._levels(1e-6) == 20 and S._levels(0.5) == 1
    calls = []

    def f(j):
        calls.append(j)
        return math.exp(0.0100 * (j / 1024 / 0.3) ** 2)  # crosses 1.01 at c = 0.3 * sqrt(log(1.01) / 0.01)

    a, b = S._bisect(f, 10, 1.01)
    root = 0.3 * math.sqrt(math.log(1.01) / 0.01) * 1024
    assert a < root <= b and b - a == 1 and len(calls) == 10 and calls[:2] == [512, 256]


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("c_star", [0.01, 0.2, 0.77, 0.999])
def test_secant_search_finds_the_bisection_cell_with_fewer_probes(power, c_star):
    def ratio(j):
        return math.exp(min(math.log(1.01) * (j / 1024 / c_star) ** power, 50.0))

    probes = []
    got = S._secant_search(lambda j: probes.append(j) or ratio(j), 10, 1.01, 0.125)
    assert got == S._bisect(ratio, 10, 1.01)
    assert len(probes) <= 10 if c_star < 0.99 else len(probes) <= 12


@pytest.mark.parametrize("nan_from,c_star", [(300, 0.5), (600, 0.2), (40, 0.5)])
def test_nan_ratio_is_not_acceptable_in_either_search(nan_from, c_star):
    """A NaN mean ratio (a diverged sparse pass) counts as above the target in the bisection and in both
    phases of the secant search, so both end in the same cell and never report a c whose ratio is NaN."""
    def ratio(j):
        return math.nan if j >= nan_from else math.exp(math.log(1.01) * (j / 1024 / c_star) ** 2)

    a, b = S._bisect(ratio, 10, 1.01)
    assert S._secant_search(ratio, 10, 1.01, 0.125) == (a, b)
    assert b - a == 1 and b <= nan_from and ratio(a) < 1.01


def test_a_ratio_exactly_at_the_target_is_not_acceptable():
    """Only a ratio strictly below 1 + p/100 moves lo up (Algorithm 1): with ratio 1 + j/1024 and target 1.5
    the probe j = 512 hits the target exactly and must become hi, in the bisection and the secant search."""
    def ratio(j):
        return 1.0 + j / 1024  # exact in float64

    assert ratio(512) == 1.5 and S._bisect(ratio, 10, 1.5) == (511, 512)
    for c0 in (0.125, 0.5):
        assert S._secant_search(ratio, 10, 1.5, c0) == (511, 512)


def test_a_falling_secant_does_not_send_the_prediction_backwards():
    """A noisy pair of probes whose ratio falls as c grows gives a negative secant slope; the prediction
    then uses slope 2 (as for a single point) and moves from the latest probe towards the target."""
    yT = math.log(math.log(1.01))
    pts = [(math.log(0.1), math.log(math.log(1.006))), (math.log(0.2), math.log(math.log(1.004)))]
    x0, y0 = pts[-1]
    assert S._secant_estimate(pts, yT) == pytest.approx(math.exp(x0 + (yT - y0) / 2.0), rel=1e-12)
    assert S._secant_estimate(pts, yT) > 0.2


def test_the_secant_skips_a_partner_closer_than_min_log_step():
    """The slope runs from the latest probe to the latest earlier one more than MIN_LOG_STEP away in log c:
    a partner 0.5% away (noise) is skipped. Hand value: the line through (log .1, -5) and (log .201, -4.5)."""
    yT = math.log(math.log(1.01))
    pts = [(math.log(0.1), -5.0), (math.log(0.2), -3.0), (math.log(0.201), -4.5)]
    slope = (-4.5 - -5.0) / (math.log(0.201) - math.log(0.1))
    want = math.exp(min(math.log(0.201) + (yT - -4.5) / slope, 0.0))
    assert S._secant_estimate(pts, yT) == pytest.approx(want, rel=1e-12)


def test_skipped_sparse_passes_still_report_the_tested_c(trained, val):
    """Above the top of every curve the thresholds no longer change and the fast search reuses the earlier
    sparse pass; the checkpoint results it returns still carry the reported c (as apply_cett would)."""
    with reached(False):
        res = S.ppl_p_sparsity(trained["relu"], val, p=1e6, n_grid=SMALL_GRID)
    assert res.n_sparse_passes < len(res.trace)  # passes were reused
    assert [r.cett for r in res.checkpoints] == [res.cett] and res.cett == res.trace[-1][0]


def test_skipped_passes_are_keyed_on_every_checkpoints_thresholds(trained, val):
    """A sparse pass is skipped only when every checkpoint's thresholds repeat: here checkpoint 0 is dead
    (tau 0 in both layers at every c) and checkpoint 1 is not. Oracle: the reference, which skips nothing."""
    model = trained["silu"]
    dead = copy.deepcopy(model)
    with torch.no_grad():
        for f in dead.ffns():
            f.w_gate.weight.zero_()
    f = S.ppl_p_sparsity([dead, model], val, p=0.5, n_grid=SMALL_GRID)
    r = S.ppl_p_sparsity([dead, model], val, p=0.5, n_grid=SMALL_GRID, impl="reference")
    assert f.thresholds == r.thresholds and [c for c, _ in f.trace] == [c for c, _ in r.trace]
    assert [x for _, x in f.trace] == pytest.approx([x for _, x in r.trace], rel=1e-6)
    assert f.thresholds[0] == [0.0, 0.0] and len({x for _, x in f.trace}) > 2  # the ratio moves with c


def test_unreachable_target_is_flagged(trained, val):
    """A target no tested c reaches (hi = 1 never tested) gives reached = False and a warning naming the
    run and p; a reachable one gives reached = True and no warning."""
    model = trained["relu"]
    for impl in ("fast", "reference"):
        with pytest.warns(S.TargetNotReachedWarning, match=r"run x: PPL-1e\+06% not reached"):
            res = S.ppl_p_sparsity(model, val, p=1e6, tol=0.25, n_grid=SMALL_GRID, impl=impl, name="run x")
        assert not res.reached and res.bracket == (0.75, 1.0) and [c for c, _ in res.trace] == [0.5, 0.75]
        with reached(True):
            res = S.ppl_p_sparsity(model, val, p=1.0, tol=0.25, n_grid=SMALL_GRID, impl=impl, name="run x")
        assert res.reached and res.bracket[1] < 1.0


def test_a_search_whose_lower_end_stays_at_zero_reports_c_zero(trained, val):
    """When even the smallest tested c = 2^-m raises the ratio to the target (p = 1e-4%: target 1.000001),
    lo = 0 is never tested and the result is labelled c = 0: its thresholds, losses and activation must be
    those of c = 0 -- every layer at its grid minimum, every neuron kept, the ratio exactly 1 -- not those of
    the failing c = 2^-m. Oracle: the curves inverted at c = 0 and a dense pass with those thresholds."""
    model = trained["silu"]
    with reached(True):
        res = S.ppl_p_sparsity(model, val, p=1e-4, n_grid=SMALL_GRID)
    step = 2.0 ** -S._levels(S.TOL)
    assert res.bracket == (0.0, step) and res.cett == 0.0 and 0.0 not in dict(res.trace)
    assert dict(res.trace)[step] >= 1 + 1e-6  # the smallest tested c failed
    curves = S.cett_curves(model, val, SMALL_GRID)
    assert res.thresholds == [curves.grid[:, 0].tolist()] == [S.thresholds_from_cett(curves, 0.0)]
    dense = S.evaluate(model, val, taus=res.thresholds[0])
    assert res.mean_ratio == 1.0 and res.checkpoints[0].sparse_loss == dense.loss == curves.dense_loss
    assert res.activation_ratio == [dense.activation_ratio] == [1.0]  # SiLU: no exact zeros
    assert res.active_per_layer == [dense.active_per_layer] and res.checkpoints[0].cett == 0.0


def test_secant_search_stays_bounded_on_noise():
    rng = np.random.default_rng(0)
    for _ in range(50):
        walk = 1 + np.cumsum(rng.normal(0, 0.002, 1025))
        walk[0] = 1.0
        probes: list[int] = []

        def f(j, walk=walk, probes=probes):
            probes.append(j)
            return float(walk[j])

        a, b = S._secant_search(f, 10, 1.01, 0.125)
        assert b - a == 1 and (a == 0 or walk[a] < 1.01) and (b == 1024 or walk[b] >= 1.01)
        assert len(probes) <= 20


def test_secant_search_survives_a_nearly_flat_stretch():
    """Two probes with almost the same ratio (a flat stretch, then a rise) give a tiny secant slope: its
    root, far beyond c = 1, overflowed math.exp. The search ends in the bisection's cell instead."""
    js, rs = [0, 10, 70, 560, 1024], [1.0, 1.000771, 1.004927, 1.004933, 1.06]

    def f(j):
        return float(np.interp(j, js, rs))

    assert S._secant_search(f, 10, 1.037, 10 / 1024) == S._bisect(f, 10, 1.037) == (830, 831)


# ----------------------------------------------------------------------------- lists of checkpoints


def test_list_of_checkpoints_searched_jointly_and_c_applied_to_another(val):
    """The v4 App. E protocol's two parts (measure.measure_run): c searched on some checkpoints jointly, each
    with its own thresholds, then applied to another checkpoint."""
    model, states = train("relu", steps=120, snapshots=(40, 80, 120))

    def loader(sd):
        def load():
            m = Transformer(ModelConfig(**CFG, activation="relu"))
            m.load_state_dict(sd)
            return m

        return load

    ckpts = [loader(sd) for sd in states]
    found = S.ppl_p_sparsity(ckpts[1:], val, p=1.0, n_grid=SMALL_GRID)
    assert len(found.checkpoints) == 2 and {r.cett for r in found.checkpoints} == {found.cett}
    assert found.mean_ratio < 1.01 and len({tuple(r.taus) for r in found.checkpoints}) == 2
    ref = S.ppl_p_sparsity(ckpts[1:], val, p=1.0, impl="reference", n_grid=SMALL_GRID)
    assert_same_answer(found, ref)
    assert ref.n_dense_passes == ref.n_sparse_passes == 20
    first = S.apply_cett([ckpts[0]], val, found.cett, n_grid=SMALL_GRID)[0]
    again = S.apply_cett([ckpts[0]], val, found.cett, impl="reference", n_grid=SMALL_GRID)[0]
    assert first.cett == found.cett and tuple(first.taus) not in {tuple(r.taus) for r in found.checkpoints}
    assert again.taus == first.taus and again.sparse_loss == first.sparse_loss


def hand_ratio(model: Transformer, batches, taus: list[float]) -> float:
    """PPL ratio of one checkpoint under thresholds taus, from the model's own sparse forward."""
    n = S.count_tokens(batches)
    with torch.no_grad():
        dense = sum(model(x, y, reduction="sum")[1].item() for x, y in batches) / n
        with sparse(model, taus=taus):
            thin = sum(model(x, y, reduction="sum")[1].item() for x, y in batches) / n
    return math.exp(thin - dense)


def test_the_search_averages_the_ratio_over_checkpoints(trained, val):
    """Algorithm 1 on two checkpoints compares the *mean* of their PPL ratios with the target: at both ends
    of the final bracket the traced ratio is the mean of the ratios under each checkpoint's own reference
    thresholds, evaluated by the model's sparse forward."""
    models = [trained["relu"], trained["silu"]]
    res = S.ppl_p_sparsity(models, val, p=1.0, n_grid=SMALL_GRID)
    traced = dict(res.trace)
    for c in res.bracket:
        ratios = [hand_ratio(m, val, S.reference_thresholds(m, S.dense_rows(m, val)[0], c, SMALL_GRID))
                  for m in models]
        assert abs(ratios[0] - ratios[1]) > 1e-3  # the checkpoints differ: a max or a single one would not do
        assert traced[c] == pytest.approx(sum(ratios) / 2, rel=1e-6)
    assert traced[res.bracket[0]] < 1.01 <= traced[res.bracket[1]]


# ----------------------------------------------------------------------------- baselines and statistics


def test_threshold_rule_equals_the_models_sparse_forward(trained, val):
    model = trained["silu"]
    curves = S.cett_curves(model, val, SMALL_GRID)
    taus = S.thresholds_from_cett(curves, 0.2)
    cols = [ffn.down_col_norms() for ffn in model.ffns()]
    rule = lambda l, h, s, valid: ~(S.neuron_norms(h, cols[l]) < taus[l])
    a, b = S.evaluate(model, val, taus=taus), S.evaluate(model, val, rule=rule)
    assert a.loss == b.loss and a.active_per_layer == b.active_per_layer
    with sparse(model, taus=taus), torch.no_grad():
        manual = sum(model(x, y, reduction="sum")[1].item() for x, y in val) / S.count_tokens(val)
    assert a.loss == pytest.approx(manual, rel=1e-6)


def test_baselines(trained, val):
    model, d_ff = trained["relu"], CFG["d_ff"]
    dense = S.evaluate(model, val).loss
    nz = nonzero_share(model, val)
    pts = S.sweep_topk(model, val, [8, 40, d_ff])
    assert pts[0].activation_ratio == 8 / d_ff  # every token has at least 8 non-zero neurons
    assert pts[1].active_per_layer == pytest.approx(nonzero_share(model, val, topk=40), abs=1e-12)
    assert pts[2].active_per_layer == pytest.approx(nz, abs=1e-12)  # all kept: the non-zero ones count
    beyond = S.topk_point(model, val, d_ff + 5, dense_loss=dense)  # k > d_ff keeps every neuron
    assert beyond.active_per_layer == pytest.approx(nz, abs=1e-12)
    assert beyond.sparse_loss == pytest.approx(dense, abs=1e-6)
    assert pts[-1].sparse_loss == pytest.approx(dense, abs=1e-6) and pts[0].ppl_ratio > pts[1].ppl_ratio
    batch = S.topk_point(model, val, 8, per_batch=True, dense_loss=dense)
    assert batch.method == "topk_batch" and batch.activation_ratio == pytest.approx(8 / d_ff, abs=1e-9)
    st = S.activation_stats(model, val, rule=S.topk_rule(8, per_batch=True), per_token=True)
    per_tok = st.token_sum.sum(0)[st.token_count > 0] / st.token_count[st.token_count > 0]
    assert per_tok.std() > 0  # a token may keep more or fewer than k
    fat = S.sweep_fat(model, val, [0.0, 0.05, 0.5])
    assert fat[0].active_per_layer == pytest.approx(nz, abs=1e-12)
    assert fat[0].sparse_loss == pytest.approx(dense, abs=1e-6)
    assert fat[0].activation_ratio > fat[1].activation_ratio > fat[2].activation_ratio
    zeros = S.zeros_point(model, val, dense_loss=dense)
    assert zeros.sparse_loss == dense and zeros.ppl_ratio == 1.0 and zeros.ppl == math.exp(dense)
    assert zeros.active_per_layer == pytest.approx(nz, abs=1e-12)
    cett = S.sweep_cett(model, val, [0.0, 0.1, 0.3], n_grid=SMALL_GRID)
    assert cett[0].ppl_ratio == 1.0 and cett[0].activation_ratio > cett[1].activation_ratio > cett[2].activation_ratio
    # which neurons each baseline keeps: the k largest |s_i| per token, the k * n_tokens largest of the
    # batch, |s_i| >= eps (a rule keeping the smallest, or ranking |h_i|, has the same ratios above)
    for pt, keep in [(pts[0], lambda a: a >= a.sort(-1, descending=True).values[..., 7:8]),
                     (pts[1], lambda a: a >= a.sort(-1, descending=True).values[..., 39:40]),
                     (batch, lambda a: a >= a.flatten().sort(descending=True).values[8 * a[..., 0].numel() - 1]),
                     (fat[1], lambda a: a >= 0.05), (fat[2], lambda a: a >= 0.5)]:
        assert pt.sparse_loss == pytest.approx(hand_kept_loss(model, val, keep), rel=1e-6), (pt.method, pt.param)


def hand_kept_loss(model: Transformer, batches, keep) -> float:
    """Mean loss with h_i zeroed by a hook wherever keep(|s|) is False, s = act(W_gate x) read from the gate
    projection (no padding in ``batches``)."""
    gates, total, n = {}, 0.0, 0
    handles = [h for l, ffn in enumerate(model.ffns()) for h in (
        ffn.w_gate.register_forward_hook(lambda m, i, o, l=l: gates.__setitem__(l, o)),
        ffn.h.register_forward_hook(lambda m, i, h, l=l, ffn=ffn: h * keep(ffn.act(gates[l]).abs())))]
    try:
        with torch.no_grad():
            for x, y in batches:
                total += model(x, y, reduction="sum")[1].item()
                n += y.numel()
    finally:
        for hd in handles:
            hd.remove()
    return total / n


def test_baselines_rank_the_magnitude_of_signed_activations(trained, val):
    """SiLU gives negative s (down to -0.28): Top-k and FAT rank |s|, the exact-zero rule keeps every s != 0
    (by hand from the gate projection; a rule on signed s would drop the negative ones). With k = 64 of 80
    the kept set reaches below |s| = 0.28, where the sign matters."""
    model, d_ff = trained["silu"], CFG["d_ff"]
    top, fat, zeros = S.topk_point(model, val, 64), S.fat_point(model, val, 0.05), S.zeros_point(model, val)
    assert top.activation_ratio == pytest.approx(64 / d_ff, abs=1e-12)
    for pt, keep in [(top, lambda a: a >= a.sort(-1, descending=True).values[..., 63:64]),
                     (fat, lambda a: a >= 0.05), (zeros, lambda a: a != 0)]:
        assert pt.sparse_loss == pytest.approx(hand_kept_loss(model, val, keep), rel=1e-6), pt.method


def hand_batch_topk_loss(model: Transformer, batches, k: int) -> float:
    """Mean loss over valid targets with, per batch and layer, the k * n_valid largest |s_i| of the valid
    positions kept (ties aside: every |s| at or above the (k n_valid)-th largest) and padding left dense."""
    gates, valid, total = {}, {}, 0.0

    def keep(l, ffn, h):
        a, v = ffn.act(gates[l]).abs(), valid["v"]
        kth = a[v].flatten().sort(descending=True).values[k * int(v.sum()) - 1]
        return h * torch.where(v.unsqueeze(-1), a >= kth, True)

    handles = [h for l, ffn in enumerate(model.ffns()) for h in (
        ffn.w_gate.register_forward_hook(lambda m, i, o, l=l: gates.__setitem__(l, o)),
        ffn.h.register_forward_hook(lambda m, i, h, l=l, ffn=ffn: keep(l, ffn, h)))]
    try:
        with torch.no_grad():
            for x, y in batches:
                valid["v"] = y != -1
                total += model(x, y, reduction="sum")[1].item()
    finally:
        for hd in handles:
            hd.remove()
    return total / S.count_tokens(batches)


@pytest.mark.parametrize("per_batch", [False, True], ids=["per-token", "per-batch"])
def test_kept_zeros_are_not_counted_active(trained, val, per_batch):
    """A neuron kept with h_i = 0 adds nothing, so it is not counted active: Top-k with k above a ReLU
    token's non-zero neurons (it used to report k / d_ff, denser than the dense model), and thresholds of
    0 (a ReLU layer non-zero on under 1% of the pairs has the grid {0}; it used to count as fully active)."""
    model, d_ff = trained["relu"], CFG["d_ff"]
    k = 56
    got = S.topk_point(model, val, k, per_batch=per_batch, dense_loss=0.0).active_per_layer
    want = nonzero_share(model, val, topk=k, per_batch=per_batch)
    assert got == pytest.approx(want, abs=1e-12)
    assert max(want) < k / d_ff  # the case: some tokens have fewer than k non-zero neurons
    st = S.activation_stats(model, val, taus=[0.0] * CFG["n_layers"], per_neuron=True)
    assert st.active_per_layer == pytest.approx(nonzero_share(model, val), abs=1e-12)
    zeros = S.activation_stats(model, val, rule=S.zeros_rule(), per_neuron=True)
    assert torch.equal(st.neuron_active, zeros.neuron_active) and st.dead_ratio() == zeros.dead_ratio()


def test_batch_topk_keeps_k_per_valid_token_and_leaves_padding_dense(trained):
    """The authors' batch Top-k with the first targets of every sequence padded: k * n_valid pairs are kept
    per layer (ratio k / d_ff over valid tokens) and the padded positions stay dense (later tokens attend
    to them, so the loss tells)."""
    model, d_ff, k = trained["silu"], CFG["d_ff"], 8
    padded = [(x, y.masked_fill(torch.arange(T) < 6, -1)) for x, y in batches_of(markov(64, 13))]
    pt = S.topk_point(model, padded, k, per_batch=True)
    assert pt.activation_ratio == pytest.approx(k / d_ff, abs=1e-12)
    assert pt.sparse_loss == pytest.approx(hand_batch_topk_loss(model, padded, k), rel=1e-6)


def test_points_without_a_dense_loss_run_the_dense_pass(trained, val):
    """Top-k and FAT points given no dense_loss compute it with a pass without any rule (by hand here)."""
    model = trained["silu"]
    with torch.no_grad():
        dense = sum(model(x, y, reduction="sum")[1].item() for x, y in val) / S.count_tokens(val)
    for pt in (S.topk_point(model, val, 8), S.topk_point(model, val, 8, per_batch=True), S.fat_point(model, val, 0.5)):
        assert pt.sparse_loss > dense + 1e-3 and pt.dense_loss == pytest.approx(dense, rel=1e-6), pt.method


def test_domain_frequency_divides_by_each_domains_tokens():
    """Per domain, kept counts over that domain's own valid tokens (not all tokens); nan for an empty one."""
    active = torch.tensor([[[4, 0, 1]], [[3, 6, 0]]])  # (domains, layers, d_ff)
    st = S.ActivationStats(10, 0.0, active.sum((0, 2)).double(), 3, neuron_active=active.sum(0),
                           domain_neuron_active=active, domain_tokens=torch.tensor([4, 6]))
    assert st.domain_frequency().tolist() == [[[1.0, 0.0, 0.25]], [[0.5, 1.0, 0.0]]]
    st.domain_neuron_active, st.domain_tokens = torch.tensor([[[4, 6, 1]], [[0, 0, 0]]]), torch.tensor([10, 0])
    freq = st.domain_frequency()
    assert freq[0].tolist() == [[0.4, 0.6, 0.1]] and torch.isnan(freq[1]).all()


def test_activation_stats_per_token_neuron_and_domain(trained):
    model = trained["silu"]
    seqs = markov(64, 21)
    dom = (seqs[:, 1:] % 3 == 0).long()  # two "domains" per token
    batches = [(x, y, dom[i:i + 32]) for i, (x, y) in zip(range(0, 64, 32), batches_of(seqs), strict=True)]
    taus = S.ppl_p_sparsity(model, batches, n_grid=SMALL_GRID).thresholds[0]
    st = S.activation_stats(model, batches, taus=taus, per_token=True, per_neuron=True)
    n, L = 64 * T, CFG["n_layers"]
    assert st.n_tokens == n and int(st.token_count.sum()) == n
    assert st.token_sum.sum().item() / (n * L) == pytest.approx(st.activation_ratio, abs=1e-12)
    assert st.neuron_frequency().mean().item() == pytest.approx(st.activation_ratio, abs=1e-12)
    seen = st.token_count > 0
    ratio = st.token_ratio()
    assert torch.isnan(ratio[~seen]).all() and ((ratio[seen] >= 0) & (ratio[seen] <= 1)).all()
    # a token's ratio is its share of the kept (token, neuron) pairs over all layers: weighted by the counts,
    # they add up to the pass's activation ratio times its tokens
    assert np.nansum((ratio * st.token_count).numpy()) == pytest.approx(st.activation_ratio * n, rel=1e-12)
    assert st.domain_tokens.tolist() == [int((dom == 0).sum()), int((dom == 1).sum())]
    assert (st.domain_neuron_active.sum(0) == st.neuron_active).all()
    assert st.domain_frequency().shape == (2, L, CFG["d_ff"])
    assert 0.0 <= st.dead_ratio() <= 1.0 and st.dead_ratio(min_freq=2.0) == 1.0
    # attribution (the sums above hold for any permutation of ids or domains): a hook computes each
    # position's kept neurons under the model's own thresholds, binned by input id and by domain by hand
    token_sum, dom_active = torch.zeros(L, V, dtype=torch.float64), torch.zeros(2, L, CFG["d_ff"], dtype=torch.int64)
    where = {}
    hooks = [ffn.h.register_forward_hook(lambda m, i, h, l=l, ffn=ffn: where.__setitem__(
        l, h.abs() * ffn.w_down.weight.norm(dim=0) >= torch.tensor(taus[l], dtype=h.dtype)))
        for l, ffn in enumerate(model.ffns())]
    try:
        with sparse(model, taus=taus), torch.no_grad():
            for x, _, d in batches:
                model(x)
                for l in range(L):
                    token_sum[l] += torch.bincount(x.flatten(), where[l].double().mean(-1).flatten(), V)
                    for k in (0, 1):
                        dom_active[k, l] += where[l][d == k].sum(0)
    finally:
        for hd in hooks:
            hd.remove()
    assert torch.equal(st.token_count, torch.bincount(seqs[:, :-1].flatten(), minlength=V))
    torch.testing.assert_close(st.token_sum, token_sum, rtol=1e-12, atol=1e-9)
    assert torch.equal(st.domain_neuron_active, dom_active)


def host_counts(model, batches, taus=None, rule=None) -> dict:
    """activation_stats' counts as they were made before the counts stayed on the activations' device:
    every layer's (tokens, d_ff) kept mask copied to the host and added there, batch by batch."""
    L, d_ff = CFG["n_layers"], CFG["d_ff"]
    out = {"active": torch.zeros(L, dtype=torch.float64), "neuron_active": torch.zeros(L, d_ff, dtype=torch.int64),
           "domain_neuron_active": torch.zeros(0, L, d_ff, dtype=torch.int64),
           "domain_tokens": torch.zeros(0, dtype=torch.int64)}
    b = S._Batch()

    def on_h(l, ffn, h, s):
        if rule is not None:
            keep = rule(l, h, s, b.valid)
        elif ffn.threshold is not None:
            keep = ~(S.neuron_norms(h, ffn.down_col_norms()) < ffn.threshold.to(h.device, h.dtype))
        else:
            keep = torch.ones_like(h, dtype=torch.bool)
        kv = (keep & (h != 0))[b.valid]
        out["active"][l] += int(kv.sum())
        out["neuron_active"][l] += kv.sum(0).cpu()
        dom = b.domain[b.valid].cpu()
        n_dom = int(dom.max()) + 1 if dom.numel() else 0
        out["domain_neuron_active"] = S._grow(out["domain_neuron_active"], n_dom)
        out["domain_tokens"] = S._grow(out["domain_tokens"], n_dom)
        out["domain_neuron_active"][:, l].index_add_(0, dom, kv.long().cpu())
        if l == 0:
            out["domain_tokens"].index_add_(0, dom, torch.ones_like(dom))
        return None if rule is None else h * keep.to(h.dtype)

    with sparse(model, taus=taus):
        S._forward(model, batches, on_h, need_gate=rule is not None, state=b)
    return out


@pytest.mark.parametrize("how", ["taus", "zeros", "topk"])
def test_per_neuron_and_domain_counts_equal_the_host_side_counts(how, trained, monkeypatch):
    """The counts kept on the activations' device (a GPU's in the measurement) equal, bit for bit, those
    that were copied to the host and added there for every layer and batch (the committed measurements'
    way), with padding and three domains whose ids first appear in later batches; the (tokens, d_ff)
    masks are no longer copied to the host per layer: as many copies for three batches as for one."""
    model = trained["relu"]
    seqs = markov(48, 31)
    dom = torch.zeros(48, T, dtype=torch.long)
    dom[16:, ::2], dom[32:, ::5] = 1, 2
    valid = torch.arange(T) < 20 + torch.arange(48)[:, None] // 16  # padding, longer in earlier batches
    batches = [(x, y.masked_fill(~v, -1), d) for (x, y), v, d in
               zip(batches_of(seqs, 16), valid.split(16), dom.split(16), strict=True)]
    taus = S.ppl_p_sparsity(model, batches, n_grid=SMALL_GRID).thresholds[0] if how == "taus" else None
    rule = {"taus": None, "zeros": S.zeros_rule(), "topk": S.topk_rule(7)}[how]
    st = S.activation_stats(model, batches, taus=taus, rule=rule, per_neuron=True)
    want = host_counts(model, batches, taus=taus, rule=rule)
    assert st.domain_tokens.tolist() == [int(((dom == k) & valid).sum()) for k in range(3)]
    for name, value in want.items():
        got = getattr(st, name)
        assert got.device.type == "cpu" and got.dtype == value.dtype and torch.equal(got, value), name
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: copies.append(tuple(t.shape)) or real_cpu(t, *a, **k))
    for n in (1, 3):
        copies.clear()
        S.activation_stats(model, batches[:n], taus=taus, rule=rule, per_neuron=True)
        assert len(copies) == 4, copies  # active, neuron_active, domain_tokens, domain_neuron_active: once each


def test_dead_ratio_counts_neurons_active_on_fewer_than_the_threshold():
    """DEAD_FREQ = 1e-3: over 1000 tokens a neuron active once (frequency exactly 1e-3) is alive, one never
    active is dead; a threshold counts neurons strictly below it."""
    active = torch.tensor([[0, 1, 2, 1000], [0, 0, 1, 500]], dtype=torch.int64)
    st = S.ActivationStats(1000, 0.0, active.sum(1).double(), 4, neuron_active=active)
    assert S.DEAD_FREQ == 1e-3 and st.dead_ratio() == 3 / 8
    assert st.dead_ratio(min_freq=0.002) == 5 / 8 and st.dead_ratio(min_freq=0.0) == 0.0


def test_prefix_norm_scan_equals_the_cpu_loop():
    """The single-kernel scan used on GPUs gives the CPU loop's prefix norms up to float32 rounding, and
    both equal a float64 oracle (norms of cumulative sums of the sorted neuron outputs)."""
    g = torch.Generator().manual_seed(3)
    h, w_t = torch.randn(37, 24, generator=g), torch.randn(24, 16, generator=g)
    n = S.neuron_norms(h, w_t.norm(dim=1))
    order = n.argsort(dim=-1)
    buf = torch.empty(24 * 16 * 5)  # 5 tokens per block: several blocks
    loop = S._prefix_norms(h, w_t, order, buf, scan=False)
    scan = S._prefix_norms(h, w_t, order, buf, scan=True)
    outs = h.double().gather(1, order).unsqueeze(-1) * w_t.double()[order]  # (tokens, d_ff, d_model)
    oracle = outs.cumsum(1).norm(dim=-1)
    torch.testing.assert_close(loop.double(), oracle, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scan.double(), oracle, rtol=1e-5, atol=1e-5)


def test_precomputed_curves_give_the_same_answer_for_every_p(trained, val):
    """Curves computed once and handed to the search (as sparse inference does for p = 1, 5, 10) give
    exactly the answer of a search that computes them itself, with no dense pass of its own."""
    model = trained["relu"]
    curves = [S.cett_curves(model, val, SMALL_GRID)]
    for p in (1.0, 5.0):
        own = S.ppl_p_sparsity(model, val, p=p, n_grid=SMALL_GRID)
        given = S.ppl_p_sparsity(model, val, p=p, n_grid=SMALL_GRID, curves=curves)
        assert (given.cett, given.thresholds, given.ratios, given.trace) == (own.cett, own.thresholds, own.ratios,
                                                                             own.trace)
        assert own.n_dense_passes == 2 and given.n_dense_passes == 0
    with pytest.raises(ValueError, match="one CettCurves per checkpoint"):
        S.ppl_p_sparsity([model, model], val, n_grid=SMALL_GRID, curves=curves)
    with pytest.raises(ValueError, match="impl='fast'"):
        S.ppl_p_sparsity(model, val, n_grid=SMALL_GRID, impl="reference", curves=curves)


# ----------------------------------------------------------------------------- MoE points (paper Fig. 2)


def test_expert_points_match_a_hand_evaluation(val):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**CFG, activation="silu", n_experts=8, top_k=2)).eval()

    def hand_loss(k: int) -> float:  # one cross-entropy over every target, the FFNs routing k experts
        for ffn in model.ffns():
            ffn.top_k = k
        with torch.no_grad():
            logits = torch.cat([model(x)[0] for x, _ in val]).flatten(0, 1)
        for ffn in model.ffns():
            ffn.top_k = 2
        return float(torch.nn.functional.cross_entropy(logits.double(), torch.cat([y for _, y in val]).flatten()))

    model.set_active_experts(5)  # a model left routing another k: the points still start from the trained k
    pts = S.sweep_experts(model, val, [1, 2, 5, 8])
    assert [p.method for p in pts] == ["moe"] * 4 and [p.param for p in pts] == [1, 2, 5, 8]
    for p in pts:
        assert p.sparse_loss == pytest.approx(hand_loss(int(p.param)), rel=1e-5)
        assert p.dense_loss == pytest.approx(hand_loss(2), rel=1e-5)  # the MoE as trained
        assert p.activation_ratio == pytest.approx(p.param / 8)
        assert p.active_per_layer == [p.param / 8] * 2
    assert pts[1].ppl_ratio == pytest.approx(1.0)
    assert len({round(p.sparse_loss, 6) for p in pts}) == 4  # k changes the model's output
    assert all(f.top_k == 2 for f in model.ffns())  # restored
    model.set_active_experts(3)
    assert S.expert_point(model, val, 1).dense_loss == pytest.approx(hand_loss(2), rel=1e-5)
