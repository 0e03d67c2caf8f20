"""The paper profile reproduces Table 3 (non-embedding parameters within 1%, batch tokens within 1%),
and one training step of a shrunken copy of each configuration runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sparsinglaw import paper
from sparsinglaw.config import load_profile, tokens_per_step
from sparsinglaw.model import Transformer, num_params_from_config


def _by_scale():
    prof = load_profile("paper")
    t3 = paper.table3()
    rows = []
    for _, row in t3.iterrows():
        runs = [r for r in prof.runs if r.model.d_model == row["d_h"] and r.model.n_layers == row["L"]]
        assert {r.model.activation for r in runs} == {"relu", "silu"}, row["scale"]
        rows += [(row, r) for r in runs]
    return rows


@pytest.mark.parametrize("row,run", _by_scale(), ids=lambda x: getattr(x, "name", None) or "")
def test_paper_configs_match_table3(row, run):
    m = run.model
    assert m.d_ff == row["d_f"] and m.head_dim == 128 and m.dim_model_base == 256
    assert m.scale_emb == 12 and m.scale_depth == 1.4 and m.init_std == 0.1
    n = num_params_from_config(m, non_embedding=True)
    assert abs(n / row["n_nonemb"] - 1) < 0.01, (n, row["n_nonemb"])
    assert abs(tokens_per_step(m, run.train) / row["batch_tokens"] - 1) < 0.01
    assert run.train.tokens >= 190 * row["n_nonemb"]  # at least ~190 tokens per non-embedding parameter


@pytest.mark.parametrize("name", [r.name for r in load_profile("paper").runs])  # every one: ReLU and SiLU
def test_shrunken_copy_trains_one_step(name):
    run = load_profile("paper").run(name)
    # same depth, activation and muP knobs; width, vocab and context shrunk by 16-64x
    small = dataclasses.replace(run.model, d_model=run.model.d_model // 16, d_ff=run.model.d_ff // 16,
                                head_dim=run.model.head_dim // 16, vocab_size=512, seq_len=64,
                                dim_model_base=run.model.dim_model_base // 16)
    torch.manual_seed(0)
    model = Transformer(small)
    opt = torch.optim.AdamW(model.param_groups(run.train.lr, run.train.weight_decay), betas=(0.9, 0.95))
    x = torch.randint(0, 512, (2, 64))
    _, loss0 = model(x, x)
    loss0.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
    opt.step()
    with torch.no_grad():
        _, loss1 = model(x, x)
    assert torch.isfinite(loss0) and torch.isfinite(loss1) and loss1 < loss0


def test_paper_profile_measures_like_the_authors():
    """Algorithm 1 as in the paper: ~2M validation tokens, tolerance 1e-3, 65,536 candidate thresholds, one
    CETT per run from its last five stable checkpoints, PPL-1% measured."""
    s = load_profile("paper").sparsity
    assert 2_000_000 <= s.eval_tokens <= 2_200_000
    assert s.tol == 1e-3 and s.n_grid == 65_536 and s.n_last == 5 and 1 in s.p
