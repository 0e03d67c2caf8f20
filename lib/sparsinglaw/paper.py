"""The paper's published numbers, for side-by-side overlays and tables only.

Luo et al. (2024), transcribed from the paper (arXiv 2411.02335; v1 numbering; the v4 row is flagged).
Nothing here is ever a fit input, a starting value or a default: laws.py does not import this
module, and our fits must stand on our own measurements. Every constant carries `CITATION`
(DataFrames in `.attrs["citation"]`, dicts under the key "citation") and says which table or
figure it comes from.
"""

import pandas as pd

CITATION = (
    "Luo, Song, Han, Chen, Xiao, Liu, Sun. Sparsing Law: Towards Large Language Models with Greater "
    "Activation Sparsity. arXiv:2411.02335 (v1 Nov 2024; v4 ICML 2025)"
)


def _table(rows, columns, source):
    df = pd.DataFrame(rows, columns=columns)
    df.attrs.update(citation=CITATION, source=source)
    return df


# Table 3 (v1): model configurations. w/d = d_h / L as printed (one decimal); n_nonemb = non-embedding
# parameters; batch_tokens = tokens per optimizer step.
TABLE3 = _table(
    [
        ("0.1B", 768, 16, 1920, 48.0, 1.08e8, 3.27e5),
        ("0.2B", 1024, 20, 2560, 51.2, 2.41e8, 5.90e5),
        ("0.4B", 1280, 24, 3200, 53.3, 4.52e8, 7.86e5),
        ("0.8B", 1536, 28, 3840, 54.9, 7.60e8, 1.18e6),
        ("1.2B", 1792, 32, 4480, 56.0, 1.18e9, 1.57e6),
    ],
    ["scale", "d_h", "L", "d_f", "width_depth", "n_nonemb", "batch_tokens"],
    "Table 3 (v1)",
)

# Table 2 (v1) + the ReLU 2.4B row that v4 adds: fitted coefficients of Eq. 4 (ReLU, logspace power
# law) and Eq. 5 (SiLU, power law; it has no b, so NaN). D in 1e9 tokens.
nan = float("nan")
TABLE2 = _table(
    [
        ("relu", "0.1B", "logspace_power", 0.101, -0.0151, 3.20, 0.0614, "v1"),
        ("relu", "0.2B", "logspace_power", 0.449, -3.05, 0.286, 0.0674, "v1"),
        ("relu", "0.4B", "logspace_power", 0.683, -3.46, 0.0790, 0.0690, "v1"),
        ("relu", "0.8B", "logspace_power", 1.01, -3.49, 0.00797, 0.0721, "v1"),
        ("relu", "1.2B", "logspace_power", 1.33, -3.89, 0.000903, 0.0782, "v1"),
        ("silu", "0.1B", "power", 0.479, nan, 0.102, 0.409, "v1"),
        ("silu", "0.2B", "power", 0.844, nan, 0.208, 0.390, "v1"),
        ("silu", "0.4B", "power", 1.03, nan, 0.420, 0.385, "v1"),
        ("silu", "0.8B", "power", 0.995, nan, 0.562, 0.383, "v1"),
        ("silu", "1.2B", "power", 0.967, nan, 0.538, 0.382, "v1"),
        ("relu", "2.4B", "logspace_power", 1.53, -3.46, 1.56e-4, 0.0648, "v4"),
    ],
    ["activation", "scale", "form", "alpha", "b", "c", "A0", "version"],
    "Table 2 (v1); ReLU 2.4B row from v4",
)

# Fig. 5-6: 0.1B ReLU models (~0.11B non-embedding parameters, d_h 512-1792, L 36-3). The limit
# activation ratio rises linearly with d_h/L up to the bottleneck, then hovers around 8%; the limit
# loss is best for width-depth ratios in best_range. Both are read from figures/text ("~", "around").
WIDTH_DEPTH = {
    "bottleneck": 114.0,  # width-depth ratio d_h / L, approximate
    "limit_activation_ratio_above": 0.08,  # "hovers around 8%" above the bottleneck (fraction)
    "best_range": (74.0, 282.0),  # width-depth ratios with the best limit loss
    "source": "Fig. 5-6 and Section 4.3 (v1)",
    "citation": CITATION,
}

# Fig. 7: change of the limit activation ratio A0 from 0.1B to 1.2B at similar width-depth ratios, in
# percentage points of activation ratio (+1.7 points = +0.017 as a fraction).
A0_SCALE_CHANGE = {
    "relu_points": 1.7,
    "silu_points": -2.7,
    "from_scale": "0.1B",
    "to_scale": "1.2B",
    "source": "Fig. 7 and Section 4.4 (v1)",
    "citation": CITATION,
}

