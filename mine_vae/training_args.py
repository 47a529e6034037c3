"""MineVaeTrainingArguments: the Trainer's arguments plus the knobs of the alternating critic step and the schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial

from transformers import TrainingArguments

from .configuration_mine_vae import require_setting
from .schedules import SCHEDULE_KINDS, WeightSchedule


@dataclass
class MineVaeTrainingArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`MineVaeTrainer`]. The peak values of β and λ are the model's
    `config.kl_weight` and `config.mi_weight`; these arguments shape them over the run. Free bits are the model's
    `config.free_bits` alone: like β and λ they change the objective, so they are saved with the model.

    Defaults are chosen against posterior collapse (see docs/method.md): β rises linearly from 0 over the first 30%
    of training, so the encoder writes into z before the KL pushes back, and the critic trains alone for the first
    `critic_warmup_steps` so that when λ enters the loss the bound already carries a gradient.
    """

    pretrained_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the pretrained encoder's and decoder's weights that train (or of LoRA adapters "
            "on them); the heads this model adds keep learning_rate. None: learning_rate for everything."
        },
    )
    critic_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the critic's optimizer."})
    critic_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the critic's AdamW."})
    critic_adam_beta1: float = field(default=0.9, metadata={"help": "beta1 of the critic's AdamW."})
    critic_adam_beta2: float = field(default=0.999, metadata={"help": "beta2 of the critic's AdamW."})
    critic_max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping of the critic (0: off)."})
    critic_lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule of the critic (any `lr_scheduler_type`)."}
    )
    critic_steps: int = field(
        default=1, metadata={"help": "Critic updates per VAE update (k >= 1), each on a fresh posterior sample."}
    )
    critic_warmup_steps: int = field(
        default=50, metadata={"help": "Steps at the start where only the critic learns the bound (lambda = 0)."}
    )
    mi_schedule: str = field(
        default="linear", metadata={"help": f"Schedule of lambda after the critic warm-up: one of {SCHEDULE_KINDS}."}
    )
    mi_warmup_steps: int = field(
        default=0, metadata={"help": "With mi_schedule='linear': steps for lambda to rise from 0 after the warm-up."}
    )
    kl_schedule: str = field(default="linear", metadata={"help": f"Schedule of beta: one of {SCHEDULE_KINDS}."})
    kl_warmup_ratio: float = field(
        default=0.3, metadata={"help": "With kl_schedule='linear': fraction of training over which beta rises from 0."}
    )
    kl_warmup_steps: int = field(
        default=0, metadata={"help": "With kl_schedule='linear': steps for beta to rise (overrides kl_warmup_ratio)."}
    )
    kl_cycles: int = field(default=4, metadata={"help": "With kl_schedule='cyclical': number of cycles."})
    kl_zero_ratio: float = field(
        default=0.5, metadata={"help": "With kl_schedule='cyclical': fraction of each cycle at beta = 0."}
    )
    kl_increase_ratio: float = field(
        default=0.25, metadata={"help": "With kl_schedule='cyclical': fraction of each cycle where beta rises."}
    )
    final_free_bits: float | None = field(
        default=None,
        metadata={
            "help": "Free bits per dimension for the last final_free_bits_ratio of the steps, in place of the "
            "model's free_bits (a rate cut: the posterior gives back the KL the decoder does not read). None: off."
        },
    )
    final_free_bits_ratio: float = field(
        default=0.25, metadata={"help": "With final_free_bits: the fraction of training, at its end, it applies to."}
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={"help": "Keep the pretrained encoder's weights fixed (the posterior and the critic still train)."},
    )
    freeze_decoder: bool = field(
        default=False,
        metadata={"help": "Keep the pretrained decoder's weights fixed (z's injection heads still train)."},
    )
    decoder_trainable_layers: int = field(
        default=0,
        metadata={
            "help": "With freeze_decoder: the decoder's top N transformer layers (and its final norm) still train, "
            "its embeddings and LM head stay fixed. A decoder that learns can learn to ignore z (posterior collapse)."
        },
    )
    standardize_latent_examples: int = field(
        default=0,
        metadata={
            "help": "After training, measure the aggregate posterior's mean and spread over this many training "
            "sentences and fold them into the model (MineVaeModel.standardize_latent), so that samples from the "
            "N(0, I) prior land where the decoder was trained; reconstructions do not change. 0: off."
        },
    )
    eval_importance_samples: int = field(
        default=10, metadata={"help": "Importance samples per sentence for the NLL in evaluate() (100 for papers)."}
    )
    eval_bleu: bool = field(default=False, metadata={"help": "Also compute reconstruction BLEU in evaluate()."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads 'text' / 'decoder_token_ids' columns."}
    )

    def __post_init__(self) -> None:
        if (self.bf16 or self.bf16_full_eval) and not self.use_cpu and _cpu_only():
            # transformers refuses bf16 without an accelerator unless told to use the CPU; on a CPU-only machine
            # there is nothing else to use, and CPU autocast to bf16 is what the pretrained preset trains with.
            self.use_cpu = True
        super().__post_init__()
        # A NaN or infinite number anywhere (the Trainer's own learning_rate included) only shows up as a diverged
        # or silent run; refuse it here, naming the argument.
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                _require(False, spec.name, value, "a finite number")
        _require(self.learning_rate >= 0, "learning_rate", self.learning_rate, "a number >= 0")
        _require(self.critic_steps >= 1, "critic_steps", self.critic_steps, "an integer >= 1")
        _require(self.critic_learning_rate > 0, "critic_learning_rate", self.critic_learning_rate, "a number > 0")
        _require(
            self.pretrained_learning_rate is None or self.pretrained_learning_rate >= 0,
            "pretrained_learning_rate",
            self.pretrained_learning_rate,
            "a number >= 0, or None for learning_rate",
        )
        _require(self.critic_weight_decay >= 0, "critic_weight_decay", self.critic_weight_decay, "a number >= 0")
        _require(self.critic_max_grad_norm >= 0, "critic_max_grad_norm", self.critic_max_grad_norm, "a number >= 0")
        _require(
            self.decoder_trainable_layers >= 0,
            "decoder_trainable_layers",
            self.decoder_trainable_layers,
            "an integer >= 0",
        )
        if self.decoder_trainable_layers and not self.freeze_decoder:
            raise ValueError(
                f"MineVaeTrainingArguments: decoder_trainable_layers={self.decoder_trainable_layers} trains the top "
                "layers of a frozen decoder; set freeze_decoder=True with it (without it the whole decoder trains)."
            )
        _require(self.critic_warmup_steps >= 0, "critic_warmup_steps", self.critic_warmup_steps, "an integer >= 0")
        _require(self.mi_warmup_steps >= 0, "mi_warmup_steps", self.mi_warmup_steps, "an integer >= 0")
        _require(0 <= self.kl_warmup_ratio <= 1, "kl_warmup_ratio", self.kl_warmup_ratio, "a number in [0, 1]")
        _require(self.kl_warmup_steps >= 0, "kl_warmup_steps", self.kl_warmup_steps, "an integer >= 0")
        _require(
            self.standardize_latent_examples == 0 or self.standardize_latent_examples >= 2,
            "standardize_latent_examples",
            self.standardize_latent_examples,
            "0 (off) or an integer >= 2",
        )
        if self.standardize_latent_examples and (self.fsdp or self.deepspeed):
            raise ValueError(
                "MineVaeTrainingArguments: standardize_latent_examples rewrites the heads' full weights in place, "
                "which FSDP and DeepSpeed shard; set it to 0 and call model.standardize_latent(...) on the saved model."
            )
        _require(
            self.final_free_bits is None or self.final_free_bits >= 0,
            "final_free_bits",
            self.final_free_bits,
            "a number >= 0, or None for the model's free_bits throughout",
        )
        _require(
            0 < self.final_free_bits_ratio <= 1, "final_free_bits_ratio", self.final_free_bits_ratio, "in (0, 1]"
        )
        _require(self.eval_importance_samples >= 1, "eval_importance_samples", self.eval_importance_samples, ">= 1")
        for name in ("mi_schedule", "kl_schedule"):
            _require(getattr(self, name) in SCHEDULE_KINDS, name, getattr(self, name), f"one of {SCHEDULE_KINDS}")
        if self.fp16:
            raise ValueError(
                "MineVaeTrainingArguments: fp16 is not supported (the critic step has no loss scaler); use bf16."
            )
        # Validate the cyclical shape now rather than at the first step.
        self.kl_weight_schedule(1.0, 100)

    def kl_weight_schedule(self, peak: float, total_steps: int) -> WeightSchedule:
        """β over the optimizer steps, rising to `peak` (the model's `config.kl_weight`)."""
        if self.kl_schedule == "linear":
            warmup = self.kl_warmup_steps or round(self.kl_warmup_ratio * total_steps)
            return WeightSchedule.linear(peak, warmup_steps=warmup)
        if self.kl_schedule == "cyclical":
            return WeightSchedule.cyclical(
                peak,
                total_steps=max(total_steps, self.kl_cycles),
                num_cycles=self.kl_cycles,
                zero_ratio=self.kl_zero_ratio,
                increase_ratio=self.kl_increase_ratio,
            )
        return WeightSchedule.constant(peak)

    def free_bits_schedule(self, level: float, total_steps: int) -> Callable[[int], float]:
        """Free bits per dimension at each optimizer step: `level` (the model's `config.free_bits`), then
        `final_free_bits` from step `total_steps - round(final_free_bits_ratio * total_steps)` on."""
        if self.final_free_bits is None:
            return lambda step: level
        final, cut = self.final_free_bits, total_steps - round(self.final_free_bits_ratio * total_steps)
        return lambda step: final if step >= cut else level

    def mi_weight_schedule(self, peak: float, total_steps: int) -> WeightSchedule:
        """λ over the optimizer steps: 0 during the critic warm-up, then the chosen shape up to `peak`."""
        if self.mi_schedule == "cyclical":
            return WeightSchedule.cyclical(peak, total_steps=max(total_steps, 1))
        if self.mi_schedule == "linear" or self.critic_warmup_steps:
            warmup = self.mi_warmup_steps if self.mi_schedule == "linear" else 0
            return WeightSchedule.linear(peak, warmup_steps=warmup, delay_steps=self.critic_warmup_steps)
        return WeightSchedule.constant(peak)


_require = partial(require_setting, "MineVaeTrainingArguments")


__all__ = ["MineVaeTrainingArguments"]


def _cpu_only() -> bool:
    """True when torch sees no accelerator (no CUDA, XPU, MPS, ...) to run bf16 on."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()
