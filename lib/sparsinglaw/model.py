"""The model: a LLaMA/MiniCPM-style decoder with a gated FFN and a pluggable activation (paper Section 2).

Read top to bottom: ModelConfig, the activation registry, RMSNorm, rotary embeddings, attention,
HookPoint, GatedFFN, Block, LMHead, Transformer, and helpers (parameter and FLOP counts, ``sparse``).

The FFN computes its intermediate ``h = act(W_gate x) * (W_up x)`` (Eq. 1-2) once and passes it through a
named identity module, ``blocks.<l>.ffn.h`` (TransformerLens's hook point idea), so the sparsity code
reads (or replaces) ``h`` with an ordinary ``register_forward_hook``. For sparse inference each FFN
has an optional threshold ``tau_l`` (neuron i inactive when ``|h_i| * ||W_down[:, i]|| < tau_l``,
paper Section 3) and an optional static per-neuron mask.

Mixture of experts (paper Fig. 2's baseline): with ``n_experts = E > 0`` the d_ff neurons are cut into E
contiguous experts of d_ff / E neurons (the dense model's width, so the same parameters plus a router);
a router picks the top_k experts per token and weights their outputs by its softmax renormalised over
them (Mixtral); ``h`` is multiplied by those weights before the hook point, so an unrouted neuron's
h_i is exactly 0. Every expert is computed and masked (simple, not fast). Training adds Switch
Transformer's load-balancing loss.

MiniCPM's muP knobs: embeddings times ``scale_emb``; each residual branch times
``scale_depth / sqrt(n_layers)``; logits from ``h / width_mult``; hidden matrices get init std
``init_std / sqrt(width_mult)`` and learning rate ``lr / width_mult``, ``width_mult = d_model / dim_model_base``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # BPE vocabulary size (tokens)
    d_model: int = 64  # hidden width d_h (features)
    n_layers: int = 4  # number of Transformer blocks L
    head_dim: int = 16  # attention head dimension (features); n_heads = d_model // head_dim (must divide)
    d_ff: int = 160  # FFN intermediate width d_f (neurons per layer; the paper uses 2.5 d_h)
    activation: str = "relu"  # activation of the gate, a key into ACTIVATIONS
    seq_len: int = 256  # maximum context length (tokens); rotary tables are precomputed up to it
    rope_theta: float = 10000.0  # rotary base theta (dimensionless)
    norm_eps: float = 1e-5  # RMSNorm epsilon (added to the mean square)
    scale_emb: float = 12.0  # muP: multiplier on the embedding output
    scale_depth: float = 1.4  # muP: each residual branch is scaled by scale_depth / sqrt(n_layers)
    dim_model_base: int = 256  # muP base width (features): width_mult = d_model / dim_model_base
    init_std: float = 0.1  # init std of the embedding; hidden matrices use init_std / sqrt(width_mult)
    n_experts: int = 0  # 0: dense FFN; E > 0: the d_ff neurons form E equal experts behind a top-k router (MoE)
    top_k: int = 2  # MoE: experts routed per token (activation ratio top_k / n_experts); unused when dense
    aux_loss_coef: float = 0.01  # MoE: weight of the load-balancing loss added to the training loss

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def width_mult(self) -> float:
        return self.d_model / self.dim_model_base

    @property
    def width_depth_ratio(self) -> float:
        return self.d_model / self.n_layers


# ----------------------------------------------------------------------------- activations

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "silu": F.silu,  # x * sigmoid(x), a.k.a. swish
    "gelu": F.gelu,  # exact: 0.5 x (1 + erf(x / sqrt(2)))
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu2": lambda x: F.relu(x).square(),  # ReLU^2 (Zhang et al. 2024)
}


BUILTIN_ACTIVATIONS = dict(ACTIVATIONS)


def register_activation(name: str, fn: Callable[[Tensor], Tensor], *, overwrite: bool = False) -> None:
    """Add an elementwise activation under ``name`` (then usable as ``ModelConfig.activation``).

    Runs and measurements are keyed by the activation's name, not its code: a finished run of that name
    is reused, so give a changed function a new name. The worker processes of ``jobs > 1`` get the
    registered functions (runs.run_parallel) when they can be imported there by name (a function of an
    importable module, not of a notebook or ``__main__``, nor a lambda); otherwise the runs go one by one
    in this process, with a note."""
    if name in ACTIVATIONS and not overwrite:
        raise ValueError(f"activation {name!r} is already registered (pass overwrite=True to replace it)")
    ACTIVATIONS[name] = fn


def registered_activations() -> dict[str, Callable[[Tensor], Tensor]]:
    """The activations added or replaced by ``register_activation`` (not the built-in ones)."""
    return {k: v for k, v in ACTIVATIONS.items() if BUILTIN_ACTIVATIONS.get(k) is not v}


def zeroes_negatives(name: str) -> bool:
    """Whether the activation outputs exact zeros on negative inputs, as ReLU and ReLU^2 do (probed at -0.5,
    -1 and -2): then a share of its neurons is exactly inactive on every token, which the measurement
    reports (the non-zero ratio, the Pareto sweep's exact-zeros point) besides PPL-p% sparsity."""
    return bool((get_activation(name)(torch.tensor([-0.5, -1.0, -2.0])) == 0).all())


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in at least float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate feature pairs (j, j + head_dim/2) of x (..., T, head_dim) by angle t * theta_j."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Rotary(nn.Module):
    """Precomputed RoPE tables (seq_len, head_dim), theta_j = rope_theta^(-2j / head_dim)."""

    def __init__(self, head_dim: int, seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.seq_len, self.theta = head_dim, seq_len, theta
        self.register_buffer("cos", torch.empty(seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(seq_len, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        dev = self.cos.device
        inv_freq = self.theta ** -(torch.arange(0, self.head_dim, 2, device=dev).double() / self.head_dim)
        angles = torch.outer(torch.arange(self.seq_len, device=dev).double(), inv_freq)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)  # half-split layout, matches rotate_half
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, T: int) -> tuple[Tensor, Tensor]:
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds seq_len={self.seq_len}")
        return self.cos[:T], self.sin[:T]


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE on queries and keys."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).split(C, 2))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class HookPoint(nn.Module):
    """Identity with a module name, so ``register_forward_hook`` can read or replace a tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class GatedFFN(nn.Module):
    """FFN(x) = W_down (act(W_gate x) * (W_up x)) (Eq. 1-2).

    Neuron i = row i of W_gate and W_up, column i of W_down.

    Sparse inference (both None = dense; both are non-persistent buffers, so they follow ``.to()``
    and stay out of ``state_dict``):
      threshold  0-d tensor tau_l: h_i := 0 where |h_i| * ||W_down[:, i]||_2 < tau_l (tau_l = 0 is dense).
      mask       (d_ff,) bool or float tensor multiplied into h (static per-neuron mask).
    The hook point ``h`` sees the dense h; a hook that returns a tensor replaces h downstream.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = get_activation(cfg.activation)
        self.w_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k  # top_k may be changed for inference
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False) if cfg.n_experts else None
        self.h = HookPoint()
        self.threshold: Tensor | None
        self.mask: Tensor | None
        self.register_buffer("threshold", None, persistent=False)
        self.register_buffer("mask", None, persistent=False)

    def down_col_norms(self) -> Tensor:
        """||W_down[:, i]||_2 for every neuron i, shape (d_ff,)."""
        return self.w_down.weight.norm(dim=0)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """MoE router: (weights, probs), both (..., E) in at least float32. probs = softmax(W_r x);
        weights = probs on the top_k experts renormalised to sum 1, 0 elsewhere."""
        logits = self.router(x)
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        w, idx = probs.topk(self.top_k, dim=-1)
        return torch.zeros_like(probs).scatter(-1, idx, w / w.sum(-1, keepdim=True)), probs

    def forward(self, x: Tensor, aux: list[Tensor] | None = None) -> Tensor:
        h = self.act(self.w_gate(x)) * self.w_up(x)  # Eq. 1-2
        if self.router is not None:
            weights, probs = self.route(x)
            h = h * weights.to(h.dtype).repeat_interleave(h.size(-1) // self.n_experts, dim=-1)
            if aux is not None:  # Switch Transformer: E * sum_e f_e P_e (1 when perfectly balanced)
                f = (weights > 0).float().flatten(0, -2).mean(0) / self.top_k  # share of routings to e
                aux.append(self.n_experts * (f * probs.flatten(0, -2).mean(0)).sum())
        h = self.h(h)
        if self.threshold is not None:  # ||n_i|| = |h_i| * ||W_down[:, i]|| (Section 3)
            norms = h.abs() * self.down_col_norms().to(h.dtype)
            h = h.masked_fill(norms < self.threshold.to(h.device, h.dtype), 0.0)
        if self.mask is not None:
            h = h * self.mask.to(h.device, h.dtype)
        return self.w_down(h)


class Block(nn.Module):
    """Pre-norm block; each residual branch is scaled by scale_depth / sqrt(L) (MiniCPM muP)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.res_scale = cfg.scale_depth / math.sqrt(cfg.n_layers)
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = GatedFFN(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, aux: list[Tensor] | None = None) -> Tensor:
        x = x + self.res_scale * self.attn(self.norm1(x), cos, sin)
        return x + self.res_scale * self.ffn(self.norm2(x), aux)


class LMHead(nn.Module):
    """The output head, tied to the embedding (whose weight is passed in: the head holds none), and the
    cross-entropy in (at least) float32 with ignore_index=-1. A module of its own so that it can be
    compiled apart from the blocks (compute.compile: blocks)."""

    def __init__(self, width_mult: float):
        super().__init__()
        self.width_mult = width_mult

    def forward(self, x: Tensor, weight: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """x (B, T, d) normed final hidden states -> (logits or None, loss or None)."""
        logits = F.linear(x / self.width_mult, weight)  # muP: logits from h / (d_h / base)
        loss = None
        if targets is not None:
            logits32 = logits.to(torch.promote_types(logits.dtype, torch.float32))
            with torch.autocast(logits.device.type, enabled=False):
                loss = F.cross_entropy(logits32.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                       reduction=reduction)
            if reduction == "none":
                loss = loss.view_as(targets)
        return (logits if return_logits else None), loss


# ----------------------------------------------------------------------------- model


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # tied with the output head
        self.rotary = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = LMHead(cfg.width_mult)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedding ~ N(0, init_std); every Linear ~ N(0, init_std / sqrt(width_mult)); norms = 1."""
        hidden_std = self.cfg.init_std / math.sqrt(self.cfg.width_mult)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, hidden_std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        self.rotary.reset_parameters()

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean", return_logits: bool = True,
        return_ce: bool = False,
    ) -> tuple[Tensor | None, ...]:
        """idx (B, T) token ids -> logits (B, T, vocab) and the cross-entropy loss (ignore_index=-1).

        reduction: "mean" (scalar over non-ignored targets), "sum", or "none" ((B, T), 0 where ignored).
        return_logits=False (training with targets) returns (None, loss), so a compiled graph need not
        hand the logits back. An MoE model in training mode adds aux_loss_coef times its load-balancing
        loss (mean over layers) to a "mean" loss; in eval mode the loss is the cross-entropy alone.
        return_ce=True (with targets) adds a third output, the cross-entropy alone (what the trainer logs).
        """
        cos, sin = self.rotary(idx.size(1))
        x = self.embed(idx) * self.cfg.scale_emb
        aux = [] if (self.cfg.n_experts and self.training and targets is not None and reduction == "mean") else None
        for block in self.blocks:
            mine = None if aux is None else []  # a fresh list for each block: one compiled on its own
            x = block(x, cos, sin, mine)  # (compute.compile: blocks) then sees the same input at every depth
            if mine:
                aux += mine
        if targets is not None and reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        logits, loss = self.head(self.norm(x), self.embed.weight, targets, reduction,
                                 return_logits=return_logits or targets is None)
        if targets is None:
            return (logits, None, None) if return_ce else (logits, None)
        ce = loss
        if aux:
            loss = loss + self.cfg.aux_loss_coef * torch.stack(aux).mean()
        return (logits, loss, ce) if return_ce else (logits, loss)

    # ---- sizes

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding drops the token embedding (tied to the head, so counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), see the module-level ``flops_per_token``."""
        n_matmul = sum(p.numel() for p in self.blocks.parameters() if p.ndim == 2)
        return _flops(n_matmul, self.cfg, seq_len)

    # ---- sparsity controls

    def ffns(self) -> list[GatedFFN]:
        return [b.ffn for b in self.blocks]

    def hook_names(self) -> list[str]:
        return [f"blocks.{l}.ffn.h" for l in range(self.cfg.n_layers)]

    def set_thresholds(self, taus: Sequence[float] | Tensor | None) -> None:
        """tau_l per layer (length n_layers); None, or a value <= 0, means dense for that layer."""
        vals = [None] * self.cfg.n_layers if taus is None else _per_layer(taus, self.cfg.n_layers, "taus")
        for l, (ffn, tau) in enumerate(zip(self.ffns(), vals, strict=True)):
            tau = None if tau is None else float(tau)
            if tau is not None and math.isnan(tau):
                raise ValueError(f"taus[{l}]: threshold is NaN")
            w = ffn.w_down.weight  # stored in the weights' dtype; compared in h's dtype
            dense = tau is None or tau <= 0
            ffn.threshold = None if dense else torch.tensor(tau, dtype=w.dtype, device=w.device)

    def set_masks(self, masks: Sequence[Tensor | None] | None) -> None:
        """A (d_ff,) bool/float mask per layer (length n_layers); None entries mean no mask."""
        vals = [None] * self.cfg.n_layers if masks is None else _per_layer(masks, self.cfg.n_layers, "masks")
        for l, (ffn, m) in enumerate(zip(self.ffns(), vals, strict=True)):
            if m is not None:
                m = torch.as_tensor(m, device=ffn.w_down.weight.device)
                if m.shape != (self.cfg.d_ff,):
                    raise ValueError(f"masks[{l}]: expected shape ({self.cfg.d_ff},), got {tuple(m.shape)}")
            ffn.mask = m

    def set_active_experts(self, k: int | None) -> None:
        """MoE: route every token to k experts (None: the trained top_k), e.g. to trace PPL vs k / E."""
        if not self.cfg.n_experts:
            raise ValueError("set_active_experts: the model is dense (n_experts = 0)")
        k = self.cfg.top_k if k is None else int(k)
        if not 1 <= k <= self.cfg.n_experts:
            raise ValueError(f"active experts must be in [1, {self.cfg.n_experts}], got {k}")
        for ffn in self.ffns():
            ffn.top_k = k

    # ---- optimizer

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups with MiniCPM's muP: hidden matrices lr / width_mult; norms without weight decay.

        Every group carries "name", "lr" and "base_lr" (= its peak lr; the trainer sets
        lr = base_lr * schedule factor).
        """
        groups = {"matrix": [], "embedding": [], "norm": []}
        for name, p in self.named_parameters():
            if name == "embed.weight":
                groups["embedding"].append(p)
            elif name.startswith("blocks.") and p.ndim == 2:
                groups["matrix"].append(p)
            elif p.ndim == 1:
                groups["norm"].append(p)
            else:
                raise RuntimeError(f"param_groups: no rule for parameter {name!r} of shape {tuple(p.shape)}")
        settings = {
            "matrix": (lr / self.cfg.width_mult, weight_decay),
            "embedding": (lr, weight_decay),
            "norm": (lr, 0.0),
        }
        return [
            {"name": k, "params": ps, "lr": settings[k][0], "base_lr": settings[k][0],
             "weight_decay": settings[k][1]}
            for k, ps in groups.items()
        ]


# ----------------------------------------------------------------------------- helpers


def _validate(cfg: ModelConfig) -> None:
    for f in ("vocab_size", "d_model", "n_layers", "head_dim", "d_ff", "seq_len", "dim_model_base"):
        v = getattr(cfg, f)
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"{f}={v!r} must be a positive integer")
    if cfg.d_model % cfg.head_dim:
        raise ValueError(f"head_dim={cfg.head_dim} must divide d_model={cfg.d_model}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim={cfg.head_dim} must be even for rotary embeddings")
    get_activation(cfg.activation)
    if cfg.n_experts < 0:
        raise ValueError(f"n_experts={cfg.n_experts} must be >= 0 (0 = dense FFN)")
    if cfg.n_experts:
        if cfg.d_ff % cfg.n_experts:
            raise ValueError(f"n_experts={cfg.n_experts} must divide d_ff={cfg.d_ff} (experts of equal width)")
        if not 1 <= cfg.top_k <= cfg.n_experts:
            raise ValueError(f"top_k={cfg.top_k} must be in [1, n_experts={cfg.n_experts}]")


def _per_layer(vals, n_layers: int, what: str) -> list:
    vals = list(vals)
    if len(vals) != n_layers:
        raise ValueError(f"{what}: expected {n_layers} values (one per layer), got {len(vals)}")
    return vals


def num_params_from_config(cfg: ModelConfig, non_embedding: bool = True) -> int:
    """Per block: attention 4 d^2, FFN 3 d d_f, MoE router d E, two norms 2 d; plus the final norm d (and
    the embedding)."""
    d = cfg.d_model
    n = cfg.n_layers * (4 * d * d + 3 * d * cfg.d_ff + d * cfg.n_experts + 2 * d) + d
    return n if non_embedding else n + cfg.vocab_size * d


def _flops(n_matmul: int, cfg: ModelConfig, seq_len: int | None) -> float:
    T = cfg.seq_len if seq_len is None else seq_len
    head = cfg.d_model * cfg.vocab_size
    attn = cfg.n_layers * cfg.d_model * T  # scores and values: 2 matmuls x 2 FLOPs x 3 (fwd + bwd)
    return float(6 * n_matmul + 6 * head + 12 * attn)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token = 6 N_matmul + 6 d vocab + 12 L d T (PaLM, appendix B).

    N_matmul = L (4 d^2 + 3 d d_f + d E), the non-embedding matrix parameters (norm weights excluded; an
    MoE computes every expert here, so all of d_f counts).
    """
    d = cfg.d_model
    return _flops(cfg.n_layers * (4 * d**2 + 3 * d * cfg.d_ff + d * cfg.n_experts), cfg, seq_len)


@contextmanager
def sparse(
    model: Transformer,
    taus: Sequence[float] | Tensor | None = None,
    masks: Sequence[Tensor | None] | None = None,
) -> Iterator[Transformer]:
    """Run a block with thresholds and masks set (None = dense / no mask), then restore the previous ones."""
    saved = [(f.threshold, f.mask) for f in model.ffns()]
    try:
        model.set_thresholds(taus)
        model.set_masks(masks)
        yield model
    finally:
        for f, (tau, mask) in zip(model.ffns(), saved, strict=True):
            f.threshold, f.mask = tau, mask
