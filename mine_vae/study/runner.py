"""Running the study: the data, the model of each run, training and resuming one run, evaluating it, and the driver
that runs every (method, seed) not finished yet, several at a time if asked.

A run's results and curves are written as one JSON file (`<out>/finished/<method>-seed<N>.json`) when it ends, and
its checkpoints (under the work folder) are then deleted. Running the study again skips finished runs and resumes
unfinished ones from their newest complete checkpoint, so a study is carried across interruptions by running it
again. `<out>/meta.json` records each invocation (wall time, load average, code version) for the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ..data import first_examples
from ..runs import build_model as build_run_model
from ..runs import hold_out, make_trainer, tokenize
from ..trainer import LOGGED_TERMS, MineVaeTrainer
from ..training_args import MineVaeTrainingArguments
from .methods import (
    CRITIC,
    DEFAULT_PRESET,
    EVAL_SPLIT,
    MINE_TRAINING_SETTINGS,
    MODEL_SETTINGS,
    PROBE_SPLIT,
    RATIO_SETTINGS,
    Budget,
    Method,
    checked_fields,
    resolve_method,
)

FINISHED = "finished"  # results of finished runs, under the study's folder (not "runs/": .gitignore drops those)


# --------------------------------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSettings:
    """How the corpus is cut and its vocabulary read (a preset's `data` settings unless overridden), and the corpus's
    name on the page."""

    max_length: int  # most words per sentence
    overlength: str  # "drop" or "truncate" longer sentences
    vocab_size: int | None  # most words per vocabulary (None: every word seen)
    min_frequency: int  # least count for a word to be kept
    corpus: str = "PTB"
    held_out: tuple[str, ...] = ()  # splits the corpus lacked, held out of its training text

    @classmethod
    def of_preset(cls, preset_name: str, **overrides: Any) -> DataSettings:
        from ..presets import get_preset

        data = get_preset(preset_name).data
        values = {
            "max_length": data["max_length"],
            "overlength": data["overlength"],
            "vocab_size": data.get("vocab_size"),
            "min_frequency": data.get("min_frequency", 1),
        }
        return cls(**{**values, **overrides})


@dataclass
class StudyData:
    """The corpus as text (the vocabulary is read from the training text) and tokenised for the preset's model."""

    train_texts: list[str]
    tokenized: Any  # DatasetDict with train / validation / test
    counts: dict[str, int]
    settings: DataSettings | None = None  # None: the preset's


def complete_splits(corpus: Any, percentage: float, seed: int = 0) -> tuple[Any, list[str]]:
    """The corpus with the three splits the study needs: a validation or test split it lacks is held out of the
    training text (`percentage` % of it each, at least 2 sentences), the same sentences for every run. Returns the
    corpus and the names of the splits held out."""
    return hold_out(corpus, (PROBE_SPLIT, EVAL_SPLIT), percentage, seed)


def prepare_data(
    preset_name: str = DEFAULT_PRESET, corpus: Any = None, settings: DataSettings | None = None
) -> StudyData:
    """Load the corpus (PTB by default) and tokenise it the way `mine-vae train --preset <preset_name>` does."""
    import datasets

    from ..data import load_corpus
    from ..presets import build_from_scratch, get_preset, pretrained_tokenizers
    from ..processing_mine_vae import MineVaeProcessor

    datasets.disable_progress_bars()
    preset = get_preset(preset_name)
    settings = settings or DataSettings.of_preset(preset_name)
    corpus = load_corpus() if corpus is None else load_corpus(dataset=corpus)
    missing = {"train", PROBE_SPLIT, EVAL_SPLIT} - set(corpus)
    if missing:
        raise ValueError(f"The study needs train, {PROBE_SPLIT} and {EVAL_SPLIT} splits; missing {sorted(missing)}.")
    texts = list(corpus["train"]["text"])
    max_length = settings.max_length
    if preset.from_scratch:
        _, processor = build_from_scratch(preset, texts, max_length, settings.vocab_size, settings.min_frequency)
        tokenizers = (processor.encoder_tokenizer, processor.decoder_tokenizer)
    else:
        tokenizers = pretrained_tokenizers(preset.encoder_path(), preset.decoder_path())
    # The model's limits are not known before it is built; the sentences kept fit them (the length rule).
    unlimited = MineVaeProcessor(*tokenizers, 10**9, 10**9)
    tokenized, counts = tokenize(corpus, unlimited, max_length, settings.overlength)
    return StudyData(texts, tokenized, counts, settings)


def build_model(preset_name: str, data: StudyData, method: Method, seed: int) -> tuple[Any, Any]:
    """The preset's model and processor with the method's config; the same initial weights for every method."""
    from transformers import set_seed

    from ..presets import get_preset

    settings = data.settings or DataSettings.of_preset(preset_name)
    set_seed(seed)  # with a pretrained pair, the heads (posterior, injection, critic) start from the seed's weights
    model, processor = build_run_model(
        get_preset(preset_name),
        data.train_texts,
        settings.max_length,
        settings.vocab_size,
        settings.min_frequency,
        **method.model,
    )
    processor.model_input_names = ["input_ids", "attention_mask"]  # read by the length-grouped sampler
    return model, processor


def training_kwargs(preset_name: str, method: Method, budget: Budget, seed: int, output_dir: Path) -> dict[str, Any]:
    """The preset's training defaults, the study's budget and critic settings, then the method's schedules."""
    from ..presets import get_preset

    # The method owns the β, λ and free-bits schedules: a preset's own (e.g. the pretrained preset's warm start and
    # rate cut) would leak into every method that does not set each of its fields.
    owned = ("kl_", "mi_", "final_free_bits")
    preset_training = {
        key: value for key, value in get_preset(preset_name).training.items() if not key.startswith(owned)
    }
    kwargs: dict[str, Any] = {
        **preset_training,
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
        if key in RATIO_SETTINGS:
            kwargs[RATIO_SETTINGS[key]] = round(float(value) * budget.steps)
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
    """A method's name as a file name: `mine-xi1@mi_weight=3` -> `mine-xi1_mi_weight_3`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec)


def _probe_stats(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Active units and the aggregate-posterior MI of the probe sentences (encoder only: cheap)."""
    from ..evaluation import active_units, mutual_information

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


def _probe_bleu(model: Any, processor: Any, texts: Sequence[str], bf16: bool) -> dict[str, float]:
    """Reconstruction BLEU of the probe's first sentences (greedy from the posterior mean): what z carries of x, as a
    user would see it, at every log line."""
    from ..latent import decode, encode_texts
    from ..metrics import load_metric

    was_training = model.training
    try:
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = decode(model, processor, encode_texts(model, processor, texts), max_new_tokens=_max_new(texts))
    finally:
        model.train(was_training)
    return {
        "probe_bleu": round(
            load_metric("reconstruction_bleu").compute(predictions=outputs, references=texts)["score"], 2
        )
    }


def _max_new(texts: Sequence[str]) -> int:
    """Enough new tokens for the longest probe sentence (about 1.6 tokens a word in byte-level BPE), plus slack."""
    return 2 * max(len(text.split()) for text in texts) + 8


# What the study's trainer adds to each log line, beside the trainer's own terms.
PROBE_TERMS = ("probe_au", "probe_mi", "probe_bleu")


def _study_trainer_class() -> type:
    class StudyTrainer(MineVaeTrainer):
        """Adds the probe's active units and MI (and reconstruction BLEU) to every training log line (the curves of
        the plots)."""

        def __init__(
            self, *args: Any, probe: Mapping[str, torch.Tensor], bleu_texts: Sequence[str] = (), **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.probe = probe
            self.bleu_texts = list(bleu_texts)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(_probe_stats(self._vae, self.probe))
                if self.bleu_texts:
                    logs.update(_probe_bleu(self._vae, self.processing_class, self.bleu_texts, self.args.bf16))
            super().log(logs, start_time)

    return StudyTrainer


def _loader(dataset: Any, processor: Any, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    from ..processing_mine_vae import MineVaeDataCollator

    columns = dataset.select_columns(["input_ids", "decoder_token_ids"])
    return DataLoader(columns, batch_size=batch_size, collate_fn=MineVaeDataCollator(processor), shuffle=False)


def evaluate_run(model: Any, processor: Any, data: StudyData, budget: Budget, batch_size: int) -> dict[str, float]:
    """Metrics of the evaluation split: `evaluate_vae` on its first `eval_examples` sentences, BLEU on the first
    `bleu_examples`."""
    from ..evaluation import GREEDY_DECODING, count_words, evaluate_vae

    test = first_examples(data.tokenized[budget.eval_split], budget.eval_examples)
    metrics = evaluate_vae(
        model,
        _loader(test, processor, batch_size),
        num_importance_samples=budget.importance_samples,
        word_counts=count_words(test["text"]),
        seed=0,
    )
    subset = first_examples(test, budget.bleu_examples)
    reconstructed = evaluate_vae(
        model,
        _loader(subset, processor, batch_size),
        num_importance_samples=1,
        compute_bleu=True,
        processor=processor,
        seed=0,
        # Greedy, as every study result on record was decoded: a resumed study's table compares its runs alike.
        bleu_decoding=GREEDY_DECODING,
    )
    metrics["bleu"] = reconstructed["bleu"]
    metrics["bleu_examples"] = float(len(subset))
    return metrics


CURVE_KEYS = ("loss", *LOGGED_TERMS, *PROBE_TERMS)


def curves(log_history: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The training log as columns: step and each logged term (NaN where a line lacks it)."""
    lines = [line for line in log_history if "loss" in line and "step" in line]
    table: dict[str, list[float]] = {"step": [float(line["step"]) for line in lines]}
    for key in CURVE_KEYS:
        table[key] = [float(line.get(key, math.nan)) for line in lines]
    return table


# What a run records of its training arguments: the budget's Trainer settings, and every setting MINE-VAE adds.
_BUDGET_ARGS = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps")
REPORTED_ARGS: tuple[str, ...] = (*checked_fields(TrainingArguments, _BUDGET_ARGS), *MINE_TRAINING_SETTINGS)
# Sizes and dropout of the encoder and decoder configs (BERT's and GPT-2's names; the absent ones are skipped).
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
    "attention_dropout",  # Llama's
)


def architecture(model: Any) -> dict[str, Any]:
    """What the run actually trained (the preset may change between studies): sizes, dropout, ξ, β, λ, parameters."""
    config = model.config
    summary: dict[str, Any] = {key: getattr(config, key) for key in MODEL_SETTINGS}
    for side in ("encoder", "decoder"):
        sub = getattr(config, side)
        summary[side] = {"model_type": sub.model_type} | {k: getattr(sub, k) for k in _SIDE_KEYS if hasattr(sub, k)}
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    return summary


def run_one(
    spec: str,
    seed: int,
    budget: Budget,
    paths: StudyPaths,
    data: StudyData,
    preset_name: str = DEFAULT_PRESET,
    callbacks: Sequence[Any] = (),
    keep_checkpoints: bool = False,
) -> dict[str, Any] | None:
    """Train and evaluate one (method, seed), resuming from its newest complete checkpoint; write its results JSON.

    Returns the results, or None when training stopped before the budget's last step (a callback asked it to, as
    an interruption would): the checkpoints stay, and the next call resumes from them.
    """
    from ..checkpointing import last_complete_checkpoint

    result_path = paths.result(spec, seed)
    if result_path.is_file():
        return json.loads(result_path.read_text())
    method = resolve_method(spec)
    run_dir = paths.run_dir(spec, seed)
    checkpoint = last_complete_checkpoint(str(run_dir))
    model, processor = build_model(preset_name, data, method, seed)
    args = MineVaeTrainingArguments(**training_kwargs(preset_name, method, budget, seed, run_dir))
    probe_set = first_examples(data.tokenized[PROBE_SPLIT], budget.probe_examples)
    probe = processor.pad(probe_set.select_columns(["input_ids", "decoder_token_ids"]).to_list())
    trainer = make_trainer(
        model,
        processor,
        args,
        data.tokenized["train"],
        trainer_class=_study_trainer_class(),
        log_keys=(*LOGGED_TERMS, *PROBE_TERMS),
        log_label=f"{spec} seed {seed}",
        callbacks=callbacks,
        probe=probe,
        bleu_texts=list(probe_set["text"][: budget.probe_bleu_examples]),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if trainer.state.global_step < budget.steps:
        return None
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):  # evaluated as trained
        metrics = evaluate_run(model, processor, data, budget, args.per_device_eval_batch_size)
    settings = data.settings or DataSettings.of_preset(preset_name)
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
        "training": {k: v for k, v in args.to_dict().items() if k in REPORTED_ARGS},
        "budget": dataclasses.asdict(budget),
        "data": dataclasses.asdict(settings),
        "metrics": metrics,
        "curves": curves(trainer.state.log_history),
    }
    _write_json(result_path, result)
    if not keep_checkpoints:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write to a temporary file, then rename: an interruption never leaves a half-written results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------------------------------
# The whole study
# --------------------------------------------------------------------------------------------------------------------
def check_method(spec: str, budget: Budget, preset_name: str = DEFAULT_PRESET) -> Method:
    """The method `spec` names, with its config and training arguments built once: a typo or a value out of range
    in a variant is a ValueError now, not after the data is prepared and earlier runs have trained."""
    from ..configuration_mine_vae import MineVaeConfig
    from ..presets import get_preset

    method = resolve_method(spec)
    MineVaeConfig(**{**get_preset(preset_name).model, **method.model})
    MineVaeTrainingArguments(**training_kwargs(preset_name, method, budget, 0, Path("unused")))
    return method


_WORKER_DATA: list[StudyData] = []


def _worker_init(data: StudyData, threads: int | None) -> None:
    # Ctrl-C is the parent's to handle: it stops every worker at once (a run resumes from its last checkpoint).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        torch.set_num_threads(threads)
    quiet_libraries()
    _WORKER_DATA[:] = [data]


def _worker_run(spec: str, seed: int, budget: Budget, paths: StudyPaths, preset_name: str, keep: bool) -> str:
    result = run_one(spec, seed, budget, paths, _WORKER_DATA[0], preset_name, keep_checkpoints=keep)
    return "done" if result is not None else "stopped"


def run_study(
    specs: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    paths: StudyPaths,
    data: StudyData | None = None,
    preset_name: str = DEFAULT_PRESET,
    jobs: int = 1,
    threads: int | None = None,
    keep_checkpoints: bool = False,
    corpus: Any = None,
    settings: DataSettings | None = None,
) -> list[tuple[str, int]]:
    """Every (method, seed) not finished yet, `jobs` at a time; returns the pairs that ran (skipped ones excluded).

    `data` is prepared (from `corpus`, PTB by default, with `settings`, the preset's by default) only when a run is
    left to do; with `jobs` > 1 each worker process receives it, and `threads` is each run's torch thread count.
    """
    for spec in specs:
        check_method(spec, budget, preset_name)  # fail on a typo before hours of training
    todo = [(spec, seed) for seed in seeds for spec in specs if not paths.result(spec, seed).is_file()]
    for spec, seed in [(spec, seed) for seed in seeds for spec in specs if (spec, seed) not in todo]:
        print(f"[{spec} seed {seed}] done already: {paths.result(spec, seed)}", file=sys.stderr, flush=True)
    if not todo:
        return []
    data = data or prepare_data(preset_name, corpus, settings)
    if jobs <= 1:
        if threads:
            torch.set_num_threads(threads)
        for spec, seed in todo:
            run_one(spec, seed, budget, paths, data, preset_name, keep_checkpoints=keep_checkpoints)
        return todo
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    # A Pool, not a ProcessPoolExecutor: leaving the block terminates the workers, so an interrupted or failed study
    # stops them all instead of letting them train through the runs already queued.
    with context.Pool(jobs, initializer=_worker_init, initargs=(data, threads)) as pool:
        pending = [
            pool.apply_async(_worker_run, (spec, seed, budget, paths, preset_name, keep_checkpoints))
            for spec, seed in todo
        ]
        for result in pending:
            result.get()
    return todo


def quiet_libraries() -> None:
    """Errors only from transformers, datasets and mine_vae: a study's output is one progress line per log step."""
    import logging

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # e.g. "Writing model shards" at every checkpoint
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("mine_vae").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
