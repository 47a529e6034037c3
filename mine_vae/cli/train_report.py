"""What `mine-vae train` prints: the data and model summaries, and the final report (metrics, prior samples,
reconstructions, an interpolation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..evaluation import RECONSTRUCTION_DECODING, RECONSTRUCTION_DECODING_TEXT
from ..text_latent import interpolation, prior_samples, reconstructions
from .arguments import TrainRunArguments
from .commands import format_cell, format_table, print_json
from .evaluate import evaluate_split, metrics_table

# How `train` draws and decodes its prior samples (see final_report). No repeated 4-gram, as in the reconstructions:
# on the default preset's main-job model, 40 prior samples looped ("a N of a N of a ...") 9 times without it and 3
# with it. z from N(0, 0.8² I), a reduced-temperature prior as Glow and NVAE show samples: of 40 draws (8 seeds x 5),
# 33 decoded to sentences from N(0, I) and 37 from N(0, 0.8² I); the rest were loops, symbols or number chains
# (docs/benchmarks.md).
REPORT_PRIOR_SCALE = 0.8
REPORT_SAMPLING = {"do_sample": True, "top_p": 0.9, "temperature": 0.8, "no_repeat_ngram_size": 4}
REPORT_SAMPLING_TEXT = (
    f"z ~ N(0, {REPORT_PRIOR_SCALE}² I); nucleus sampling, top_p 0.9, temperature 0.8, no repeated 4-gram"
)


def data_summary(counts: Mapping[str, int], source: str) -> str:
    rows = []
    for split in dict.fromkeys(key.split("/")[0] for key in counts):
        rows.append(
            (
                split,
                counts[f"{split}/kept"],
                counts[f"{split}/dropped_too_long"],
                counts[f"{split}/truncated_encoder"] + counts[f"{split}/truncated_decoder"],
                counts[f"{split}/dropped_empty"],
            )
        )
    return format_table(rows, headers=("split", "sentences", "too long (dropped)", "truncated", "empty"), title=source)


def model_summary(model: Any, preset_name: str) -> str:
    def describe(config: Any) -> str:
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", "?")
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", "?")
        return f"{config.model_type} {layers}x{hidden}"

    parameters = sum(p.numel() for p in model.parameters())
    adapters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    config = model.config
    return (
        f"Model ({preset_name}): encoder {describe(config.encoder)}, decoder {describe(config.decoder)}, latent "
        f"{config.latent_size}, xi={config.xi}, peak beta={config.kl_weight}, peak lambda={config.mi_weight}; "
        f"{parameters:,} parameters" + (f" ({adapters:,} in LoRA adapters on the decoder)" if adapters else "") + "; "
        f"{torch.get_num_threads()} CPU thread(s) (--num_threads)."
    )


def final_report(
    model: Any,
    processor: Any,
    eval_set: Any,
    eval_name: str,
    training_args: Any,
    run: TrainRunArguments,
    counts: Mapping[str, int],
) -> dict[str, Any]:
    """Metrics on the evaluation split, prior samples, reconstructions and one interpolation between two evaluation
    sentences. Prior samples are z ~ N(0, 0.8² I) (`REPORT_PRIOR_SCALE`) decoded with nucleus sampling: greedy
    decoding from a small model trained for minutes falls into loops of its most frequent words ("the <unk> of the
    <unk>"), which shows the decoder's mode, not what the model generates. Reconstructions and the interpolation are
    decoded as BLEU's reconstructions are (`RECONSTRUCTION_DECODING`, no sampling): they show what z alone carries."""
    model.eval()
    # As trained: a run in bf16 is evaluated under the same autocast (on CPU, bf16 matrix products are several times
    # faster; the decoding and the importance samples are most of the report's time).
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bool(training_args.bf16)):
        metrics = evaluate_split(
            model,
            processor,
            eval_set,
            training_args.per_device_eval_batch_size,
            training_args.eval_importance_samples,
            bleu=training_args.eval_bleu,
            show_progress=not training_args.disable_tqdm,
        )
        texts = eval_set["text"]
        decoded = {"max_new_tokens": processor.max_decoder_length, **RECONSTRUCTION_DECODING}
        sampled = {"max_new_tokens": processor.max_decoder_length, **REPORT_SAMPLING}
        sources = list(texts[: run.num_reconstructions])
        report: dict[str, Any] = {
            "split": eval_name,
            "importance_samples": training_args.eval_importance_samples,
            "metrics": metrics,
            "data": dict(counts),
            "prior_scale": REPORT_PRIOR_SCALE,
            "samples": prior_samples(
                model, processor, run.num_samples, training_args.seed, REPORT_PRIOR_SCALE, **sampled
            )
            if run.num_samples > 0
            else [],
            "reconstructions": [
                {"input": s, "output": o}
                for s, o in zip(sources, reconstructions(model, processor, sources, training_args.seed, **decoded))
            ]
            if sources
            else [],
        }
        if len(texts) >= 2 and run.interpolation_steps >= 2:
            start, end = texts[0], texts[len(texts) // 2]
            steps = interpolation(model, processor, start, end, run.interpolation_steps, training_args.seed, **decoded)
            report["interpolation"] = {"start": start, "end": end, "steps": [{"t": t, "text": s} for t, s in steps]}
        return report


def print_report(report: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    metrics = report["metrics"]
    title = (
        f"Metrics on {report['split']} ({int(metrics['num_examples'])} sentences, "
        f"{report['importance_samples']} importance samples)"
    )
    sections = [metrics_table(metrics, title)]
    if report.get("samples"):
        rows = list(enumerate(report["samples"], 1))
        sections.append(
            format_table(rows, headers=("#", "sentence"), title=f"Samples from the prior ({REPORT_SAMPLING_TEXT})")
        )
    if report.get("reconstructions"):
        pairs = [
            f"  in:  {format_cell(r['input'])}\n  out: {format_cell(r['output'])}" for r in report["reconstructions"]
        ]
        sections.append(f"Reconstructions (posterior mean, {RECONSTRUCTION_DECODING_TEXT})\n" + "\n".join(pairs))
    if report.get("interpolation"):
        steps = [(f"{step['t']:.2f}", step["text"]) for step in report["interpolation"]["steps"]]
        sections.append(
            format_table(
                steps,
                headers=("t", "sentence"),
                title=f"Interpolation between posterior means ({RECONSTRUCTION_DECODING_TEXT})",
            )
        )
    print("\n\n".join(sections))
