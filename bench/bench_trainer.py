"""Benchmark the cost of MineVaeTrainer's MI machinery and of the batched importance-weighted NLL, side by side.

Builds a BERT encoder + GPT-2 decoder pair from configs (random weights, no download) and prints one table of ratios:

1. One MINE-VAE optimizer step (`MineVaeTrainer.training_step` with `critic_steps=1`, λ = `mi_weight` = 1 active from
   the first step, then the VAE optimizer step) vs the same model trained as a plain VAE (`config.mi_weight = 0`, no
   critic step) by `transformers.Trainer.training_step` + the same optimizer step: time and peak memory.
2. The importance-weighted NLL as `evaluate_vae` computes it (`importance_weighted_log_marginal`: samples batched
   into one decoder call per `importance_batch_size` samples, by default as many as a logits budget allows) vs two
   Python loops computing the same estimate from the same draws, after checking the three numbers agree: one decoder
   call per importance sample over the whole batch (the target's baseline), and one per sentence and sample (the
   loop of evaluation scripts that run IW-NLL at batch size 1; no padding). The posteriors are computed once,
   outside the timing. `--device cuda` runs these rows on a GPU.

Memory. On the CPU there is no `max_memory_allocated`, so two measures are given:

- peak tensor memory (the primary one): the tensors alive at the start of a step (parameters, gradients, optimizer
  states) plus the high-water mark of the allocations and frees the PyTorch CPU allocator reports to the profiler
  (`profile_memory=True`) during the step: the CPU analogue of `torch.cuda.max_memory_allocated`, exact and
  unaffected by glibc's caching;
- peak RSS increment: in a fresh subprocess per variant that builds the model and runs a few steps, how far the steps
  raise the process's peak RSS (`VmHWM`) above its peak before them. What the OS sees, glibc's caching and
  fragmentation included, without the interpreter, libraries and model that both variants share; noisier.

Timings: the compared variants are interleaved (their order rotating every repeat) after a warm-up; medians.

Usage:
    python bench/bench_trainer.py                 # full run
    python bench/bench_trainer.py --quick         # smoke run (few repeats, fewer importance samples)
    python bench/bench_trainer.py --repeats 20 --json results.json
    python bench/bench_trainer.py --threads 1     # steadier on a shared machine (OpenMP threads spin-wait)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import torch
import transformers
from common import BOS_ID, EOS_ID, PAD_ID, SEED, ModelShape, RatioRow, environment, format_table, measure
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import Trainer, TrainingArguments

from mine_vae import MineVaeModel
from mine_vae.evaluation import (
    budgeted_samples_per_call,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    importance_weighted_log_marginal,
    standard_normal_log_density,
)
from mine_vae.trainer import MineVaeTrainer
from mine_vae.training_args import MineVaeTrainingArguments

VARIANTS = ("mine", "plain")


@dataclass(frozen=True)
class Shape(ModelShape):
    """Sizes of the benchmarked model and workloads."""

    critic_hidden_size: int = 256
    batch_size: int = 16
    length: int = 40
    importance_samples: int = 20
    importance_batch_size: int | None = None  # evaluate_vae's default: sized to a logits budget per device
    eval_batches: int = 1


Row = RatioRow


# --------------------------------------------------------------------------------------------------------------------
# Model and inputs
# --------------------------------------------------------------------------------------------------------------------
def build_model(shape: Shape, mi_weight: float) -> MineVaeModel:
    return common.build_model(shape, critic_hidden_size=shape.critic_hidden_size, mi_weight=mi_weight)


def make_batch(shape: Shape, seed: int) -> dict[str, torch.Tensor]:
    """A padded batch like `MineVaeProcessor.pad` makes: random words, lengths between half and full `length`."""
    generator = torch.Generator().manual_seed(seed)
    size, length = shape.batch_size, shape.length
    lengths = torch.randint(length // 2, length + 1, (size,), generator=generator)
    lengths[0] = length
    words = torch.randint(EOS_ID + 1, shape.vocab_size, (size, length), generator=generator)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    decoder_input_ids = torch.cat([torch.full((size, 1), BOS_ID), words[:, :-1]], dim=1)
    labels = torch.where(torch.arange(length) == lengths.unsqueeze(1) - 1, EOS_ID, words)
    return {
        "input_ids": words.masked_fill(mask == 0, PAD_ID),
        "attention_mask": mask,
        "decoder_input_ids": decoder_input_ids.masked_fill(mask == 0, PAD_ID),
        "decoder_attention_mask": mask,
        "labels": labels.masked_fill(mask == 0, -100),
    }


# --------------------------------------------------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------------------------------------------------
def common_arguments(shape: Shape, output_dir: str, device: str = "cpu") -> dict[str, object]:
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": shape.batch_size,
        "max_steps": 10_000,
        "learning_rate": 1e-4,
        "use_cpu": device == "cpu",
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "no",
        "seed": SEED,
    }


def make_trainer(variant: str, shape: Shape, output_dir: str, device: str = "cpu") -> Trainer:
    """`mine`: MineVaeTrainer, k = 1 critic update, λ = 1 from step 0. `plain`: transformers.Trainer, λ = 0. On
    `device` (the Trainer places the model there)."""
    if variant == "mine":
        args = MineVaeTrainingArguments(
            **common_arguments(shape, output_dir, device),
            critic_steps=1,
            critic_warmup_steps=0,
            mi_schedule="constant",
            kl_schedule="constant",
        )
        trainer: Trainer = MineVaeTrainer(model=build_model(shape, mi_weight=1.0), args=args)
    elif variant == "plain":
        args = TrainingArguments(**common_arguments(shape, output_dir, device))
        trainer = Trainer(model=build_model(shape, mi_weight=0.0), args=args)
    else:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by training_step
    return trainer


def optimizer_step(trainer: Trainer, batch: dict[str, torch.Tensor], bf16: bool = False) -> Callable[[], None]:
    """What Trainer's loop does per optimizer step without accumulation: the step, clipping, update, zero_grad. With
    `bf16`, the step runs under bf16 autocast, as the Trainer's accelerator runs a model it has prepared (called
    directly, `training_step` does not)."""
    model = trainer.model

    def step() -> None:
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            trainer.training_step(model, batch)
        nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    return step


def check_variants(trainers: dict[str, Trainer], batch: dict[str, torch.Tensor]) -> None:
    """The comparison is only meaningful if `mine` trains the critic once per step with λ > 0 and `plain` never
    touches it: run one (untimed) step of each and check."""
    mine, plain = trainers["mine"], trainers["plain"]
    optimizer_step(mine, batch)()
    critic_updates = {int(state["step"]) for state in mine.critic_optimizer.state.values()}
    if critic_updates != {mine.state.global_step} or mine.mi_schedule(mine.state.global_step - 1) <= 0:
        raise RuntimeError(f"The MINE variant must update the critic once per step with λ > 0 ({critic_updates}).")
    plain.training_step(plain.model, batch)
    if plain.model.config.mi_weight != 0 or any(p.grad is not None for p in plain.model.critic.parameters()):
        raise RuntimeError("The plain variant must not train the critic.")
    plain.model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------
def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def resident_bytes(trainer: Trainer) -> int:
    """Bytes of the tensors a step starts with: parameters, buffers, gradients and every optimizer's state."""
    model = trainer.model
    optimizers = [trainer.optimizer, getattr(trainer, "critic_optimizer", None)]
    states = [v for o in optimizers if o is not None for state in o.state.values() for v in state.values()]
    params = list(model.parameters())
    return (
        tensor_bytes(params)
        + tensor_bytes(model.buffers())
        + tensor_bytes(p.grad for p in params)
        + tensor_bytes(states)
    )


