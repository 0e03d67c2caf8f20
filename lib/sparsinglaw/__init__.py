"""sparsing-law: an offline-reproducible rebuild of "Sparsing Law: Towards Large Language Models with
Greater Activation Sparsity" (Luo et al., 2024, arXiv 2411.02335).

Modules: config (profiles), data (corpus, tokenizer, batches), model (the decoder), train (the
training loop), runs (where things live, caches), plots (figures), laws (law fits), paper (published
numbers), cli (`python -m sparsinglaw`).
"""

__version__ = "0.1.0"
