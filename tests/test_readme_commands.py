"""Every `python run.py ...` command of README.md's experiments table composes (Hydra's compose API, as `run.py` would)
into the run its row names: family, size, token budget, batch, learning rate, devices.

The commands are read from README.md itself, so a row that is edited, added or mislabelled is tested as written.
`<...>` placeholders (a run directory) are filled in; a multirun's sweeps (`a=x,y`) are expanded into every job.
"""
from __future__ import annotations

import itertools
import re
import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from tests.test_configs import ROOT, compose_cfg

FAMILIES = ("deltanet", "deltanet_hybrid_swa", "deltanet_hybrid_global", "transformer", "gated_deltanet",
            "gated_deltanet_hybrid_swa", "retnet", "gla", "mamba")
# How a paper row's label names its family: (words it must contain, words it must not).
FAMILY_LABEL = {"deltanet": ("DeltaNet", "+"), "deltanet_hybrid_swa": ("DeltaNet + SWA", None),
                "deltanet_hybrid_global": ("DeltaNet + 2 global attention", None), "transformer": ("Transformer++", None),
                "gated_deltanet": ("Gated DeltaNet", "+"), "gated_deltanet_hybrid_swa": ("Gated DeltaNet + SWA", None),
                "retnet": ("RetNet", None), "gla": ("GLA", None), "mamba": ("Mamba", None)}
# experiment -> (size label, hidden, layers, heads, micro-batch, lr, train tokens, global batch tokens, max_steps)
# (None: step-based, no token recipe; the max_steps of the step-based runs are as written in their configs)
EXPECTED = {
    "paper_340m_15b": ("340M", 1024, 24, 8, 8, 3e-4, 15_000_000_000, 524_288, None),
    "paper_1p3b_100b": ("1.3B", 2048, 24, 16, 4, 3e-4, 100_000_000_000, 2_097_152, None),
    "ablation_small": (None, 256, 4, 4, 8, 3e-4, 2_000_000, 8192, None),
    "smoke": (None, 64, 2, 2, 4, 3e-3, None, None, 20),
    "mqar": (None, 64, 2, 1, None, 3e-3, None, None, 5000),
    None: (None, 256, 4, 4, 8, 3e-4, None, None, 120),  # plain `python run.py`
}


