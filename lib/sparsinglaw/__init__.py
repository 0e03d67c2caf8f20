"""sparsing-law: an offline-reproducible rebuild of "Sparsing Law: Towards Large Language Models with
Greater Activation Sparsity" (Luo et al., 2024, arXiv 2411.02335).

Modules: config (profiles), data (corpus, tokenizer, batches), model (the decoder), device (device,
threads, torchrun, peak FLOP/s, batch prefetch), train (the training loop), runs (where things live,
caches), sparsity (PPL-p% and its baselines), measure (every checkpoint of a profile), inference (sparse
inference on held-out text), laws (law fits), analysis (laws on the measured tables), claims (the
paper's claims as checks), paper (published numbers), plots (figures), notebooks (strip, report), cli
(`python -m sparsinglaw`).
"""

__version__ = "0.1.0"
