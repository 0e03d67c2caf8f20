"""The gpu profile is what its comments say: parameter counts, width-depth ratios, both activations at
every scale, and shapes the CUDA kernels take (head_dim divides d_model)."""

from __future__ import annotations

import re

from conftest import REPO
from sparsinglaw.config import load_profile
from sparsinglaw.model import num_params_from_config


def test_gpu_profile_matches_its_comments():
    prof = load_profile("gpu")
    assert prof.compute.device == "cuda" and prof.compute.compile == "blocks"  # compiles faster at depth 24
    comments = {}
    for line in (REPO / "configs" / "gpu.yaml").read_text().splitlines():
        m = re.search(r"name: ([\w.-]+),.*#\s*([\d.]+)M\s*$", line)
        if m:
            comments[m.group(1)] = float(m.group(2)) * 1e6
    assert len(comments) >= 9
    for run in prof.runs:
        m = run.model
        assert m.d_model % m.head_dim == 0 and m.d_ff == round(2.5 * m.d_model), run.name
        n = num_params_from_config(m, non_embedding=True)
        if run.name in comments:
            assert abs(n / comments[run.name] - 1) < 0.005, (run.name, n, comments[run.name])
    scale = [r for r in prof.runs if "scale" in r.groups]
    sizes = {(r.model.d_model, r.model.n_layers) for r in scale}
    for d, L in sizes:
        assert {r.model.activation for r in scale if (r.model.d_model, r.model.n_layers) == (d, L)} == {"relu", "silu"}
    wd = [r for r in prof.runs if "width_depth" in r.groups]
    ratios = sorted(r.model.d_model / r.model.n_layers for r in wd)
    assert len(set(ratios)) >= 6 and ratios[0] <= 4 and ratios[-1] >= 128
    assert ratios[1] < 114 < ratios[-2]  # laws.fit_piecewise_linear's breakpoints span the paper's bottleneck
    params = [num_params_from_config(r.model) for r in wd]
    assert max(params) / min(params) < 1.3  # one parameter budget across the grid
    s1 = min(scale, key=lambda r: num_params_from_config(r.model))
    assert s1.train.tokens / num_params_from_config(s1.model) > 100  # near the paper's ~190 at the smallest scale
