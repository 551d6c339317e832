"""Evaluation of trained checkpoints: lm-evaluation-harness tasks (the paper's zero-shot table), perplexities, report.

- ``evaluation.lm_eval_adapter``: the ``deltanet`` model class for lm-eval (needs the ``eval`` extra: ``lm-eval``).
- ``evaluation.scoring``: batched continuation log-probabilities (the one scoring path).
- ``evaluation.perplexity``: validation-split perplexity, perplexity by position (up to 32K), document log-likelihood.
- ``evaluation.report``: the paper's table (markdown + JSON).
- ``evaluation.runner``: ``python run.py task=eval ckpt_path=...``.
"""
