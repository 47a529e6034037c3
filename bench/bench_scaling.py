"""What decoders of any size cost: activation checkpointing with z in the cache, and full / frozen / LoRA training.

Rows, each measured side by side in one run (interleaved rounds, medians):

1. activation checkpointing on vs off, `latent_injection="both"` (z in the cache of every layer), at a BERT 4x256 +
   GPT-2 4x256 model (vocabulary 10k, batch 16 x 64) and at the pretrained pair (MiniLM + SmolLM2-135M): the bytes
   autograd saves for the backward pass (activations) and the forward + backward time. Target: activations <= 0.5x
   at <= 1.4x the step time.
2. the pretrained pair trained fully, with the decoder frozen, and with LoRA (r = 8 on the decoder's q/v
   projections, through the plain peft idiom): trainable parameters, optimizer step time, and the step's tensor
   memory (parameters + gradients + AdamW states + saved activations).

    python bench/bench_scaling.py            # both parts (the pretrained pair needs requirements-assets.txt)
    python bench/bench_scaling.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ModelShape, RatioRow, build_model, environment, format_table, measure  # noqa: E402

MIB = 2**20


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward during `step`'s forward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):  # weights are not activations
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step()
    loss.backward()
    return sum(seen.values())


def batch_for(model: torch.nn.Module, batch_size: int, length: int, vocab: int, encoder_vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, length), generator=generator)
    return {
        "input_ids": torch.randint(5, encoder_vocab, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "decoder_input_ids": ids,
        "labels": ids,
    }


def checkpointing_rows(name: str, build: Callable[[], torch.nn.Module], batch: dict, rounds: int) -> list[RatioRow]:
    models = {}
    for checkpointing in (False, True):
        model = build().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        models[checkpointing] = model

    def step(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
        return lambda: model(**batch, use_cache=False).loss

    def train_step(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            step(model)().backward()

        return run

    memory = {flag: saved_activation_bytes(step(model)) for flag, model in models.items()}
    times = measure({str(flag): train_step(model) for flag, model in models.items()}, repeats=rounds, warmup=1)
    on, off = statistics.median(times["True"]), statistics.median(times["False"])
    mem_ratio = memory[True] / memory[False]
    return [
        RatioRow(
            f"{name}: saved activations, checkpointing on vs off",
            "MiB",
            memory[True] / MIB,
            memory[False] / MIB,
            mem_ratio,
            "<= 0.50",
            mem_ratio <= 0.5,
        ),
        RatioRow(
            f"{name}: forward + backward, checkpointing on vs off", "s", on, off, on / off, "<= 1.40", on / off <= 1.4
        ),
    ]


def pretrained_pair(**config: object) -> tuple[torch.nn.Module, object]:
    from mine_vae.presets import build_pretrained, get_preset

    preset = get_preset("minilm-smollm2")
    model, processor = build_pretrained(
        preset.encoder_path(), preset.decoder_path(), max_length=64, latent_size=64, **config
    )
    return model, processor


def trainable_parts_rows(batch: dict, rounds: int) -> list[dict]:
    from peft import LoraConfig, get_peft_model

    from mine_vae.adapters import train_heads_with_adapters

    def full() -> torch.nn.Module:
        return pretrained_pair()[0]

    def frozen() -> torch.nn.Module:
        model = pretrained_pair()[0]
        model.decoder.requires_grad_(False)
        return model

    def lora() -> torch.nn.Module:
        model = pretrained_pair()[0]
        config = LoraConfig(target_modules=r".*decoder.*\.(q_proj|v_proj)", r=8, lora_alpha=16)
        return train_heads_with_adapters(get_peft_model(model, config))

    variants = {"full": full(), "frozen decoder": frozen(), "LoRA r=8 (decoder q, v)": lora()}
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        for name, model in variants.items()
    }

    def optimizer_step(name: str) -> Callable[[], None]:
        model, optimizer = variants[name], optimizers[name]

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()

        return run

    times = measure({name: optimizer_step(name) for name in variants}, repeats=rounds, warmup=1)
    rows = []
    for name, model in variants.items():
        trainable = [p for p in model.parameters() if p.requires_grad]
        parameters = sum(p.numel() * p.element_size() for p in model.parameters())
        gradients = sum(p.numel() * p.element_size() for p in trainable)
        adam = 2 * gradients  # exp_avg and exp_avg_sq, the parameters' size each
        activations = saved_activation_bytes(lambda m=model: m(**batch, use_cache=False).loss)
        rows.append(
            {
                "variant": name,
                "trainable_parameters": sum(p.numel() for p in trainable),
                "step_seconds": statistics.median(times[name]),
                "tensor_memory_mib": (parameters + gradients + adam + activations) / MIB,
                "activations_mib": activations / MIB,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--skip-pretrained", action="store_true", help="only the 4x256 model (no asset packages)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5

    shape = ModelShape(max_positions=128)
    small_batch = batch_for(None, 16, 64, shape.vocab_size, shape.vocab_size)
    rows = checkpointing_rows(
        "BERT 4x256 + GPT-2 4x256, batch 16x64",
        lambda: build_model(shape, latent_injection="both", mi_weight=0.0),
        small_batch,
        rounds,
    )
    parts: list[dict] = []
    if not args.skip_pretrained:
        model, processor = pretrained_pair()
        pair_batch = batch_for(model, 8, 48, model.config.decoder.vocab_size, model.config.encoder.vocab_size)
        rows += checkpointing_rows(
            "MiniLM + SmolLM2-135M, batch 8x48", lambda: pretrained_pair(mi_weight=0.0)[0], pair_batch, rounds
        )
        parts = trainable_parts_rows(pair_batch, rounds)

    print(format_table(rows))
    if parts:
        print("\nMiniLM + SmolLM2-135M, batch 8x48, AdamW step:")
        print(f"{'variant':<26} {'trainable':>12} {'step s':>8} {'tensor MiB':>11} {'activations MiB':>16}")
        for row in parts:
            print(
                f"{row['variant']:<26} {row['trainable_parameters']:>12,} {row['step_seconds']:>8.2f} "
                f"{row['tensor_memory_mib']:>11.0f} {row['activations_mib']:>16.0f}"
            )
    if args.json:
        document = {"environment": environment(), "rows": [vars(r) for r in rows], "trainable_parts": parts}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
