"""The paper's table: columns in its order, from lm-eval's results, as markdown and JSON.

Columns (task, lm-eval metric): Wikitext word perplexity, LAMBADA perplexity and accuracy, PIQA, HellaSwag (acc_norm),
WinoGrande, ARC-e, ARC-c (acc_norm), SIQA, BoolQ, their average accuracy, then the recall-intensive SWDE, SQuAD and FDA
(lm-eval's ``contains``: the answer appears in the greedy continuation).  Accuracies are in percent.  Tasks outside
the paper's list follow as extra columns, with every metric lm-eval reported.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TASKS", "PAPER_COLUMNS", "ACCURACY_COLUMNS", "build_table", "table_markdown", "write_report"]

# (column, lm-eval task, metric key in lm-eval's results, kind)
PAPER_COLUMNS: list[tuple[str, str, str, str]] = [
    ("Wiki. ppl", "wikitext", "word_perplexity,none", "ppl"),
    ("LMB. ppl", "lambada_openai", "perplexity,none", "ppl"),
    ("LMB. acc", "lambada_openai", "acc,none", "acc"),
    ("PIQA acc", "piqa", "acc,none", "acc"),
    ("Hella. acc_n", "hellaswag", "acc_norm,none", "acc"),
    ("Wino. acc", "winogrande", "acc,none", "acc"),
    ("ARC-e acc", "arc_easy", "acc,none", "acc"),
    ("ARC-c acc_n", "arc_challenge", "acc_norm,none", "acc"),
    ("SIQA acc", "social_iqa", "acc,none", "acc"),
    ("BoolQ acc", "boolq", "acc,none", "acc"),
    ("SWDE", "swde", "contains,none", "acc"),
    ("SQuAD", "squad_completion", "contains,none", "acc"),
    ("FDA", "fda", "contains,none", "acc"),
]
# the columns that the paper's "Avg." averages (not the recall-intensive ones)
ACCURACY_COLUMNS = ["LMB. acc", "PIQA acc", "Hella. acc_n", "Wino. acc", "ARC-e acc", "ARC-c acc_n", "SIQA acc",
                    "BoolQ acc"]
DEFAULT_TASKS: list[str] = list(dict.fromkeys(task for _, task, _, _ in PAPER_COLUMNS))
_AVG_AFTER = "BoolQ acc"


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def build_table(lm_eval_results: dict[str, dict[str, Any]], extra: dict[str, float] | None = None) -> dict[str, float]:
    """lm-eval's ``results`` (task -> metric -> value) -> ordered ``{column: value}``.

    Paper columns come first (those whose task was run), then "Avg." over the accuracy columns present, then the
    recall tasks, then other tasks' metrics as ``task/metric``, then ``extra`` (e.g. the validation perplexity).
    """
    table: dict[str, float] = {}
    used = set()
    for column, task, metric, kind in PAPER_COLUMNS:
        value = _number(lm_eval_results.get(task, {}).get(metric))
        if value is not None:
            table[column] = 100.0 * value if kind == "acc" else value
            used.add(task)
        if column == _AVG_AFTER:
            accs = [table[c] for c in ACCURACY_COLUMNS if c in table]
            if accs:
                table["Avg."] = sum(accs) / len(accs)
    for task, metrics in lm_eval_results.items():
        if task in used:
            continue
        for key, v in metrics.items():
            value = _number(v)
            if value is not None and "_stderr" not in key and key != "alias":
                table[f"{task}/{key.split(',')[0]}"] = value
    table.update(extra or {})
    return table


def _fmt(column: str, v: float) -> str:
    return f"{v:.2f}" if ("ppl" in column or "perplexity" in column or column.endswith("/loss")) else f"{v:.1f}" \
        if column in {c for c, *_ in PAPER_COLUMNS} | {"Avg."} else f"{v:.4g}"


def table_markdown(table: dict[str, float], title: str, notes: list[str] | None = None) -> str:
    lines = [f"## {title}", ""]
    lines += [f"- {n}" for n in notes or []]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(table) + " |")
    lines.append("| " + " | ".join("---:" for _ in table) + " |")
    lines.append("| " + " | ".join(_fmt(c, v) for c, v in table.items()) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, stem: str, table: dict[str, float], settings: dict[str, Any],
                 details: dict[str, Any], extra_markdown: str = "") -> tuple[Path, Path]:
    """Writes ``<stem>.md`` and ``<stem>.json`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = [f"checkpoint: {settings.get('checkpoint')}",
             f"context length (rolling perplexity, truncation): {settings.get('context_length')} tokens",
             f"dtype: {settings.get('dtype')}, device: {settings.get('device')}"]
    if settings.get("limit") is not None:
        notes.append(f"limit: {settings['limit']} examples per task (not the full sets: not the paper's numbers)")
    md = table_markdown(table, "Evaluation", notes) + ("\n" + extra_markdown if extra_markdown else "")
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md_path.write_text(md)
    json_path.write_text(json.dumps({"table": table, "columns": list(table), "settings": settings, **details},
                                    indent=2, default=str))
    return md_path, json_path