def peak_step_bytes(step: Callable[[], None]) -> int:
    """High-water mark of the CPU allocator's live bytes during `step`, relative to its start (profiler events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_tensor_bytes(trainer: Trainer, step: Callable[[], None]) -> int:
    if trainer.model.device.type == "cuda":  # the allocator keeps the high-water mark itself
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resident_bytes(trainer) + peak_step_bytes(step)


def child_step_rss(variant: str, steps: int, threads: int | None) -> int:
    """How far (bytes) `steps` optimizer steps of `variant` raise the peak RSS of a fresh process above its peak
    before them: the training step's own footprint, without the interpreter, the libraries and the model, which both
    variants share."""
    command = [sys.executable, __file__, "--rss-child", variant, "--rss-steps", str(steps)]
    if threads:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["peak"] - report["before_steps"]


def proc_status_bytes(field: str) -> int:
    """A `/proc/self/status` memory field (`VmRSS`, `VmHWM`: kB) in bytes. VmHWM is the peak RSS of this process's
    own address space; `ru_maxrss` would not do here, since after fork + exec it still holds the parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} (the RSS rows need Linux).")


def rss_child(variant: str, steps: int) -> None:
    shape = Shape()
    with tempfile.TemporaryDirectory() as output_dir:
        step = optimizer_step(make_trainer(variant, shape, output_dir), make_batch(shape, SEED + 1))
        # The high-water mark so far (building the model may have peaked above where it settled): the row shows
        # what the steps add on top of it.
        before = proc_status_bytes("VmHWM")
        for _ in range(steps):
            step()
    print(json.dumps({"before_steps": before, "peak": proc_status_bytes("VmHWM")}))


