"""`mine-vae study`: the posterior-collapse study (MINE-VAE against the standard baselines, side by side), run or
resumed, then reported as a Markdown section (table, claims, settings) and plots.

The work is `mine_vae.study`'s; this module turns flags into its arguments: the methods (positional, with
`NAME@key=value,...` variants), the preset and budget, the corpus (the CLI's data flags, as `train` reads them) and
where results, checkpoints and the page go.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import first_examples
from ..study.methods import DEFAULT_PRESET, EVAL_SPLIT, METHODS, PROBE_SPLIT, STUDY_PRESETS, Budget
from .arguments import DataArguments
from .commands import PROG, CliError, Command, inform, quiet_library_logs, user_errors
from .loading import corpus_from_arguments

_PRESET_HELP = "; ".join(f"{name}: {preset.description}" for name, preset in STUDY_PRESETS.items())


@dataclass
class StudyArguments:
    """Which study, and where it keeps its results."""

    _argument_group_name = "study"

    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={"help": f"Model every method trains, and the study's budgets. {_PRESET_HELP}."},
    )
    quick: bool = field(default=False, metadata={"help": "The quick budget: 1 seed and fewer steps."})
    seeds: int | None = field(
        default=None, metadata={"help": "Seeds 0..N-1 (default: the preset's, 3; 2 for minilm-smollm2; quick 1)."}
    )
    jobs: int = field(default=1, metadata={"help": "Runs at a time, each in its own process."})
    threads: int | None = field(default=None, metadata={"help": "Torch threads per run (default: torch's own)."})
    out: str | None = field(
        default=None,
        metadata={
            "help": "Results folder: finished/<method>-seed<N>.json, meta.json, summary.json, plots (default: "
            "mine-vae-study[-PRESET][-quick])."
        },
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "Checkpoints of unfinished runs (default: runs/<name of --out>)."}
    )
    doc: str | None = field(
        default=None,
        metadata={
            "help": "Markdown page to write the section into, between <!-- BEGIN/END key --> markers (key: the --out "
            "folder's path under bench/results/, else its name); replaced if there, appended if not."
        },
    )
    plots: bool = field(default=True, metadata={"help": "Draw curves.png and active_units.png (needs matplotlib)."})
    report_only: bool = field(
        default=False,
        metadata={
            "help": "Train nothing: rebuild the table, plots and page section from the finished runs in --out (the "
            "budget and data flags are then ignored)."
        },
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep a run's checkpoints once it is done."})
    config: str | None = field(default=None, metadata={"help": "JSON or YAML file of flag values (flags win)."})


def _budget_arguments() -> type:
    """A flag for every `Budget` field (its help included), None meaning the preset's budget: a field added to the
    budget is a flag without more code."""
    hints = typing.get_type_hints(Budget)
    fields = [
        (
            f.name,
            hints[f.name] | None,
            field(default=None, metadata={"help": f.metadata["help"] + " (default: the preset's)"}),
        )
        for f in dataclasses.fields(Budget)
    ]
    cls = dataclasses.make_dataclass("BudgetArguments", fields, namespace={"_argument_group_name": "budget"})
    cls.__doc__ = "The budget of every run, over the preset's (full or --quick)."
    cls.__module__ = __name__
    return cls


BudgetArguments = _budget_arguments()


def _positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "methods",
        nargs="*",
        metavar="METHOD",
        help=f"Methods to run and report (default: the preset's; every method for small): {', '.join(METHODS)}; "
        "NAME@key=value,... for a variant.",
    )


_NOT_RECORDED = ("report_only", "keep_checkpoints", "config")  # left out of the command that regenerates a study


def command_line(arguments: tuple[Any, ...], methods: list[str]) -> str:
    """The `mine-vae study` command that regenerates this study: the methods given, and every flag whose value
    differs from its default (a config file's values included), in the order of `--help`."""
    words = [PROG, "study", *methods]
    for instance in arguments:
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if f.name in _NOT_RECORDED or value == f.default:
                continue
            if isinstance(value, bool):
                words.append(f"--{f.name}" if value else f"--no_{f.name}")
            else:
                words += [f"--{f.name}", str(value)]
    return shlex.join(words)


def _default_out(preset: str, quick: bool) -> Path:
    return Path("mine-vae-study" + ("" if preset == DEFAULT_PRESET else f"-{preset}") + ("-quick" if quick else ""))


def _data_settings_given(data: DataArguments) -> dict[str, Any]:
    """The data flags that differ from their defaults: those override the preset's data settings."""
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    names = ("max_length", "overlength", "vocab_size", "min_frequency")
    return {name: getattr(data, name) for name in names if getattr(data, name) != defaults[name]}


def _corpus_name(data: DataArguments) -> str:
    """How the page names the corpus: PTB, the Hub dataset, or the files' names."""
    if data.dataset_name:
        return data.dataset_name + (f" ({data.dataset_config})" if data.dataset_config else "")
    files = [f for f in (data.train_file, data.validation_file, data.test_file) if f]
    return ", ".join(Path(f).name for f in files) if files else "PTB"


def _study_corpus(data: DataArguments, preset: str) -> tuple[Any, Any]:
    """The corpus (PTB unless the data flags name another) with its three splits, and its data settings."""
    from ..study.runner import DataSettings, complete_splits

    corpus = corpus_from_arguments(data)
    with user_errors(ValueError):
        corpus, held_out = complete_splits(corpus, data.validation_split_percentage)
    for name in held_out:
        inform(f"No {name} split: holding out {len(corpus[name])} training sentences for it.")
    corpus["train"] = first_examples(corpus["train"], data.max_train_examples)
    for name in (PROBE_SPLIT, EVAL_SPLIT):
        corpus[name] = first_examples(corpus[name], data.max_eval_examples)
    with user_errors(ValueError, KeyError):
        settings = DataSettings.of_preset(
            preset, corpus=_corpus_name(data), held_out=tuple(held_out), **_data_settings_given(data)
        )
    return corpus, settings


def _check_counts(study: StudyArguments) -> None:
    for flag, value in (("--jobs", study.jobs), ("--threads", study.threads), ("--seeds", study.seeds)):
        if value is not None and value < 1:
            raise CliError(f"{flag} must be at least 1, got {value}.")


def run_study_command(study: StudyArguments, budget_args: Any, data: DataArguments, extra: argparse.Namespace) -> int:
    from ..study import get_study_preset, read_meta, report, run_and_record
    from ..study.record import relative_path
    from ..study.report import PLOTS_HINT, import_pyplot
    from ..study.runner import StudyPaths, check_method

    quiet_library_logs(show_progress=False)
    _check_counts(study)
    with user_errors(ValueError):
        preset = get_study_preset(study.preset)
        budget = preset.budget(study.quick, **dataclasses.asdict(budget_args))
        specs = list(dict.fromkeys(extra.methods)) or preset.default_methods()
        for spec in specs:
            check_method(spec, budget, preset.name)
    if study.plots:
        try:
            import_pyplot()  # before training: a study that ends without its plots would have to be reported again
        except ImportError as error:
            raise CliError(f"the study's plots need matplotlib: {PLOTS_HINT}, or pass --no_plots.") from error
    out = Path(study.out) if study.out else _default_out(preset.name, study.quick)
    paths = StudyPaths(out, Path(study.work_dir) if study.work_dir else Path("runs") / out.name)
    doc = Path(study.doc) if study.doc else None
    command = command_line((study, budget_args, data), list(extra.methods))
    if study.report_only:
        meta = read_meta(out)
    else:
        corpus, settings = _study_corpus(data, preset.name)
        seeds = range(study.seeds or preset.seed_count(study.quick))
        try:
            meta = run_and_record(
                specs,
                seeds,
                budget,
                paths,
                command,
                jobs=study.jobs,
                threads=study.threads,
                keep_checkpoints=study.keep_checkpoints,
                corpus=corpus,
                settings=settings,
                preset_name=preset.name,
            )
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"finished runs are kept in {paths.out / 'finished'} and unfinished ones' checkpoints in "
                f"{paths.work}; run the same command again to continue"
            ) from None
    meta.setdefault("command", command)
    meta.setdefault("out_rel", relative_path(out))
    text = report(out, specs, doc, meta, plots=study.plots)
    if text is None:
        raise CliError(
            f"no finished runs in {out / 'finished'}: run the study without --report_only first, or pass the --out "
            "of a study that has run."
        )
    print(text)
    return 0


