"""The posterior-collapse study on the Penn Treebank: MINE-VAE against the standard baselines, side by side.

Every method trains the model of the `small` preset (word-level BERT 2x128 encoder, GPT-2 3x256 decoder, latent 32,
built by `mine_vae.presets.build_from_scratch`) on the same data, for the same number of steps, from the same
initial weights per seed; only the β / λ schedules differ. Each method still trains the critic (λ = 0 for the
baselines), so the critic's bound is reported for every method. Each run is evaluated on the PTB test split with
`mine_vae.evaluation.evaluate_vae` (IW-NLL, PPL, KL, MI, active units, the bound; BLEU on a subset).

A run's results and curves are written as one JSON file when it ends. Rerunning skips finished runs and resumes
unfinished ones from their newest complete checkpoint, so a study can be carried across interruptions. At the end the
study writes its section of `docs/benchmarks.md`: the table (mean ± std over seeds), the claims check, the budget and
hardware, and PNG plots (KL and the bound over training, active units per method).

Methods are named on the command line; `NAME@key=value,...` runs a variant of a method with settings overridden
(any `MineVaeConfig` or `MineVaeTrainingArguments` field, or `critic_warmup_ratio` / `mi_warmup_ratio` /
`kl_warmup_ratio` as fractions of the steps), e.g. `mine-xi1@mi_weight=3`: this is how the pilots were run.

Usage:
    python bench/study_ptb.py --quick                 # 1 seed, 8 methods: <= 20 min on 2 idle cores
    python bench/study_ptb.py                         # 3 seeds: the CPU tier (<= 2 h on 2 idle cores)
    python bench/study_ptb.py --quick --jobs 2 --threads 1   # two runs at a time, one thread each
    python bench/study_ptb.py --report-only --quick   # rewrite the table and plots from the saved results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
PRESET = "small"
EVAL_SPLIT = "test"
PROBE_SPLIT = "validation"
FINISHED = "finished"  # results of finished runs, under the study's folder (not "runs/": .gitignore drops those)

# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
# MINE settings of the study (see docs/benchmarks.md, "Choosing the MINE settings", for the pilots behind them).
MINE_BETA1 = {"mi_weight": 3.0}  # λ with β = 1 throughout: the MI term must outweigh the KL's pull on z
MINE_ANNEAL = {"mi_weight": 3.0}  # λ on top of β-annealing (λ = 1 collapsed in the pilots)
CRITIC = {"critic_learning_rate": 1e-3, "critic_steps": 1}  # every method, baselines included
CRITIC_WARMUP_RATIO = 0.05  # the critic learns alone for the first 5% of the steps, then λ enters at full weight
KL_WARMUP_RATIO = 0.5  # β-annealing: β rises linearly from 0 to 1 over the first half of the steps
OPTIMUS = {"kl_schedule": "cyclical", "kl_cycles": 4, "free_bits": 0.5}  # Li et al. 2020 (Fu et al. 2019 cycles)
_CONSTANT_BETA = {"kl_schedule": "constant", "free_bits": 0.0}
_ANNEALED_BETA = {"kl_schedule": "linear", "kl_warmup_ratio": KL_WARMUP_RATIO, "free_bits": 0.0}
_WATCHING = {"mi_weight": 0.0, "xi": "dv"}  # λ = 0: the critic only measures, with the DV bound (stable, tightest)
_MINE_SCHEDULE = {"critic_warmup_ratio": CRITIC_WARMUP_RATIO, "mi_warmup_ratio": 0.0, "mi_schedule": "linear"}


@dataclass(frozen=True)
class Method:
    """One line of the table: `model` overrides `MineVaeConfig`, `training` the `MineVaeTrainingArguments`."""

    name: str
    label: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    role: str  # "baseline", "mine" or "reference"


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("vae", "VAE (β = 1)", {"kl_weight": 1.0, **_WATCHING}, _CONSTANT_BETA, "baseline"),
        Method("beta-anneal", "β-annealing", {"kl_weight": 1.0, **_WATCHING}, _ANNEALED_BETA, "baseline"),
        Method("optimus", "Optimus: cyclical β + free bits", {"kl_weight": 1.0, **_WATCHING}, OPTIMUS, "baseline"),
        Method(
            "mine-xi1",
            "MINE-VAE ξ = 1",
            {"kl_weight": 1.0, "xi": 1.0, **MINE_BETA1},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-dv",
            'MINE-VAE ξ = "dv"',
            {"kl_weight": 1.0, "xi": "dv", **MINE_BETA1},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-ema",
            'MINE-VAE ξ = "ema"',
            {"kl_weight": 1.0, "xi": "ema", **MINE_BETA1},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-anneal",
            "MINE-VAE ξ = 1 + β-annealing",
            {"kl_weight": 1.0, "xi": 1.0, **MINE_ANNEAL},
            {**_ANNEALED_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method("ae", "autoencoder-like (β = 0)", {"kl_weight": 0.0, **_WATCHING}, _CONSTANT_BETA, "reference"),
    )
}
# Settings given as fractions of the run's steps, turned into step counts once the budget is known.
_RATIOS = {"critic_warmup_ratio": "critic_warmup_steps", "mi_warmup_ratio": "mi_warmup_steps"}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_method(spec: str) -> Method:
    """`NAME` or `NAME@key=value,...`: a method of `METHODS`, with settings overridden for a variant."""
    from mine_vae import MineVaeConfig
    from mine_vae.training_args import MineVaeTrainingArguments

    name, _, overrides = spec.partition("@")
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; use one of {', '.join(METHODS)} (optionally NAME@key=value,...).")
    base = METHODS[name]
    if not overrides:
        return base
    model, training = dict(base.model), dict(base.training)
    config_fields = {f.name for f in dataclasses.fields(MineVaeConfig)} - {"encoder", "decoder"}
    training_fields = {f.name for f in dataclasses.fields(MineVaeTrainingArguments)} | set(_RATIOS)
    for item in overrides.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Method variant {spec!r}: {item!r} is not key=value.")
        if key in training_fields:
            training[key] = _parse_value(value)
        elif key in config_fields:
            model[key] = _parse_value(value)
        else:
            raise ValueError(f"Method variant {spec!r}: {key!r} is neither a MineVaeConfig nor a training setting.")
    return Method(spec, f"{base.label} [{overrides}]", model, training, base.role)


# --------------------------------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """What every run gets: optimizer steps, and how each run is evaluated."""

    steps: int
    eval_examples: int  # test sentences for IW-NLL, PPL, KL, MI, AU and the bound (the first N of the split)
    importance_samples: int  # K of the importance-weighted NLL
    bleu_examples: int  # test sentences reconstructed greedily for BLEU
    probe_examples: int = 256  # validation sentences whose posterior means give AU / MI at every log step
    log_points: int = 20  # log lines (curve points) per run
    saves: int = 4  # checkpoints per run (resume points)
    lr_warmup_ratio: float = 0.08  # the preset's 100 of 1200 steps
    eval_split: str = EVAL_SPLIT  # "validation" for pilots that choose settings: the test split stays unseen

    @property
    def logging_steps(self) -> int:
        return max(1, self.steps // self.log_points)

    @property
    def save_steps(self) -> int:
        return max(1, self.steps // self.saves)


QUICK = Budget(steps=320, eval_examples=500, importance_samples=5, bleu_examples=100)
FULL = Budget(steps=640, eval_examples=1000, importance_samples=10, bleu_examples=200)


# --------------------------------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class StudyData:
    """The corpus as text (the vocabulary is read from the training text) and tokenised for the small preset."""

    train_texts: list[str]
    tokenized: Any  # DatasetDict with train / validation / test
    counts: dict[str, int]


def prepare_data(preset_name: str = PRESET, corpus: Any = None) -> StudyData:
    """Load the corpus (PTB by default) and tokenise it the way `mine-vae train --preset <preset_name>` does."""
    import datasets

    from mine_vae.data import load_corpus, tokenize_corpus
    from mine_vae.presets import build_from_scratch, get_preset
    from mine_vae.processing_mine_vae import MineVaeProcessor

    datasets.disable_progress_bars()
    preset = get_preset(preset_name)
    corpus = load_corpus() if corpus is None else load_corpus(dataset=corpus)
    missing = {"train", PROBE_SPLIT, EVAL_SPLIT} - set(corpus)
    if missing:
        raise ValueError(f"The study needs train, {PROBE_SPLIT} and {EVAL_SPLIT} splits; missing {sorted(missing)}.")
    texts = list(corpus["train"]["text"])
    max_length = preset.data["max_length"]
    _, processor = build_from_scratch(
        preset, texts, max_length, preset.data.get("vocab_size"), preset.data.get("min_frequency", 1)
    )
    untruncated = MineVaeProcessor(processor.encoder_tokenizer, processor.decoder_tokenizer, 10**9, 10**9)
    tokenized, counts = tokenize_corpus(
        corpus, untruncated.encode_texts, max_length + 2, max_length, overlength=preset.data["overlength"]
    )
    return StudyData(texts, tokenized, counts)


def build_model(preset_name: str, data: StudyData, method: Method, seed: int) -> tuple[Any, Any]:
    """The preset's model and processor with the method's config; the same initial weights for every method."""
    from transformers import set_seed

    from mine_vae.presets import build_from_scratch, get_preset

    preset = get_preset(preset_name)
    set_seed(seed)
    model, processor = build_from_scratch(
        preset,
        data.train_texts,
        preset.data["max_length"],
        preset.data.get("vocab_size"),
        preset.data.get("min_frequency", 1),
        **method.model,
    )
    processor.model_input_names = ["input_ids", "attention_mask"]  # read by the length-grouped sampler
    return model, processor


def training_kwargs(preset_name: str, method: Method, budget: Budget, seed: int, output_dir: Path) -> dict[str, Any]:
    """The preset's training defaults, the study's budget and critic settings, then the method's schedules."""
    from mine_vae.presets import get_preset

    kwargs: dict[str, Any] = {
        **get_preset(preset_name).training,
        "output_dir": str(output_dir),
        "seed": seed,
        "max_steps": budget.steps,
        "warmup_steps": round(budget.lr_warmup_ratio * budget.steps),
        "logging_steps": budget.logging_steps,
        "save_steps": budget.save_steps,
        "save_strategy": "steps",
        "save_total_limit": 1,
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "critic_warmup_steps": 0,
        "mi_warmup_steps": 0,
        **CRITIC,
    }
    for key, value in method.training.items():
        if key in _RATIOS:
            kwargs[_RATIOS[key]] = round(float(value) * budget.steps)
        else:
            kwargs[key] = value
    return kwargs