# --------------------------------------------------------------------------------------------------------------------
# The pretrained pair: its VAE step against its decoder's own training step
# --------------------------------------------------------------------------------------------------------------------
PRETRAINED_PRESET = "minilm-smollm2"
PRETRAINED_BATCH = 8
PRETRAINED_TARGET = 1.15


def ptb_train_texts() -> list[str]:
    from mine_vae.data import load_corpus

    return list(load_corpus()["train"]["text"])


def preset_pair(texts: list[str], tiny: bool = False) -> tuple[MineVaeModel, Any]:
    """The model and processor `mine-vae train` builds for the `minilm-smollm2` preset (its MiniLM + SmolLM2 pair and
    its model settings: z's key/value positions, vocabulary bias, critic, ...). With `tiny`, the `tiny` preset's
    from-scratch BERT + GPT-2 (word-level, built on the first 2,000 of `texts`) under the same settings: a stand-in
    that runs in seconds (`bench/gpu_check.py --dry_run`)."""
    from transformers import set_seed

    from mine_vae.presets import build_from_scratch, build_pretrained, get_preset

    preset = get_preset(PRETRAINED_PRESET)
    set_seed(SEED)
    if tiny:
        small = get_preset("tiny")
        # The decoder's positions hold z's key/value positions, BOS and the sentence.
        words = small.decoder_config["n_positions"] - preset.model["latent_memory_positions"] - 2
        return build_from_scratch(small, texts[:2000], words, small.data["vocab_size"], **preset.model)
    return build_pretrained(preset.encoder_path(), preset.decoder_path(), preset.data["max_length"], **preset.model)


def pretrained_trainer(
    output_dir: str, device: str, texts: list[str], tiny: bool = False
) -> tuple[MineVaeTrainer, Any]:
    """A `MineVaeTrainer` of the `minilm-smollm2` preset as `mine-vae train` builds it (`preset_pair`, and the
    preset's training settings: both sides frozen, bf16), its optimizers made, its step counter half-way through the
    run, where every warm-up is over (β and λ active: the full step)."""
    from mine_vae.presets import get_preset

    model, processor = preset_pair(texts, tiny)
    settings = {**get_preset(PRETRAINED_PRESET).training, "output_dir": output_dir, "save_strategy": "no"}
    args = MineVaeTrainingArguments(**settings, disable_tqdm=True, use_cpu=device == "cpu")
    trainer = MineVaeTrainer(model=model, args=args, processing_class=processor)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step = args.max_steps // 2
    return trainer, processor


