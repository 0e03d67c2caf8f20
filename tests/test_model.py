"""Tests for sparsinglaw.model: every check compares against an independent hand-written oracle."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from sparsinglaw.model import (
    ACTIVATIONS,
    GatedFFN,
    ModelConfig,
    RMSNorm,
    Transformer,
    apply_rotary,
    flops_per_token,
    get_activation,
    num_params_from_config,
    register_activation,
    registered_activations,
    sparse,
    zeroes_negatives,
)

TINY = ModelConfig(vocab_size=97, d_model=32, n_layers=2, head_dim=8, d_ff=80, activation="silu",
                   seq_len=32, dim_model_base=16)


def make(cfg: ModelConfig = TINY, seed: int = 0, double: bool = True) -> Transformer:
    """A seeded model whose RMSNorm weights are drawn too (fresh ones are all 1: an oracle that left them
    out would still agree)."""
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, RMSNorm):
                mod.weight.uniform_(0.5, 1.5)
    return m.double() if double else m


def tokens(B: int = 2, T: int = 16, vocab: int = TINY.vocab_size, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def rmsnorm_oracle(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


# ----------------------------------------------------------------------------- shapes, causality, sizes


def test_shapes_and_causality():
    m, idx = make(), tokens()
    logits, loss = m(idx)
    assert logits.shape == (2, 16, TINY.vocab_size) and loss is None
    t = 9
    idx2 = idx.clone()
    idx2[:, t:] = (idx2[:, t:] + 1) % TINY.vocab_size
    logits2, _ = m(idx2)
    torch.testing.assert_close(logits2[:, :t], logits[:, :t], rtol=0, atol=1e-12)
    assert (logits2[:, t:] - logits[:, t:]).abs().max() > 1e-3  # the future did change
    with pytest.raises(ValueError, match="seq_len"):
        m(tokens(T=TINY.seq_len + 1))


def test_num_params_matches_hand_formula():
    L, d, f, V = TINY.n_layers, TINY.d_model, TINY.d_ff, TINY.vocab_size
    hand = L * (4 * d * d + 3 * d * f + 2 * d) + d
    assert hand == 2 * (4096 + 7680 + 64) + 32 == 23712
    m = make()
    assert m.num_params() == m.num_params(non_embedding=True) == hand == num_params_from_config(TINY)
    assert m.num_params(non_embedding=False) == hand + V * d == num_params_from_config(TINY, False)
    cfg = dataclasses.replace(TINY, d_model=24, d_ff=56, n_layers=3, head_dim=12)
    assert Transformer(cfg).num_params() == num_params_from_config(cfg)


def test_flops_per_token_by_hand():
    # N_matmul = 2 * (4*32^2 + 3*32*80) = 23552; 6*23552 + 6*32*97 + 12*2*32*32 = 141312 + 18624 + 24576
    assert flops_per_token(TINY) == 184512.0
    assert make().flops_per_token() == 184512.0
    assert make().flops_per_token(seq_len=16) == flops_per_token(TINY, seq_len=16) == 184512.0 - 12288.0


def test_config_validation():
    with pytest.raises(ValueError, match="must divide"):
        Transformer(dataclasses.replace(TINY, head_dim=12))
    with pytest.raises(ValueError, match="must be even"):  # rotary rotates pairs: not a shape error later
        Transformer(dataclasses.replace(TINY, head_dim=1))
    for f in ("head_dim", "d_model", "n_layers", "d_ff", "vocab_size", "seq_len", "dim_model_base"):
        with pytest.raises(ValueError, match=f"{f}=0 must be a positive integer"):  # not a ZeroDivisionError
            Transformer(dataclasses.replace(TINY, **{f: 0}))
    with pytest.raises(ValueError, match=r"d_ff=64\.5 must be a positive integer"):
        Transformer(dataclasses.replace(TINY, d_ff=64.5))
    assert TINY.n_heads == 4 and TINY.width_mult == 2.0 and TINY.width_depth_ratio == 16.0


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "name, oracle",
    [
        ("relu", lambda v: max(v, 0.0)),
        ("silu", lambda v: v / (1.0 + math.exp(-v))),
        ("gelu", lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))),
        ("gelu_tanh", lambda v: 0.5 * v * (1.0 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))),
        ("relu2", lambda v: max(v, 0.0) ** 2),
    ],
)
def test_activation_formulas(name, oracle):
    x = torch.linspace(-4, 4, 41, dtype=torch.float64)
    want = torch.tensor([oracle(v) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(get_activation(name)(x), want, rtol=1e-12, atol=1e-12)


def test_gelu_exact_differs_from_tanh():
    x = torch.tensor([-2.5, -1.3, 0.7], dtype=torch.float64)
    assert (ACTIVATIONS["gelu"](x) - ACTIVATIONS["gelu_tanh"](x)).abs().max() > 1e-5


def test_unknown_activation_names_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'nope'") as e:
        Transformer(dataclasses.replace(TINY, activation="nope"))
    for name in ("relu", "silu", "gelu", "gelu_tanh", "relu2"):
        assert name in str(e.value)


def test_relu_like_activations_are_told_by_their_exact_zeros():
    """ReLU and ReLU^2 zero every negative input, so the measurement reports their exact-zero sparsity too
    (it asked for the name "relu", leaving ReLU^2's zeros unmeasured); the smooth ones, and gelu_tanh, whose
    float32 output is exactly 0 only far below zero, do not; a registered activation is probed the same way."""
    assert [zeroes_negatives(a) for a in ("relu", "relu2", "silu", "gelu", "gelu_tanh")] == [True, True, False,
                                                                                             False, False]
    assert (get_activation("gelu_tanh")(torch.tensor([-10.0])) == 0).all()  # why the probe stays near zero
    register_activation("test_step", lambda x: (x > 0) * x)
    register_activation("test_leaky", lambda x: torch.nn.functional.leaky_relu(x, 0.01))
    try:
        assert zeroes_negatives("test_step") and not zeroes_negatives("test_leaky")
    finally:
        ACTIVATIONS.pop("test_step"), ACTIVATIONS.pop("test_leaky")


def test_register_activation_is_used_by_the_model():
    register_activation("test_abs", torch.abs)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_activation("test_abs", torch.abs)
        ffn = GatedFFN(dataclasses.replace(TINY, activation="test_abs")).double()
        x = torch.randn(3, TINY.d_model, dtype=torch.float64)
        want = ((x @ ffn.w_gate.weight.T).abs() * (x @ ffn.w_up.weight.T)) @ ffn.w_down.weight.T
        torch.testing.assert_close(ffn(x), want)
    finally:
        ACTIVATIONS.pop("test_abs")


def test_registered_activations_reach_the_workers_or_the_runs_stay_here(capsys):
    """A registered activation was unknown in run_parallel's spawned workers (they reload the profile: "unknown
    activation"); now an importable one is registered there, and one that cannot be sent (a lambda) makes
    the runs go one by one in this process, with a note."""
    from sparsinglaw.runs import run_parallel

    register_activation("test_abs", torch.abs)
    try:
        run_parallel(get_activation, [("test_abs",), ("test_abs",)], jobs=2, what="probe")  # raised in a worker
        assert capsys.readouterr().err == ""
        register_activation("test_abs", lambda x: x.abs(), overwrite=True)
        seen = []
        run_parallel(lambda n: seen.append((os.getpid(), get_activation(n))), [("test_abs",), ("relu",)], jobs=2,
                     what="probe")
        assert [(pid, fn) for pid, fn in seen] == [(os.getpid(), ACTIVATIONS["test_abs"]), (os.getpid(), F.relu)]
        assert "note: probe: the registered activation(s) test_abs cannot reach worker processes" in \
            capsys.readouterr().err
        ACTIVATIONS.pop("test_abs")
        register_activation("relu", torch.abs, overwrite=True)  # a built-in name replaced reaches them too
        assert registered_activations() == {"relu": torch.abs}
        run_parallel(_relu_is_abs, [(), ()], jobs=2, what="probe")
    finally:
        ACTIVATIONS.pop("test_abs", None)
        ACTIVATIONS["relu"] = F.relu
    assert registered_activations() == {}


def test_an_activation_of_a_module_loaded_by_path_stays_in_this_process(tmp_path, capsys):
    """A module loaded from a file path (importlib, as a notebook may) pickles its functions by reference, but
    a spawned worker cannot import it: the pool broke at start-up (BrokenProcessPool); now the runs go one
    by one here, with the note."""
    import importlib.util
    import sys

    from sparsinglaw.runs import run_parallel

    (tmp_path / "myacts_by_path.py").write_text("import torch\n\ndef sq_relu(x):\n    return torch.relu(x) ** 2\n")
    spec = importlib.util.spec_from_file_location("myacts_by_path", tmp_path / "myacts_by_path.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["myacts_by_path"] = mod
    register_activation("test_sq", mod.sq_relu)
    try:
        seen = []
        run_parallel(lambda n: seen.append(get_activation(n)), [("test_sq",), ("test_sq",)], jobs=2, what="probe")
        assert seen == [mod.sq_relu] * 2
        assert "the registered activation(s) test_sq cannot reach worker processes" in capsys.readouterr().err
    finally:
        ACTIVATIONS.pop("test_sq")
        sys.modules.pop("myacts_by_path")


def _relu_is_abs() -> None:
    assert get_activation("relu") is torch.abs, get_activation("relu")


# ----------------------------------------------------------------------------- hook point


def test_hooked_h_equals_hand_computation():
    m, idx = make(), tokens()
    blk = m.blocks[1]
    seen = {}
    blk.norm2.register_forward_pre_hook(lambda mod, args: seen.__setitem__("pre_norm", args[0]))
    blk.ffn.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    m.get_submodule("blocks.1.ffn.h").register_forward_hook(lambda mod, a, out: seen.__setitem__("h", out))
    m(idx)
    x = rmsnorm_oracle(seen["pre_norm"], blk.norm2.weight, TINY.norm_eps)
    torch.testing.assert_close(seen["x"], x)  # the FFN input is the RMS-normed residual stream
    want = F.silu(x @ blk.ffn.w_gate.weight.T) * (x @ blk.ffn.w_up.weight.T)  # Eq. 1-2
    torch.testing.assert_close(seen["h"], want)
    assert m.hook_names() == ["blocks.0.ffn.h", "blocks.1.ffn.h"]
    assert [f is b.ffn for f, b in zip(m.ffns(), m.blocks, strict=True)] == [True, True]


def test_the_hook_point_sees_the_dense_h_while_thresholds_are_set():
    """With thresholds set the hook point still sees the dense h (module docstring): the thresholds zero
    neurons after it, so the FFN's output changes while the hooked h does not."""
    m, idx = make(), tokens()
    seen = {}
    m.get_submodule("blocks.0.ffn.h").register_forward_hook(lambda mod, a, h: seen.setdefault("h", []).append(h))
    m.blocks[0].ffn.register_forward_hook(lambda mod, a, y: seen.setdefault("y", []).append(y))
    with torch.no_grad():
        m(idx)
        norms = (seen["h"][0].abs() * m.blocks[0].ffn.w_down.weight.norm(dim=0)).flatten()
        with sparse(m, taus=[float(norms.median())] * TINY.n_layers):
            m(idx)
    torch.testing.assert_close(seen["h"][1], seen["h"][0], rtol=0, atol=0)
    assert (seen["y"][1] - seen["y"][0]).abs().max() > 1e-3  # about half of the neurons were zeroed


def test_hook_returning_zeros_zeroes_the_ffn():
    m, idx = make(), tokens()
    out = {}
    m.blocks[0].ffn.h.register_forward_hook(lambda mod, a, h: torch.zeros_like(h))
    m.blocks[0].ffn.register_forward_hook(lambda mod, a, y: out.__setitem__("y", y))
    logits, _ = m(idx)
    assert out["y"].abs().max() == 0
    ref = make()  # same seed, same weights, no hooks; its first FFN silenced by a zero W_down
    ref.blocks[0].ffn.w_down.weight.data.zero_()
    torch.testing.assert_close(logits, ref(idx)[0], rtol=0, atol=0)
    assert (logits - make()(idx)[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- sparsity controls


def threshold_oracle(ffn: GatedFFN, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop over neurons: keep h_i * W_down[:, i] when |h_i| * ||W_down[:, i]|| >= tau."""
    Wg, Wu, Wd = ffn.w_gate.weight, ffn.w_up.weight, ffn.w_down.weight
    h = ffn.act(x @ Wg.T) * (x @ Wu.T)
    y = torch.zeros(*x.shape[:-1], Wd.shape[0], dtype=x.dtype)
    active = torch.zeros_like(h, dtype=torch.bool)
    for i in range(Wd.shape[1]):
        col = Wd[:, i]
        col_norm = math.sqrt(sum(v * v for v in col.tolist()))
        keep = h[..., i].abs() * col_norm >= tau
        active[..., i] = keep
        y += torch.where(keep, h[..., i], 0.0)[..., None] * col
    return y, active


def test_down_col_norms():
    ffn = make().blocks[0].ffn
    W = ffn.w_down.weight
    want = torch.tensor([math.sqrt(sum(v * v for v in W[:, i].tolist())) for i in range(W.shape[1])],
                        dtype=W.dtype)
    assert W.shape == (TINY.d_model, TINY.d_ff)
    torch.testing.assert_close(ffn.down_col_norms(), want)


def test_threshold_intermediate_matches_neuron_loop():
    ffn = make().blocks[0].ffn
    x = torch.randn(4, 5, TINY.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = ffn.act(ffn.w_gate(x)) * ffn.w_up(x)
        n = (h.abs() * ffn.down_col_norms()).flatten().sort().values
    mid = n.numel() // 2
    tau = float(n[mid - 1] + n[mid]) / 2  # between two neuron norms, away from rounding ties
    want, active = threshold_oracle(ffn, x, tau)
    assert 0.3 < active.double().mean() < 0.7  # the threshold really splits the neurons
    ffn.threshold = torch.tensor(tau, dtype=torch.float64)
    torch.testing.assert_close(ffn(x), want)
    ffn.threshold = None
    assert (ffn(x) - want).abs().max() > 1e-4


def test_threshold_boundary_keeps_equal_norm():
    ffn = make().blocks[0].ffn
    x = torch.randn(3, TINY.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        h = ffn.act(ffn.w_gate(x)) * ffn.w_up(x)
        n = h.abs() * ffn.down_col_norms()
    t, i = divmod(int(n.argmax()), TINY.d_ff)
    ffn.threshold = n.max().detach().clone()  # tau = the largest norm: only that neuron stays (n_i >= tau)
    want = torch.zeros(3, TINY.d_model, dtype=torch.float64)
    want[t] = h[t, i] * ffn.w_down.weight[:, i]
    torch.testing.assert_close(ffn(x), want, rtol=1e-12, atol=1e-15)


def test_threshold_zero_is_bit_identical_and_huge_is_no_ffn():
    m, idx = make(double=False), tokens()
    dense, _ = m(idx)
    for f in m.ffns():
        f.threshold = torch.tensor(0.0)
    assert torch.equal(m(idx)[0], dense)
    m.set_thresholds([1e30, 1e30])
    ref = copy.deepcopy(m)
    ref.set_thresholds(None)
    for f in ref.ffns():
        f.w_down.weight.data.zero_()
    torch.testing.assert_close(m(idx)[0], ref(idx)[0], rtol=0, atol=0)
    assert (m(idx)[0] - dense).abs().max() > 1e-3
    m.set_thresholds([0.0, -1.0])
    assert [f.threshold for f in m.ffns()] == [None, None]


def test_model_thresholds_match_hook_oracle():
    m, idx = make(), tokens()
    taus = [0.02, 0.05]
    m.set_thresholds(taus)
    sparse_logits, _ = m(idx)
    ref = make()  # same seed, same weights; zero inactive neurons from a hook instead
    counts = []
    for ffn, tau in zip(ref.ffns(), taus, strict=True):
        col = torch.sqrt((ffn.w_down.weight**2).sum(0))

        def zero_inactive(mod, args, h, col=col, tau=tau):
            keep = h.abs() * col >= tau
            counts.append(keep.double().mean().item())
            return h * keep

        ffn.h.register_forward_hook(zero_inactive)
    torch.testing.assert_close(sparse_logits, ref(idx)[0])
    assert all(0.05 < c < 0.95 for c in counts), counts  # both layers genuinely sparse


def test_masks_match_zeroed_columns():
    m, idx = make(), tokens()
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(TINY.d_ff, generator=g) < 0.5, None]
    m.set_masks(masks)
    ref = make()
    ref.blocks[0].ffn.w_down.weight.data[:, ~masks[0]] = 0
    torch.testing.assert_close(m(idx)[0], ref(idx)[0])
    with pytest.raises(ValueError, match="expected shape"):
        m.set_masks([torch.ones(3), None])
    with pytest.raises(ValueError, match="one per layer"):
        m.set_thresholds([0.1])
    with pytest.raises(ValueError, match=r"taus\[0\]: threshold is NaN"):  # NaN < n is False: it would run dense
        m.set_thresholds([math.nan, 0.1])


def test_sparse_context_restores_previous_state():
    m, idx = make(), tokens()
    m.set_thresholds([0.01, 0.0])
    before, _ = m(idx)
    mask = torch.zeros(TINY.d_ff, dtype=torch.bool)
    with sparse(m, taus=[0.05, 0.05], masks=[None, mask]):
        assert float(m.blocks[1].ffn.threshold) == 0.05 and m.blocks[1].ffn.mask is mask
        inside, _ = m(idx)
    assert (inside - before).abs().max() > 1e-3
    assert float(m.blocks[0].ffn.threshold) == 0.01 and m.blocks[1].ffn.threshold is None
    assert all(f.mask is None for f in m.ffns())
    assert torch.equal(m(idx)[0], before)
    with pytest.raises(RuntimeError), sparse(m):  # restored on error too; sparse(m) = dense inside
        assert all(f.threshold is None for f in m.ffns())
        raise RuntimeError
    assert float(m.blocks[0].ffn.threshold) == 0.01
    assert "blocks.0.ffn.threshold" not in m.state_dict()


# ----------------------------------------------------------------------------- attention and rotary


def rotation_matrix(pos: int, head_dim: int, theta: float) -> torch.Tensor:
    """Half-split RoPE as an explicit matrix: pair (j, j + hd/2) rotated by pos * theta^(-2j/hd)."""
    R, half = torch.zeros(head_dim, head_dim, dtype=torch.float64), head_dim // 2
    for j in range(half):
        a = pos * theta ** (-2 * j / head_dim)
        R[j, j], R[j, j + half], R[j + half, j], R[j + half, j + half] = (
            math.cos(a), -math.sin(a), math.sin(a), math.cos(a))
    return R


def test_attention_matches_slow_oracle():
    m = make()
    attn, B, T, d, hd = m.blocks[0].attn, 2, 7, TINY.d_model, TINY.head_dim
    x = torch.randn(B, T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cos, sin = m.rotary(T)
    got = attn(x, cos, sin)
    Wq, Wk, Wv = attn.qkv.weight.split(d, 0)
    y = torch.zeros(B, T, d, dtype=torch.float64)
    for b in range(B):
        for h in range(TINY.n_heads):
            sl = slice(h * hd, (h + 1) * hd)
            q = [rotation_matrix(t, hd, TINY.rope_theta) @ (Wq[sl] @ x[b, t]) for t in range(T)]
            k = [rotation_matrix(t, hd, TINY.rope_theta) @ (Wk[sl] @ x[b, t]) for t in range(T)]
            for t in range(T):
                scores = torch.stack([q[t] @ k[s] / math.sqrt(hd) for s in range(t + 1)])
                p = torch.exp(scores - scores.max())
                p = p / p.sum()
                y[b, t, sl] = sum(p[s] * (Wv[sl] @ x[b, s]) for s in range(t + 1))
    torch.testing.assert_close(got, y @ attn.proj.weight.T)


def test_rotary_is_relative():
    m = make()
    cos, sin = m.rotary(TINY.seq_len)
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(TINY.head_dim, generator=g).double(), torch.randn(TINY.head_dim, generator=g).double()

    def dot(mpos, npos):
        return float(apply_rotary(q, cos[mpos], sin[mpos]) @ apply_rotary(k, cos[npos], sin[npos]))

    assert dot(5, 2) == pytest.approx(dot(20, 17), rel=1e-5, abs=1e-6)
    assert dot(3, 3) == pytest.approx(dot(0, 0), rel=1e-5) == pytest.approx(float(q @ k), rel=1e-5)
    assert abs(dot(5, 2) - dot(5, 4)) > 1e-3


# ----------------------------------------------------------------------------- muP knobs


def test_full_forward_matches_hand_composition():
    m, idx = make(), tokens()
    rs = TINY.scale_depth / math.sqrt(TINY.n_layers)
    assert m.blocks[0].res_scale == pytest.approx(1.4 / math.sqrt(2))
    cos, sin = m.rotary(idx.size(1))
    x = m.embed.weight[idx] * 12.0
    for b in m.blocks:
        x = x + rs * b.attn(rmsnorm_oracle(x, b.norm1.weight, 1e-5), cos, sin)
        x = x + rs * b.ffn(rmsnorm_oracle(x, b.norm2.weight, 1e-5))
    logits = (rmsnorm_oracle(x, m.norm.weight, 1e-5) / (32 / 16)) @ m.embed.weight.T
    torch.testing.assert_close(m(idx)[0], logits)


def test_logits_scale_with_inverse_width_mult():
    a = make()
    b = Transformer(dataclasses.replace(TINY, dim_model_base=64)).double().eval()
    b.load_state_dict(a.state_dict())
    idx = tokens()
    # width_mult 2.0 vs 0.5: same hidden state, logits differ by the factor 2.0 / 0.5 = 4
    torch.testing.assert_close(b(idx)[0], 4.0 * a(idx)[0])


def test_param_groups_mup():
    m = make()
    groups = m.param_groups(lr=0.01, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}
    by = {g["name"]: g for g in groups}
    assert (by["matrix"]["lr"], by["matrix"]["weight_decay"]) == (0.01 / 2.0, 0.1)
    assert (by["embedding"]["lr"], by["embedding"]["weight_decay"]) == (0.01, 0.1)
    assert (by["norm"]["lr"], by["norm"]["weight_decay"]) == (0.01, 0.0)
    assert all(g["base_lr"] == g["lr"] for g in groups)
    assert all(p.ndim == 2 for p in by["matrix"]["params"]) and len(by["matrix"]["params"]) == 2 * 5
    assert len(by["norm"]["params"]) == 2 * 2 + 1 and by["embedding"]["params"] == [m.embed.weight]
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


# ----------------------------------------------------------------------------- loss and init


def test_loss_reductions_and_ignore_index():
    m, idx = make(), tokens()
    targets = tokens(seed=2)
    targets[0, :5] = -1
    logits, mean = m(idx, targets)
    _, per = m(idx, targets, reduction="none")
    assert per.shape == targets.shape and per.dtype == torch.float64
    keep = targets != -1
    assert torch.all(per[~keep] == 0)
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(per[keep], nll[keep])
    torch.testing.assert_close(mean, per[keep].mean())
    torch.testing.assert_close(m(idx, targets, reduction="sum")[1], per.sum())


def test_loss_float32_under_autocast():
    m, idx = make(double=False), tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = m(idx, tokens(seed=2))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(m(idx, tokens(seed=2))[1].item(), rel=0.05)


def test_init_is_seeded_with_mup_stds():
    a, b, c = make(seed=0, double=False), make(seed=0, double=False), make(seed=1, double=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])
    cfg = dataclasses.replace(TINY, vocab_size=512, d_model=64, d_ff=160, dim_model_base=256)
    torch.manual_seed(0)
    m = Transformer(cfg)  # as initialised (make() draws the norm weights)
    assert m.embed.weight.std().item() == pytest.approx(0.1, rel=0.03)
    w = torch.cat([p.flatten() for n, p in m.named_parameters() if n.startswith("blocks.") and p.ndim == 2])
    assert w.std().item() == pytest.approx(0.1 / math.sqrt(64 / 256), rel=0.03)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in m.named_parameters() if "norm" in n)


# ----------------------------------------------------------------------------- mixture of experts

MOE = dataclasses.replace(TINY, d_ff=80, n_experts=8, top_k=2)


@torch.no_grad()
def moe_oracle(ffn: GatedFFN, x: torch.Tensor, k: int) -> torch.Tensor:
    """Token by token and expert by expert: softmax router, top-k experts, weights renormalised over them,
    each expert a gated FFN on its own slice of neurons."""
    E = ffn.n_experts
    width = ffn.w_gate.weight.shape[0] // E
    act = ffn.act
    out = torch.zeros_like(x)
    flat, oflat = x.reshape(-1, x.shape[-1]), out.view(-1, x.shape[-1])
    for t in range(flat.shape[0]):
        xt = flat[t]
        p = torch.softmax(ffn.router.weight @ xt, dim=0)
        chosen = sorted(range(E), key=lambda e: -float(p[e]))[:k]
        norm = sum(float(p[e]) for e in chosen)
        for e in chosen:
            sl = slice(e * width, (e + 1) * width)
            h = act(ffn.w_gate.weight[sl] @ xt) * (ffn.w_up.weight[sl] @ xt)
            oflat[t] += float(p[e]) / norm * (ffn.w_down.weight[:, sl] @ h)
    return out


@torch.no_grad()
def test_moe_ffn_matches_expert_loop_oracle():
    m = make(MOE)
    ffn = m.blocks[0].ffn
    x = torch.randn(2, 5, MOE.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for k in (1, 2, 8):
        ffn.top_k = k
        torch.testing.assert_close(ffn(x), moe_oracle(ffn, x, k), rtol=1e-9, atol=1e-12)


def test_moe_unrouted_neurons_are_exact_zeros_at_the_hook():
    m = make(MOE)
    seen = []
    m.blocks[1].ffn.h.register_forward_hook(lambda mod, i, o: seen.append(o))
    for k in (1, 2, 5):
        m.set_active_experts(k)
        seen.clear()
        m(tokens())
        share = float((seen[0] != 0).double().mean())
        assert share == pytest.approx(k / MOE.n_experts)  # silu is nonzero off a measure-zero set
    m.set_active_experts(None)
    assert all(f.top_k == MOE.top_k for f in m.ffns())
    with pytest.raises(ValueError, match=r"in \[1, 8\]"):
        m.set_active_experts(9)
    with pytest.raises(ValueError, match="dense"):
        make().set_active_experts(1)


def test_moe_aux_loss_is_switch_balance_loss_in_training_only():
    m = make(MOE)
    x, y = tokens(), tokens(seed=2)
    _, ce = m(x, y)  # eval mode: cross-entropy only
    m.train()
    _, total = m(x, y)
    # oracle: for each layer, the inputs of its FFN, then E * sum_e f_e P_e by loops
    inputs = []
    hooks = [b.ffn.register_forward_hook(lambda mod, i, o: inputs.append(i[0])) for b in m.blocks]
    m(x, y)
    for h in hooks:
        h.remove()
    E, k = MOE.n_experts, MOE.top_k
    per_layer = []
    for ffn, xin in zip(m.ffns(), inputs, strict=True):
        flat = xin.detach().reshape(-1, MOE.d_model)
        probs = torch.softmax(flat @ ffn.router.weight.detach().T, dim=-1)
        counts = [0] * E
        for t in range(flat.shape[0]):
            for e in sorted(range(E), key=lambda e: -float(probs[t, e]))[:k]:
                counts[e] += 1
        f = [c / (flat.shape[0] * k) for c in counts]
        P = probs.mean(0)
        per_layer.append(E * sum(f[e] * float(P[e]) for e in range(E)))
    want = float(ce.detach()) + MOE.aux_loss_coef * sum(per_layer) / len(per_layer)
    assert float(total.detach()) == pytest.approx(want, rel=1e-9)
    _, none = m(x, y, reduction="none")  # per-token losses carry no auxiliary term
    m.eval()
    _, none_eval = m(x, y, reduction="none")
    torch.testing.assert_close(none, none_eval)


def test_moe_params_flops_and_groups():
    m = make(MOE)
    d, L, E = MOE.d_model, MOE.n_layers, MOE.n_experts
    assert m.num_params() == num_params_from_config(MOE) == num_params_from_config(TINY) + L * d * E
    assert flops_per_token(MOE) == pytest.approx(flops_per_token(TINY) + 6 * L * d * E)
    assert m.flops_per_token() == pytest.approx(flops_per_token(MOE))
    groups = {g["name"]: g for g in m.param_groups(0.01, 0.1)}
    routers = {id(b.ffn.router.weight) for b in m.blocks}
    assert routers <= {id(p) for p in groups["matrix"]["params"]}


@pytest.mark.parametrize("bad, msg", [
    ({"n_experts": 7}, "must divide d_ff"),
    ({"n_experts": -1}, ">= 0"),
    ({"n_experts": 8, "top_k": 9}, r"top_k=9"),
    ({"n_experts": 8, "top_k": 0}, r"top_k=0"),
])
def test_moe_config_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Transformer(dataclasses.replace(MOE, **bad))


def test_rmsnorm_and_router_compute_in_float32_for_bf16_inputs():
    """RMSNorm and the MoE router work in (at least) float32 on a bf16 model: the norm equals the float64
    oracle rounded once to bf16 (a bf16 mean of squares is off by several of its ulps), and the router's
    probabilities are float32, equal to a float64 softmax of the bf16 logits."""
    from sparsinglaw.model import RMSNorm

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(64, 256, generator=g, dtype=torch.float64) * 3).to(torch.bfloat16)
    norm = RMSNorm(256, eps=1e-5).to(torch.bfloat16)
    want = rmsnorm_oracle(x.double(), torch.ones(256, dtype=torch.float64), 1e-5).to(torch.bfloat16)
    got = norm(x)
    assert got.dtype == torch.bfloat16
    assert (got == want).double().mean() > 0.99
    ffn = make(MOE, double=False).blocks[0].ffn.to(torch.bfloat16)
    xr = torch.randn(50, MOE.d_model, generator=g).to(torch.bfloat16)
    weights, probs = ffn.route(xr)
    assert probs.dtype == weights.dtype == torch.float32
    oracle = torch.softmax(ffn.router(xr).double(), dim=-1)
    torch.testing.assert_close(probs.double(), oracle, rtol=0, atol=1e-6)