# --------------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyPaths:
    """`out`: results (JSON, PNG; small, kept in git). `work`: checkpoints (large, deleted once a run is done)."""

    out: Path
    work: Path

    def result(self, spec: str, seed: int) -> Path:
        return self.out / FINISHED / f"{slug(spec)}-seed{seed}.json"

    def run_dir(self, spec: str, seed: int) -> Path:
        return self.work / f"{slug(spec)}-seed{seed}"


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec)


def _probe_stats(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Active units and the aggregate-posterior MI of the probe sentences (encoder only: cheap)."""
    from mine_vae.evaluation import active_units, mutual_information

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            posterior = model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    finally:
        model.train(was_training)
    mu, logvar = posterior.mu.float().cpu(), posterior.logvar.float().cpu()
    generator = torch.Generator().manual_seed(0)
    return {
        "probe_au": float(active_units(mu).count),
        "probe_mi": round(mutual_information(mu, logvar, generator=generator), 4),
    }


def _study_trainer_class() -> type:
    from transformers import TrainerCallback

    from mine_vae.trainer import MineVaeTrainer

    class StudyTrainer(MineVaeTrainer):
        """Adds the probe's active units and MI to every training log line (the curves of the plots)."""

        def __init__(self, *args: Any, probe: Mapping[str, torch.Tensor], label: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.probe = probe
            self.remove_callback(_printer_callback())
            self.add_callback(_ProgressLine(label))

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(_probe_stats(self._vae, self.probe))
            super().log(logs, start_time)

    class _ProgressLine(TrainerCallback):
        def __init__(self, label: str) -> None:
            self.label = label

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                keys = ("reconstruction", "kl", "mi_bound", "probe_au", "beta", "lambda")
                shown = " ".join(f"{k}={logs[k]:.3g}" for k in keys if k in logs)
                print(f"[{self.label}] step {state.global_step}/{state.max_steps} {shown}", flush=True)

    return StudyTrainer


def _printer_callback() -> type:
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback


def _loader(dataset: Any, processor: Any, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    from mine_vae.processing_mine_vae import MineVaeDataCollator

    columns = dataset.select_columns(["input_ids", "decoder_token_ids"])
    return DataLoader(columns, batch_size=batch_size, collate_fn=MineVaeDataCollator(processor), shuffle=False)


def _first(dataset: Any, count: int) -> Any:
    return dataset.select(range(min(count, len(dataset))))


def evaluate_run(model: Any, processor: Any, data: StudyData, budget: Budget, batch_size: int) -> dict[str, float]:
    """Test-split metrics: `evaluate_vae` on the first `eval_examples` sentences, BLEU on the first `bleu_examples`."""
    from mine_vae.evaluation import count_words, evaluate_vae

    test = _first(data.tokenized[budget.eval_split], budget.eval_examples)
    metrics = evaluate_vae(
        model,
        _loader(test, processor, batch_size),
        num_importance_samples=budget.importance_samples,
        word_counts=count_words(test["text"]),
        seed=0,
    )
    subset = _first(test, budget.bleu_examples)
    reconstructed = evaluate_vae(
        model,
        _loader(subset, processor, batch_size),
        num_importance_samples=1,
        compute_bleu=True,
        processor=processor,
        seed=0,
    )
    metrics["bleu"] = reconstructed["bleu"]
    metrics["bleu_examples"] = float(len(subset))
    return metrics


_CURVE_KEYS = ("loss", "reconstruction", "kl", "mi_bound", "critic_loss", "beta", "lambda", "probe_au", "probe_mi")


def curves(log_history: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The training log as columns: step and each logged term (NaN where a line lacks it)."""
    lines = [line for line in log_history if "loss" in line and "step" in line]
    table: dict[str, list[float]] = {"step": [float(line["step"]) for line in lines]}
    for key in _CURVE_KEYS:
        table[key] = [float(line.get(key, math.nan)) for line in lines]
    return table


def run_one(
    spec: str,
    seed: int,
    budget: Budget,
    paths: StudyPaths,
    data: StudyData,
    preset_name: str = PRESET,
    callbacks: Sequence[Any] = (),
    keep_checkpoints: bool = False,
) -> dict[str, Any] | None:
    """Train and evaluate one (method, seed), resuming from its newest complete checkpoint; write its results JSON.

    Returns the results, or None when training stopped before the budget's last step (a callback asked it to, as
    an interruption would): the checkpoints stay, and the next call resumes from them.
    """
    from mine_vae.trainer import last_complete_checkpoint
    from mine_vae.training_args import MineVaeTrainingArguments

    result_path = paths.result(spec, seed)
    if result_path.is_file():
        return json.loads(result_path.read_text())
    method = resolve_method(spec)
    run_dir = paths.run_dir(spec, seed)
    checkpoint = last_complete_checkpoint(str(run_dir))
    model, processor = build_model(preset_name, data, method, seed)
    args = MineVaeTrainingArguments(**training_kwargs(preset_name, method, budget, seed, run_dir))
    probe_set = _first(data.tokenized[PROBE_SPLIT], budget.probe_examples)
    probe = processor.pad(probe_set.select_columns(["input_ids", "decoder_token_ids"]).to_list())
    trainer = _study_trainer_class()(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=data.tokenized["train"],
        probe=probe,
        label=f"{spec} seed {seed}",
        callbacks=list(callbacks),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if trainer.state.global_step < budget.steps:
        return None
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = evaluate_run(model, processor, data, budget, args.per_device_eval_batch_size)
    result = {
        "method": spec,
        "label": method.label,
        "role": method.role,
        "preset": preset_name,
        "seed": seed,
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint and Path(checkpoint).name,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(train_cpu, 1),  # CPU time: what the run costs whatever else the machine runs
        "eval_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "threads": torch.get_num_threads(),
        "model": dict(method.model),
        "architecture": architecture(model),
        "training": {k: v for k, v in args.to_dict().items() if k in _REPORTED_ARGS},
        "budget": dataclasses.asdict(budget),
        "metrics": metrics,
        "curves": curves(trainer.state.log_history),
    }
    _write_json(result_path, result)
    if not keep_checkpoints:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


_CONFIG_KEYS = (
    "latent_size",
    "pooling",
    "latent_injection",
    "critic_hidden_size",
    "critic_num_layers",
    "xi",
    "kl_weight",
    "mi_weight",
    "free_bits",
)
_SIDE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def architecture(model: Any) -> dict[str, Any]:
    """What the run actually trained (the preset may change between studies): sizes, dropout, ξ, β, λ, parameters."""
    config = model.config
    summary: dict[str, Any] = {key: getattr(config, key) for key in _CONFIG_KEYS}
    for side in ("encoder", "decoder"):
        sub = getattr(config, side)
        summary[side] = {"model_type": sub.model_type} | {k: getattr(sub, k) for k in _SIDE_KEYS if hasattr(sub, k)}
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    return summary


_REPORTED_ARGS = (
    "max_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "kl_schedule",
    "kl_warmup_ratio",
    "kl_cycles",
    "free_bits",
    "critic_learning_rate",
    "critic_steps",
    "critic_warmup_steps",
    "mi_schedule",
    "mi_warmup_steps",
)


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write to a temporary file, then rename: an interruption never leaves a half-written results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------------------------------
# The whole study
# --------------------------------------------------------------------------------------------------------------------
_WORKER_DATA: dict[str, StudyData] = {}


def _worker_init(preset_name: str, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    _quiet()
    _WORKER_DATA[preset_name] = prepare_data(preset_name)


def _worker_run(spec: str, seed: int, budget: Budget, paths: StudyPaths, preset_name: str, keep: bool) -> str:
    result = run_one(spec, seed, budget, paths, _WORKER_DATA[preset_name], preset_name, keep_checkpoints=keep)
    return "done" if result is not None else "stopped"


def run_study(
    specs: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    paths: StudyPaths,
    data: StudyData | None = None,
    preset_name: str = PRESET,
    jobs: int = 1,
    threads: int | None = None,
    keep_checkpoints: bool = False,
) -> list[tuple[str, int]]:
    """Every (method, seed) not finished yet, `jobs` at a time; returns the pairs that ran (skipped ones excluded)."""
    for spec in specs:
        resolve_method(spec)  # fail on a typo before hours of training
    todo = [(spec, seed) for seed in seeds for spec in specs if not paths.result(spec, seed).is_file()]
    for spec, seed in [(spec, seed) for seed in seeds for spec in specs if (spec, seed) not in todo]:
        print(f"[{spec} seed {seed}] done already: {paths.result(spec, seed)}", flush=True)
    if not todo:
        return []
    if jobs <= 1:
        if threads:
            torch.set_num_threads(threads)
        data = data or prepare_data(preset_name)
        for spec, seed in todo:
            run_one(spec, seed, budget, paths, data, preset_name, keep_checkpoints=keep_checkpoints)
        return todo
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, context, initializer=_worker_init, initargs=(preset_name, threads)) as pool:
        futures = [
            pool.submit(_worker_run, spec, seed, budget, paths, preset_name, keep_checkpoints) for spec, seed in todo
        ]
        for future in futures:
            future.result()
    return todo


def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((out / FINISHED).glob("*.json"))]


# --------------------------------------------------------------------------------------------------------------------
# Summary, claims and plots
# --------------------------------------------------------------------------------------------------------------------
TABLE_METRICS = (
    ("nll", "IW-NLL ↓", 2),
    ("ppl_word", "PPL (word) ↓", 1),
    ("kl", "KL", 2),
    ("mi", "MI ↑", 2),
    ("au", "AU ↑", 1),
    ("bleu", "BLEU ↑", 1),
    ("mi_bound", "bound", 2),
    ("reconstruction", "rec.", 1),
)


@dataclass
class Summary:
    """Mean and standard deviation over seeds of each metric, per method (in the order methods were given)."""

    label: str
    role: str
    seeds: list[int]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)


def _nan_to_none(values: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a standard deviation over one seed is written as null."""
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def summarize(results: Sequence[Mapping[str, Any]], order: Sequence[str] | None = None) -> dict[str, Summary]:
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_method.setdefault(result["method"], []).append(result)
    names = [m for m in (order or []) if m in by_method] + sorted(set(by_method) - set(order or []))
    summaries = {}
    for name in names:
        runs = by_method[name]
        summary = Summary(runs[0]["label"], runs[0]["role"], sorted(r["seed"] for r in runs))
        for key in sorted({k for r in runs for k in r["metrics"]}):  # sorted: the same file from the same results
            values = [float(r["metrics"][key]) for r in runs if key in r["metrics"]]
            summary.mean[key] = statistics.fmean(values)
            summary.std[key] = statistics.stdev(values) if len(values) > 1 else math.nan
        summaries[name] = summary
    return summaries


@dataclass(frozen=True)
class Claim:
    method: str
    au: bool
    mi: bool
    nll: bool
    detail: str

    @property
    def holds(self) -> bool:
        return self.au and self.mi and self.nll


def check_claims(summaries: Mapping[str, Summary], tolerance: float = 0.02) -> list[Claim]:
    """The issue's claim for each MINE method: more AU and higher MI than the VAE and β-annealing, and an IW-NLL
    within `tolerance` of the best baseline's (the baselines being VAE, β-annealing and Optimus)."""
    rivals = [summaries[name] for name in ("vae", "beta-anneal") if name in summaries]
    baselines = [s for s in summaries.values() if s.role == "baseline"]
    if not rivals or not baselines:
        return []
    best_nll = min(s.mean["nll"] for s in baselines)
    claims = []
    for name, summary in summaries.items():
        if summary.role != "mine":
            continue
        au = all(summary.mean["au"] > rival.mean["au"] for rival in rivals)
        mi = all(summary.mean["mi"] > rival.mean["mi"] for rival in rivals)
        gap = summary.mean["nll"] / best_nll - 1
        detail = (
            f"AU {summary.mean['au']:.1f} vs {_joined(r.mean['au'] for r in rivals)}; "
            f"MI {summary.mean['mi']:.2f} vs {_joined((r.mean['mi'] for r in rivals), 2)}; "
            f"NLL {gap:+.1%} vs the best baseline ({best_nll:.2f})"
        )
        claims.append(Claim(name, au, mi, gap <= tolerance, detail))
    return claims


def _joined(values: Iterable[float], digits: int = 1) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def _mean_curves(results: Sequence[Mapping[str, Any]], method: str, key: str) -> tuple[list[float], list[float]]:
    runs = [r["curves"] for r in results if r["method"] == method]
    steps = runs[0]["step"]
    values = [statistics.fmean(run[key][i] for run in runs) for i in range(min(len(run["step"]) for run in runs))]
    return steps[: len(values)], values


BOUND_FLOOR = -1.0  # the bound's axis is cut here: an exploding ξ = 1 bound (-1e9) would flatten every other curve


def plot(results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], out: Path) -> list[Path]:
    """`curves.png`: KL, the bound and probe AU over training per method; `active_units.png`: final AU per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {
        name: {"color": colors[i % len(colors)], "linestyle": "-" if i < len(colors) else "--"}
        for i, name in enumerate(summaries)
    }
    paths = [
        _plot_curves(plt, results, summaries, styles, out),
        _plot_active_units(plt, results, summaries, styles, out),
    ]
    return paths


Styles = Mapping[str, Mapping[str, str]]


def _plot_curves(
    plt: Any, results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], styles: Styles, out: Path
) -> Path:
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = ("kl", "mi_bound", "probe_au")
    lowest, highest = math.inf, -math.inf
    for name, summary in summaries.items():
        for axis, key in zip(axes, panels):
            steps, values = _mean_curves(results, name, key)
            axis.plot(steps, values, label=summary.label, **styles[name])
            if key == "mi_bound":
                lowest, highest = min([lowest, *values]), max([highest, *values])
    probe = results[0]["budget"]["probe_examples"]
    titles = (
        "KL (nats, training batches; symlog)",
        "critic's bound (nats, training batches)" + (f"; axis cut at {BOUND_FLOOR:g}" if lowest < BOUND_FLOOR else ""),
        f"active units ({probe} validation sentences)",
    )
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=0.1)
    if lowest < BOUND_FLOOR:
        axes[1].set_ylim(BOUND_FLOOR, highest + 0.1 * (highest - BOUND_FLOOR))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4), 1, 1))
    path = out / "curves.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


def _plot_active_units(
    plt: Any, results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], styles: Styles, out: Path
) -> Path:
    figure, axis = plt.subplots(figsize=(8, 3.8))
    names = list(summaries)
    means = [summaries[n].mean["au"] for n in names]
    errors = [0 if math.isnan(summaries[n].std["au"]) else summaries[n].std["au"] for n in names]
    bars = axis.bar(range(len(names)), means, yerr=errors, color=[styles[n]["color"] for n in names])
    axis.bar_label(bars, labels=[f"{m:.0f}" for m in means], fontsize=8)
    axis.set_xticks(range(len(names)), [summaries[n].label for n in names], rotation=25, ha="right", fontsize=8)
    axis.set_ylim(0, max(means) * 1.15 + 1)
    split = results[0]["budget"].get("eval_split", EVAL_SPLIT)
    axis.set_ylabel(f"active units ({split})")
    axis.set_title("Active units per method (mean ± std over seeds)", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out / "active_units.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------
def _cell(summary: Summary, key: str, digits: int) -> str:
    if key not in summary.mean:
        return "–"
    mean, std = summary.mean[key], summary.std[key]
    return _number(mean, digits) if math.isnan(std) else f"{_number(mean, digits)} ± {_number(std, digits)}"


def _number(value: float, digits: int) -> str:
    """Fixed point, or scientific notation for the values an exploding bound produces."""
    return f"{value:.2e}" if abs(value) >= 1e5 else f"{value:.{digits}f}"


def results_table(summaries: Mapping[str, Summary]) -> str:
    header = "| method | seeds | " + " | ".join(title for _, title, _ in TABLE_METRICS) + " |"
    rule = "|" + "---|" * (len(TABLE_METRICS) + 2)
    rows = [
        f"| {s.label} | {len(s.seeds)} | " + " | ".join(_cell(s, key, d) for key, _, d in TABLE_METRICS) + " |"
        for s in summaries.values()
    ]
    return "\n".join([header, rule, *rows])


def claims_text(claims: Sequence[Claim]) -> str:
    if not claims:
        return "The claims need the VAE, β-annealing and at least one MINE-VAE method in the study."
    lines = [
        "| MINE-VAE method | more AU than VAE and β-annealing | higher MI than both | IW-NLL within 2% of the best "
        "baseline | numbers |",
        "|---|---|---|---|---|",
    ]
    mark = {True: "yes", False: "**no**"}
    for claim in claims:
        lines.append(f"| {claim.method} | {mark[claim.au]} | {mark[claim.mi]} | {mark[claim.nll]} | {claim.detail} |")
    holding = [c.method for c in claims if c.holds]
    verdict = (
        f"**The claim holds** for {', '.join(holding)}."
        if holding
        else "**The claim does not hold** for any MINE-VAE method in this run."
    )
    return "\n".join([verdict, "", *lines])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    import transformers

    train = sum(r["train_seconds"] for r in results)
    evaluation = sum(r["eval_seconds"] for r in results)
    cpu = sum(r.get("train_cpu_seconds", 0) + r.get("eval_cpu_seconds", 0) for r in results)
    cores = os.cpu_count() or 1
    resumed = sum(1 for r in results if r.get("resumed_from"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu_model()}"
    threads = sorted({r.get("threads") for r in results if r.get("threads")})
    invocations = meta.get("invocations", [])
    wall = sum(i["wall_seconds"] for i in invocations)
    loads = ", ".join(f"{i['load_start']}→{i['load_end']}" for i in invocations)
    codes = ", ".join(dict.fromkeys(i["code"] for i in invocations if "code" in i))
    code = f"; code: {codes}" if codes else ""  # recorded since the study began to note its commit
    lines = [
        f"- Hardware: {device}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}; torch threads per run: "
        f"{', '.join(map(str, threads)) or '?'}; runs at a time: {meta.get('jobs', 1)}.",
        f"- Wall time of the study: {wall / 60:.1f} min over {len(invocations)} invocation(s) (1-minute load "
        f"average at start→end of each: {loads or '?'}; other processes shared the machine when it exceeded the "
        f"core count){code}."
        if invocations
        else "- Wall time of the study: not recorded.",
        f"- Summed over runs: training {train / 60:.1f} min, evaluation {evaluation / 60:.1f} min of wall time; "
        f"{cpu / 60:.1f} min of CPU time (what the runs cost whatever else the machine was doing: about "
        f"{cpu / 60 / cores:.0f} min of wall time on {cores} idle cores with one run per core)"
        + (f"; {resumed} run(s) resumed from a checkpoint (time before the interruption not counted)" * bool(resumed))
        + ".",
    ]
    return "\n".join(lines)


def _architecture_text(arch: Mapping[str, Any] | None, preset: str) -> str:
    if not arch:
        return ""
    encoder, decoder = arch["encoder"], arch["decoder"]
    return (
        f"- Model (the `{preset}` preset's, as trained): {encoder['model_type']} {encoder.get('num_hidden_layers')}×"
        f"{encoder.get('hidden_size')} encoder (dropout {encoder.get('hidden_dropout_prob')}), {decoder['model_type']} "
        f"{decoder.get('n_layer')}×{decoder.get('n_embd')} decoder (dropout {decoder.get('resid_pdrop')}), vocabulary "
        f"{decoder.get('vocab_size')}, latent {arch['latent_size']} ({arch['pooling']} pooling, injected as "
        f"{arch['latent_injection']}), critic {arch['critic_num_layers']}×{arch['critic_hidden_size']}; "
        f"{arch['parameters']:,} parameters.\n"
    )


def budget_text(results: Sequence[Mapping[str, Any]]) -> str:
    budget = results[0]["budget"]
    training = results[0]["training"]
    return (
        _architecture_text(results[0].get("architecture"), results[0].get("preset", PRESET))
        + f"- Budget per run: {budget['steps']} optimizer steps of {training['per_device_train_batch_size']} sentences "
        f"(learning rate {training['learning_rate']}, {training['lr_scheduler_type']}, {training['warmup_steps']} "
        f"warm-up steps); critic: AdamW lr {training['critic_learning_rate']}, k = {training['critic_steps']} "
        f"update(s) per step, trained in every method.\n"
        f"- Evaluation: the first {budget['eval_examples']} sentences of the PTB "
        f"{budget.get('eval_split', EVAL_SPLIT)} split (after dropping "
        f"sentences over 40 words), IW-NLL with K = {budget['importance_samples']} importance samples (nats per "
        f"sentence), PPL per word (+1 end-of-sentence), KL and the critic's bound in nats, MI (aggregate posterior) "
        f"and active units (Var[μ] > 0.01) over those sentences, BLEU of greedy reconstructions from the posterior "
        f"mean on the first {budget['bleu_examples']}. Curves: training-batch means every "
        f"{budget['steps'] // budget['log_points']} steps; AU on {budget['probe_examples']} validation sentences."
    )


def settings_table(results: Sequence[Mapping[str, Any]], order: Sequence[str]) -> str:
    seen: dict[str, Mapping[str, Any]] = {}
    for result in results:
        seen.setdefault(result["method"], result)
    lines = [
        "| method | β (peak), schedule | free bits | λ, ξ | critic warm-up, λ ramp (steps) |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in order if n in seen] + sorted(set(seen) - set(order)):
        model, training = seen[name]["model"], seen[name]["training"]
        schedule = training["kl_schedule"]
        if schedule == "linear":
            schedule += f" over {training['kl_warmup_ratio']:.0%}"
        elif schedule == "cyclical":
            schedule += f", {training['kl_cycles']} cycles"
        lam = model.get("mi_weight", 0.0)
        xi = model.get("xi", "the preset's")
        mine = f"{lam}, {xi}" if lam else f"0 (the critic only watches, ξ = {xi})"
        warmup = f"{training['critic_warmup_steps']}, {training['mi_warmup_steps']}" if lam else "–"
        lines.append(
            f"| {seen[name]['label']} | {model.get('kl_weight', 1.0)}, {schedule} | {training['free_bits']} | {mine} "
            f"| {warmup} |"
        )
    return "\n".join(lines)


def section_markdown(
    name: str,
    results: Sequence[Mapping[str, Any]],
    order: Sequence[str],
    plots: Sequence[Path],
    meta: Mapping[str, Any],
    doc_dir: Path = DOC.parent,
) -> str:
    summaries = summarize(results, order)
    figures = "\n".join(f"![{path.stem}]({os.path.relpath(path, doc_dir).replace(os.sep, '/')})" for path in plots)
    return "\n\n".join(
        [
            f"### Results: `{name}`",
            f"Regenerate with `{meta.get('command', 'python bench/study_ptb.py')}` (finished runs are kept in "
            f"`{meta.get('out_rel', name)}/{FINISHED}/` and skipped; delete them to train again).",
            results_table(summaries),
            "IW-NLL, KL, bound and rec. (reconstruction −log p(x|z), one sample) in nats per sentence.",
            "#### The claims",
            claims_text(check_claims(summaries)),
            "#### Settings, budget and hardware",
            settings_table(results, order),
            budget_text(results),
            hardware(results, meta),
            figures,
        ]
    )


_DOC_HEAD = """# Benchmarks

Everything on this page between the `BEGIN`/`END` markers is written by a script (`bench/study_ptb.py`,
`bench/speed.py`); each section says how to regenerate it. The text outside the markers is the commentary.
"""


def write_section(doc: Path, key: str, text: str) -> None:
    """Replace the section between `<!-- BEGIN key -->` and `<!-- END key -->` in `doc` (appended when absent)."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    page = doc.read_text() if doc.is_file() else _DOC_HEAD
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    page = pattern.sub(lambda _: block, page) if pattern.search(page) else page.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(page)


def report(out: Path, order: Sequence[str], doc: Path | None, meta: Mapping[str, Any]) -> str | None:
    """Write the plots and the page section from the results in `out`; returns the section (None without results)."""
    results = load_results(out)
    if not results:
        return None
    summaries = summarize(results, order)
    plots = plot(results, summaries, out)
    key = _section_key(out)
    text = section_markdown(key, results, order, plots, meta, (doc or DOC).parent)
    (out / "summary.json").write_text(
        json.dumps(
            {
                name: {"label": s.label, "role": s.role, "seeds": s.seeds, "mean": s.mean, "std": _nan_to_none(s.std)}
                for name, s in summaries.items()
            },
            indent=1,
            allow_nan=False,
        )
        + "\n"
    )
    if doc is not None:
        write_section(doc, key, text)
    return text


def _section_key(out: Path) -> str:
    try:
        return out.resolve().relative_to((REPO / "bench" / "results").resolve()).as_posix()
    except ValueError:
        return out.name


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def _quiet() -> None:
    import logging
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("mine_vae").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def code_version() -> str:
    """The commit the study ran from, marked when the package or this script differed from it."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown"
    changed = git("status", "--porcelain", "--", "mine_vae", "bench/study_ptb.py").stdout.strip()
    return head.stdout.strip() + (" with local changes" if changed else "")


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed and fewer steps (<= 20 min on 2 idle cores)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3, or 1 with --quick)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"steps per run (default {FULL.steps}, quick {QUICK.steps})"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods (NAME or NAME@key=value,...)")
    parser.add_argument(
        "--importance-samples",
        type=int,
        default=None,
        help=f"K of the IW-NLL (default {FULL.importance_samples}, quick {QUICK.importance_samples})",
    )
    parser.add_argument(
        "--eval-split", choices=(EVAL_SPLIT, PROBE_SPLIT), default=EVAL_SPLIT, help="split of the final metrics"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/study[-quick])")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints (default runs/<out name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, in worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's own)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to write the section into")
    parser.add_argument("--no-doc", action="store_true", help="write results and plots, not the page")
    parser.add_argument("--report-only", action="store_true", help="no training: rewrite plots and page from results")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep a run's checkpoints once it is done")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.budget = dataclasses.replace(
        base,
        steps=args.steps or base.steps,
        importance_samples=args.importance_samples or base.importance_samples,
        eval_split=args.eval_split,
    )
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.out = args.out or REPO / "bench" / "results" / ("study-quick" if args.quick else "study")
    args.work_dir = args.work_dir or REPO / "runs" / args.out.name
    return args


def _command_line(argv: Sequence[str]) -> str:
    kept = [a for a in argv if a not in ("--report-only", "--no-doc", "--keep-checkpoints")]
    return " ".join(["python bench/study_ptb.py", *kept])


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _quiet()
    paths = StudyPaths(args.out, args.work_dir)
    previous = args.out / "meta.json"
    meta: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    if not args.report_only:
        load_start, start, code = load_average(), time.perf_counter(), code_version()
        ran = run_study(
            args.methods,
            range(args.seeds),
            args.budget,
            paths,
            jobs=args.jobs,
            threads=args.threads,
            keep_checkpoints=args.keep_checkpoints,
        )
        invocation = {"wall_seconds": round(time.perf_counter() - start, 1), "load_start": load_start, "code": code}
        invocation.update(load_end=load_average(), runs=len(ran))
        meta = {
            "command": _command_line(argv),
            "out_rel": _relative(args.out),
            "jobs": args.jobs,
            "invocations": [*meta.get("invocations", []), invocation] if ran else meta.get("invocations", []),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        previous.write_text(json.dumps(meta, indent=1) + "\n")
    meta.setdefault("command", _command_line(argv))
    meta.setdefault("out_rel", _relative(args.out))
    text = report(args.out, args.methods, None if args.no_doc else args.doc, meta)
    if text is None:
        print(f"No results in {args.out}.")
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