# Table 1 in one line: change versus dense, in benchmark score points, averaged over the ten models.
TABLE1_AVERAGES = _table(
    [
        ("PPL-1%", -0.16, -0.30),
        ("PPL-10%", -0.45, -3.64),
    ],
    ["setting", "commonsense", "reading_comprehension"],
    "Table 1 (v1), averages over the ten models, points versus dense",
)


def table2(version="v4"):
    """Table 2 as a DataFrame; version="v1" leaves out the ReLU 2.4B row that v4 adds."""
    df = TABLE2 if version == "v4" else TABLE2[TABLE2.version == "v1"]
    return df.reset_index(drop=True).copy()


def table3():
    """Table 3 (model configurations) as a DataFrame."""
    return TABLE3.copy()


def table1_averages():
    """Table 1 averages (PPL-1% and PPL-10% versus dense) as a DataFrame."""
    return TABLE1_AVERAGES.copy()


# Where each figure and table of the paper is rebuilt: (paper item, what it shows, notebook, our file
# stem under figures/<profile>/). Tests check these labels against the notebooks' plots.save calls, the
# MANIFEST they write on the smoke profile and the committed MANIFESTs, so they cannot drift.
FIGURES = _table(
    [
        ("Table 3 (analog)", "our run grid: shapes, parameters, width-depth ratios", "00_overview", "00_run_grid"),
        ("Fig. 11", "training loss of the scale grid", "01_train", "01_train_loss"),
        ("Fig. 5-6 runs (training loss)", "training loss of the width-depth grid", "01_train",
         "01_train_loss_width_depth"),
        ("Fig. 3 (v4 Fig. 2)", "PPL vs activation ratio: PPL-p% vs Top-k, FAT-eps, exact zeros", "02_ppl_p_sparsity",
         "02_pareto"),
        ("Fig. 2", "PPL vs activation ratio: dense models with PPL-p% vs MoE models routing k of E experts",
         "02_ppl_p_sparsity", "02_moe_vs_dense"),
        ("v4 Fig. 15", "PPL and activation ratio as the CETT value c is swept", "02_ppl_p_sparsity", "02_cett_sweep"),
        ("Section 3 (per-layer thresholds)", "per-layer thresholds found by PPL-1%", "02_ppl_p_sparsity",
         "02_layer_thresholds"),
        ("Fig. 4", "activation ratio vs data with Eq. 4 / Eq. 5 fits (their parameters: Table 2)", "03_activation_law",
         "03_activation_law"),
        ("Fig. 4 (seed replicas)", "activation laws of the seed replicas (the `seeds` group)", "03_activation_law",
         "03_seed_replicas"),
        ("rebuttal (fit forms)", "Eq. 4 / Eq. 5 vs alternative forms", "03_activation_law", "03_form_comparison"),
        ("rebuttal (dead neurons)", "dead-neuron ratio vs data", "03_activation_law", "03_dead_neurons"),
        ("Fig. 4 (width-depth runs)", "activation laws of the width-depth grid", "04_width_depth",
         "04_width_depth_laws"),
        ("Fig. 5", "limit activation ratio vs width-depth ratio", "04_width_depth", "04_limit_activation"),
        ("Fig. 6", "limit loss vs width-depth ratio", "04_width_depth", "04_limit_loss"),
        ("Fig. 7", "limit activation ratio A0 vs parameter scale", "05_parameter_scale", "05_a0_vs_scale"),
        ("Fig. 8", "convergence speed vs data-scale ratio", "05_parameter_scale", "05_convergence_speed"),
        ("Fig. 9", "neuron activation frequency per data domain", "05_parameter_scale", "05_domain_distributions"),
        ("v4 Fig. 16", "neuron activation frequency per layer", "05_parameter_scale", "05_layer_distributions"),
        ("Fig. 10", "per-token activation ratio across scales", "05_parameter_scale", "05_token_pairs"),
        ("Fig. 11", "training loss of the scale grid", "05_parameter_scale", "05_loss_curves"),
        ("Fig. 12", "limit loss vs parameter scale", "05_parameter_scale", "05_limit_loss"),
        ("Table 1 (analog)", "dense vs PPL-1/5/10% sparse inference on held-out text", "06_sparse_inference",
         "06_sparse_inference"),
        ("Claims (Sec. 4-5)", "verdict of every claim check", "07_claims", "07_claims"),
    ],
    ["paper", "what", "notebook", "file"],
    "our notebooks",
)