STUDY_COMMAND = Command(
    name="study",
    usage=f"{PROG} study [METHOD ...] [--preset NAME] [--quick] [--report_only] [--out DIR] [--doc PAGE] [options]",
    summary="Run the posterior-collapse study (MINE-VAE against the VAE baselines) and report it as tables and plots.",
    examples="""methods (each trains the preset's model from the same initial weights per seed; only beta and lambda
schedules differ, and every method trains the critic, lambda = 0 for the baselines):
"""
    + "\n".join(f"  {name.ljust(12)} {method.label} ({method.role})" for name, method in METHODS.items())
    + """

A run's results are written to OUT/finished/ when it ends; running the same command again skips finished runs and
resumes unfinished ones from their newest checkpoint. The report (stdout, and --doc's page) gives mean +- std over
seeds of IW-NLL, PPL, KL, MI, active units, BLEU and the critic's bound, and checks MINE-VAE's claim: more active
units, MI and BLEU than the VAE and beta-annealing (each by more than the spread over seeds) at an IW-NLL within 2% of
the best baseline.

examples:
  mine-vae study --quick --jobs 2 --threads 1       # 9 methods, 1 seed, 320 steps: ~15 min on 2 idle cores
  mine-vae study --jobs 2 --threads 1               # the CPU study: 3 seeds, 640 steps (<= 2 h on 2 idle cores)
  mine-vae study --preset minilm-smollm2 --quick    # the pretrained pair: 5 methods, 1 seed, 150 steps (~25 min)
  mine-vae study --preset minilm-smollm2            # 2 seeds x 700 steps (~3 h on 2 idle cores)
  mine-vae study vae mine-dv mine-dv@mi_weight=5 --quick    # two methods and a variant of one
  mine-vae study --quick --train_file train.txt --test_file test.txt   # on your corpus (validation held out)
  mine-vae study --quick --report_only              # rebuild the table and plots from the finished runs
  mine-vae study --quick --out bench/results/study-quick --doc docs/benchmarks.md   # this repository's page
  mine-vae study --preset tiny --out /tmp/study     # seconds a run: a smoke test""",
    dataclasses=(StudyArguments, BudgetArguments, DataArguments),
    run=run_study_command,
    positionals=_positionals,
)