def decoder_train_step(decoder: nn.Module, batch: dict[str, torch.Tensor], bf16: bool) -> Callable[[], None]:
    """The decoder's own language-model step on the batch's decoder side: forward, the token loss, backward into all
    of its weights (those the VAE keeps frozen are made trainable for the step, then frozen again)."""
    ids, mask, labels = batch["decoder_input_ids"], batch["decoder_attention_mask"], batch["labels"]

    def step() -> None:
        decoder.requires_grad_(True)
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = decoder(input_ids=ids, attention_mask=mask).logits
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        decoder.zero_grad(set_to_none=True)
        decoder.requires_grad_(False)

    return step


def pretrained_row(
    repeats: int,
    warmup: int,
    device: str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
    tiny: bool = False,
    texts: list[str] | None = None,
) -> Row:
    """The `minilm-smollm2` preset's optimizer step (frozen encoder and decoder, bf16, critic update + VAE update) vs
    its decoder's own forward + backward on the same batch of PTB training sentences (`texts`: PTB's training split,
    loaded here if not given); interleaved rounds, the median of the per-round ratios."""
    from common import ptb_batch

    texts = texts if texts is not None else ptb_train_texts()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, processor = pretrained_trainer(output_dir, device, texts, tiny)
        # 30 words stay within the preset's 40 SmolLM2 tokens (and the word-level stand-in's limit): no truncation.
        words = min(30, processor.max_decoder_length - 1)
        batch = ptb_batch(processor, texts, PRETRAINED_BATCH, SEED, max_words=words)
        batch = {key: value.to(trainer.model.device) for key, value in batch.items()}
        bf16 = bool(trainer.args.bf16)
        variants = {
            "vae": optimizer_step(trainer, batch, bf16),
            "decoder": decoder_train_step(trainer.model.decoder, batch, bf16),
        }
        samples = measure(variants, repeats, warmup, clock, synchronize=device.startswith("cuda"))
    ratio = statistics.median(a / b for a, b in zip(samples["vae"], samples["decoder"], strict=True))
    tokens = int((batch["labels"] != -100).sum())
    return Row(
        f"train step ms: {'tiny stand-in' if tiny else 'MiniLM+SmolLM2'} VAE (frozen, bf16) vs its decoder fwd+bwd "
        f"(b={PRETRAINED_BATCH} PTB, {tokens} tokens, {device})",
        "ms",
        1000 * statistics.median(samples["vae"]),
        1000 * statistics.median(samples["decoder"]),
        ratio,
        f"<= {PRETRAINED_TARGET:.2f}",
        ratio <= PRETRAINED_TARGET,
    )


# --------------------------------------------------------------------------------------------------------------------
# Importance-weighted NLL: the batched path of evaluate_vae vs one decoder call per sample
# --------------------------------------------------------------------------------------------------------------------
Posterior = tuple[torch.Tensor, torch.Tensor]  # mu, logvar: (B, L)


def _log_weights(
    model: MineVaeModel, batch: dict[str, torch.Tensor], z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x|z), log p(z), log q(z|x) of one decoder call, each `(rows,)`."""
    log_px = model.log_likelihood(
        z, batch["decoder_input_ids"], batch["labels"], decoder_attention_mask=batch["decoder_attention_mask"]
    )
    return log_px, standard_normal_log_density(z), gaussian_log_density(z, mu, logvar)


@torch.no_grad()
def looped_iw_nll(
    model: MineVaeModel,
    batches: list[dict[str, torch.Tensor]],
    posteriors: list[Posterior],
    num_samples: int,
    seed: int,
    per_sentence: bool,
) -> float:
    """The IW-NLL per sentence with one `log_likelihood` call per importance sample over the whole batch or, when
    `per_sentence`, per sentence and sample with the sentence's padding cut off; the same draws as `batched_iw_nll`."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    total, count = 0.0, 0
    for batch, (mu, logvar) in zip(batches, posteriors):
        std = torch.exp(0.5 * logvar)
        draws = [mu + std * torch.randn(mu.shape, generator=generator, device=mu.device) for _ in range(num_samples)]
        if per_sentence:
            columns = []  # one (K,) triple per sentence
            for i, length in enumerate(batch["decoder_attention_mask"].sum(dim=1).tolist()):
                row = {key: value[i : i + 1, :length] for key, value in batch.items()}
                weights = [_log_weights(model, row, z[i : i + 1], mu[i : i + 1], logvar[i : i + 1]) for z in draws]
                columns.append([torch.cat([w[t] for w in weights]) for t in range(3)])
            terms = [torch.stack([column[t] for column in columns], dim=1) for t in range(3)]
        else:
            per_sample = [_log_weights(model, batch, z, mu, logvar) for z in draws]
            terms = [torch.stack([weights[t] for weights in per_sample]) for t in range(3)]
        total -= float(importance_weighted_log_likelihood(*terms).sum())  # terms: (K, B) each
        count += mu.shape[0]
    return total / count