def readme_commands() -> list[tuple[str, str]]:
    """(row label, command) for every `python run.py ...` span of the table under README.md's "## Experiments"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Experiments", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.startswith("|"):
            continue
        for span in re.findall(r"`([^`]*)`", cells[1]):
            span = span.split("&&")[0].strip()  # the ablation row runs collect_results.py after the multirun
            if span.startswith("python run.py"):
                rows.append((cells[0], span))
    return rows


def jobs(command: str) -> list[list[str]]:
    """The override lists of the job(s) a command runs: one, or each combination of a multirun's sweeps."""
    args = shlex.split(command)[2:]  # drop `python run.py`
    multirun = "-m" in args
    args = [re.sub(r"<[^>]*>", "placeholder", a) for a in args if a != "-m"]
    parsed = OverridesParser.create().parse_overrides(args)
    choices = []
    for arg, override in zip(args, parsed):
        if override.is_sweep_override():
            assert multirun, f"{command}: a sweep ({arg}) needs -m"
            choices.append([f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([arg])
    return [list(job) for job in itertools.product(*choices)]


COMMANDS = readme_commands()


def value(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return found[-1] if found else None


def test_the_table_has_one_row_per_paper_run_and_the_other_experiments():
    paper = [(value(o, "experiment"), value(o, "model")) for _, c in COMMANDS for o in jobs(c)
             if (value(o, "experiment") or "").startswith("paper_") and value(o, "task") is None]
    assert sorted(paper) == sorted(itertools.product(["paper_340m_15b", "paper_1p3b_100b"], FAMILIES))
    experiments = {value(o, "experiment") for _, c in COMMANDS for o in jobs(c)}
    assert {"smoke", "mqar", "ablation_small", None} <= experiments
    tasks = {value(o, "task") for _, c in COMMANDS for o in jobs(c)}
    assert {"prepare", "generate"} <= tasks
    assert sum(len(jobs(c)) for _, c in COMMANDS if "ablation_small" in c) == 12  # the 2 x 3 x 2 ablation sweep


@pytest.mark.parametrize("label,command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_readme_command_composes_into_its_row(label, command, tmp_path):
    for overrides in jobs(command):
        cfg = compose_cfg(overrides, tmp_path)  # every interpolation resolves, as at the start of a run
        config = instantiate(cfg.model)  # a valid DeltaNetConfig
        experiment = value(overrides, "experiment")
        size, hidden, layers, heads, micro, lr, train_tokens, batch_tokens, max_steps = EXPECTED[experiment]
        family = value(overrides, "model") or "deltanet"
        assert config.family == cfg.model.family == family
        assert cfg.task == (value(overrides, "task") or "train")
        assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == (hidden, layers, heads)
        if micro is not None:
            assert cfg.data.batch_size == micro
        assert cfg.optim.optimizer.lr == lr
        assert (cfg.recipe.train_tokens, cfg.recipe.global_batch_tokens) == (train_tokens, batch_tokens)
        if max_steps is not None:
            assert cfg.trainer.max_steps == max_steps
        devices = value(overrides, "trainer.devices")
        assert str(cfg.trainer.devices) == (devices or str(8 if experiment and experiment.startswith("paper_") else 1))
        for key in ("model.qk_norm", "model.qk_activation", "model.use_short_conv"):  # the ablation's sweep reaches it
            if value(overrides, key) is not None:
                assert str(cfg.model[key.split(".")[1]]).lower() == value(overrides, key).lower()
        if experiment and experiment.startswith("paper_") and cfg.task == "train":
            words, absent = FAMILY_LABEL[family]
            assert words in label and size in label, f"row '{label}' runs {family} {size}"
            assert absent is None or absent not in label, f"row '{label}' runs {family}"
            assert cfg.data.seq_len == 2048 and cfg.trainer.precision == "bf16-mixed"


def test_readme_mqar_sweep_command_expands_into_runs_that_compose(tmp_path, capsys):
    """The sweep row's `mqar_sweep.py launch` (its --dry-run) prints one `run.py` command per family x width x lr,
    and each composes with its width, heads, lr and the shared overrides (``+trainer.max_time`` included)."""
    from scripts import mqar_sweep

    text = (ROOT / "README.md").read_text()
    (span,) = [s for s in re.findall(r"`([^`]*)`", text) if s.startswith("python scripts/mqar_sweep.py launch")]
    launch = shlex.split(span.split("&&")[0])[2:]  # drop `python scripts/mqar_sweep.py`
    mqar_sweep.main([*launch[:launch.index("--")], "--dry-run", *launch[launch.index("--"):]])
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    opts = {o: launch[launch.index(o) + 1:] for o in ("--family", "--width", "--lr")}
    counts = [len(list(itertools.takewhile(lambda a: not a.startswith("--"), v))) for v in opts.values()]
    assert len(printed) == counts[0] * counts[1] * counts[2] and "--runs" in launch
    assert counts[2] >= 4, "Zoology's protocol: at least 4 learning rates"
    for cmd in (printed[0], printed[-1]):
        overrides = [a for a in cmd[2:] if not a.startswith("hydra.run.dir=")]
        cfg = compose_cfg(overrides, tmp_path)
        assert cfg.model.hidden_size == int(value(overrides, "model.hidden_size"))
        assert cfg.model.num_heads == max(1, cfg.model.hidden_size // 64)
        assert cfg.optim.optimizer.lr == float(value(overrides, "optim.optimizer.lr"))
        assert cfg.trainer.max_time == value(overrides, "+trainer.max_time") and cfg.data.fresh_train_data is True
