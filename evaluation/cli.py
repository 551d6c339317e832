"""``lm-eval-deltanet``: lm-eval's own command line, with the project's ``deltanet`` model registered first.

    lm-eval-deltanet --model deltanet --model_args pretrained=<ckpt or dir>,dtype=bfloat16 --tasks piqa --limit 50
    python -m evaluation.cli ...   # the same without the installed script
"""
from __future__ import annotations


def main() -> None:
    import evaluation.lm_eval_adapter  # noqa: F401  (registers --model deltanet)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