@torch.no_grad()
def batched_iw_nll(
    model: MineVaeModel,
    batches: list[dict[str, torch.Tensor]],
    posteriors: list[Posterior],
    num_samples: int,
    seed: int,
    per_call: int | None,
) -> float:
    """The IW-NLL per sentence as `evaluate_vae` computes it (`importance_weighted_log_marginal`)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    total, count = 0.0, 0
    for batch, (mu, logvar) in zip(batches, posteriors):
        log_px = importance_weighted_log_marginal(
            model,
            mu,
            logvar,
            batch["decoder_input_ids"],
            batch["labels"],
            batch["decoder_attention_mask"],
            num_samples=num_samples,
            samples_per_call=per_call,
            generator=generator,
        )
        total -= float(log_px.sum())
        count += mu.shape[0]
    return total / count


def importance_rows(shape: Shape, repeats: int, warmup: int, device: str) -> list[Row]:
    """The IW-NLL's decoder work alone: the posteriors are computed once, outside the timed calls."""
    model = build_model(shape, mi_weight=1.0).to(device).eval()
    batches = [
        {key: value.to(device) for key, value in make_batch(shape, SEED + 10 + index).items()}
        for index in range(shape.eval_batches)
    ]
    with torch.no_grad():
        posteriors = [model.encode(b["input_ids"], b["attention_mask"]) for b in batches]
    posteriors = [(p.mu, p.logvar) for p in posteriors]
    per_call = shape.importance_batch_size or budgeted_samples_per_call(
        shape.importance_samples, shape.batch_size, shape.length, shape.vocab_size, torch.device(device)
    )
    k = shape.importance_samples
    variants = {
        "batched": lambda: batched_iw_nll(model, batches, posteriors, k, SEED, per_call),
        "sample": lambda: looped_iw_nll(model, batches, posteriors, k, SEED, per_sentence=False),
        "sentence and sample": lambda: looped_iw_nll(model, batches, posteriors, k, SEED, per_sentence=True),
    }
    nll = {name: variant() for name, variant in variants.items()}
    if not all(math.isclose(nll["batched"], value, rel_tol=1e-5) for value in nll.values()):
        raise RuntimeError(f"Batched and looped IW-NLL disagree: {nll}.")
    seconds = medians(measure(variants, repeats, warmup, synchronize=device.startswith("cuda")))
    what = f"IW-NLL ms: K={k} batched ({per_call}/call, {device}) vs one call per"
    rows = []
    for baseline, target in (("sample", 5.0), ("sentence and sample", 1.0)):
        speedup = seconds[baseline] / seconds["batched"]
        rows.append(
            Row(
                f"{what} {baseline} [nll {nll['batched']:.3f}]",
                "ms",
                1000 * seconds["batched"],
                1000 * seconds[baseline],
                speedup,
                f">= {target:.2f} (B/A)",
                speedup >= target,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------
def median_step_rss(steps: int, runs: int, threads: int | None) -> dict[str, float]:
    """Median over `runs` fresh processes per variant (interleaved) of `child_step_rss`: glibc's arenas make one
    process's RSS jitter by a few percent."""
    samples: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
    for _ in range(runs):
        for variant in VARIANTS:
            samples[variant].append(child_step_rss(variant, steps, threads))
    return medians(samples)


def training_rows(shape: Shape, args: argparse.Namespace, device: str = "cpu") -> list[Row]:
    """The step's time and peak tensor memory on `device`; on the CPU also the peak RSS of fresh processes."""
    batch = {key: value.to(device) for key, value in make_batch(shape, SEED + 1).items()}
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {variant: make_trainer(variant, shape, f"{output_dir}/{variant}", device) for variant in VARIANTS}
        check_variants(trainers, batch)
        steps = {variant: optimizer_step(trainer, batch) for variant, trainer in trainers.items()}
        seconds = medians(measure(steps, args.repeats, args.warmup, synchronize=device.startswith("cuda")))
        tensor_peaks = {variant: peak_tensor_bytes(trainers[variant], steps[variant]) for variant in VARIANTS}
    label = f"(b={shape.batch_size}, len={shape.length}{'' if device == 'cpu' else ', ' + device})"
    peak = "profiler" if device == "cpu" else "max_memory_allocated"
    rows = [
        ratio_row(f"train step ms: MINE (k=1, λ=1) vs plain Trainer {label}", "ms", seconds, 1000, 1.10),
        ratio_row(f"peak tensor MiB: resident + in-step high-water ({peak})", "MiB", tensor_peaks, 2**-20, 1.05),
    ]
    if device == "cpu" and args.rss_runs > 0:  # what the OS sees of the host process; a GPU's is the row above
        rss_peaks = median_step_rss(args.rss_steps, args.rss_runs, args.threads)
        what = f"peak RSS MiB over pre-step peak: fresh processes, {args.rss_steps} steps"
        rows.append(ratio_row(what, "MiB", rss_peaks, 2**-20, 1.05))
    return rows


def ratio_row(what: str, unit: str, values: dict[str, float], scale: float, limit: float) -> Row:
    ratio = values["mine"] / values["plain"]
    return Row(what, unit, scale * values["mine"], scale * values["plain"], ratio, f"<= {limit:.2f}", ratio <= limit)


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, or 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few repeats and samples: a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument(
        "--device", default="cpu", help="device of the IW-NLL rows, e.g. cuda (the training rows stay on the CPU)"
    )
    parser.add_argument("--rss-child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--iw-repeats", type=int, default=None, help="timed rounds of the IW-NLL row (default 5, or 2)")
    parser.add_argument("--rss-runs", type=int, default=None, help="fresh processes per variant (default 3, or 1)")
    parser.add_argument("--rss-steps", type=int, default=None, help="steps per fresh process (default 4, or 2)")
    parser.add_argument(
        "--skip-pretrained", action="store_true", help="no MiniLM+SmolLM2 row (it needs requirements-assets.txt)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="of the MiniLM+SmolLM2 row: wall time (default), or cpu: torch on one thread and that thread's CPU time "
        "(steadier on a shared machine)",
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.iw_repeats = args.iw_repeats or (2 if args.quick else 5)
    args.rss_runs = args.rss_runs or (1 if args.quick else 3)
    args.rss_steps = args.rss_steps or (2 if args.quick else 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.rss_steps)
        return 0
    transformers.logging.set_verbosity_error()
    shape = Shape(importance_samples=10) if args.quick else Shape()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    rows = training_rows(shape, args) + importance_rows(shape, args.iw_repeats, min(args.warmup, 1), args.device)
    if not args.skip_pretrained:
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        rows.append(pretrained_row(args.repeats, args.warmup, clock=clock))
    print(
        f"medians of {args.repeats} (training) / {args.iw_repeats} (IW-NLL) interleaved repeats after warm-up; "
        f"env: {environment()}"
    )
    print(format_table(rows))
    if args.json is not None:
        settings = ("repeats", "warmup", "iw_repeats", "rss_runs", "rss_steps", "device", "clock")
        payload = {"shape": asdict(shape), "settings": {name: getattr(args, name) for name in settings}}
        payload.update(env=environment(), rows=[asdict(row) for row in rows])
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
