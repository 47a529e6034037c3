"""MineVaeTrainer: transformers' Trainer with the paper's alternating step (k critic updates, then one VAE update)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.optimization import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .evaluation import count_words, evaluate_vae
from .hub import write_trainer_model_card
from .modeling_mine_vae import MineVaeModel
from .processing_mine_vae import MineVaeDataCollator, MineVaeProcessor
from .training_args import MineVaeTrainingArguments

CRITIC_STATE_TENSORS = "critic_optimizer.safetensors"
CRITIC_STATE_JSON = "critic_state.json"
_TERMS = ("reconstruction", "kl", "mi_bound", "critic_loss")


class MineVaeTrainer(Trainer):
    """
    Trains a [`MineVaeModel`] with the alternating step of Qian & Cheung (2019):

    1. one forward pass gives z ~ q(z|x), the reconstruction and the KL;
    2. the critic takes `args.critic_steps` updates that maximise the MI bound on (x, z) with z detached (its own
       AdamW and learning-rate schedule; the VAE optimizer never holds a critic parameter);
    3. the VAE takes one update on reconstruction + β KL - λ bound, the bound scored by the just-updated critic with
       its parameters held fixed, so the gradient reaches the encoder through z only.

    β and λ follow `args`' schedules up to the model's `config.kl_weight` / `config.mi_weight`. Checkpoints also hold
    the critic's optimizer and scheduler (safetensors + JSON); a checkpoint counts as complete once its
    `trainer_state.json` is written, and `resume_from_checkpoint=True` picks the newest complete one, so an interrupted
    save never blocks resuming.
    """

    args: MineVaeTrainingArguments

    def __init__(
        self,
        model: MineVaeModel,
        args: MineVaeTrainingArguments,
        processing_class: MineVaeProcessor | None = None,
        data_collator: Any = None,
        **kwargs: Any,
    ):
        if not isinstance(args, MineVaeTrainingArguments):
            raise TypeError("MineVaeTrainer needs MineVaeTrainingArguments (it holds the critic's settings).")
        if not hasattr(model, "critic_loss"):
            raise TypeError(f"MineVaeTrainer trains a MineVaeModel, got {type(model).__name__}.")
        if processing_class is not None:
            processing_class.check_model(model)
            if data_collator is None:
                data_collator = MineVaeDataCollator(processing_class)
        if args.free_bits is not None:
            model.config.free_bits = args.free_bits
        if model.config.mi_weight > 0 and args.per_device_train_batch_size < 2:
            raise ValueError(
                "The MI bound pairs each example with another example's z, so per_device_train_batch_size must be "
                f">= 2 (got {args.per_device_train_batch_size}); or set model.config.mi_weight = 0."
            )
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self._check_columns(kwargs.get("train_dataset"), "train_dataset")
        self._check_columns(kwargs.get("eval_dataset"), "eval_dataset")
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._terms: dict[str, list[torch.Tensor]] = defaultdict(list)

    # ----------------------------------------------------------------------------------------------------------------
    # Set-up
    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_columns(dataset: Any, name: str) -> None:
        if isinstance(dataset, dict):  # several evaluation sets
            for key, part in dataset.items():
                MineVaeTrainer._check_columns(part, f"{name}[{key!r}]")
            return
        if name.startswith("eval") and dataset is not None and hasattr(dataset, "__len__") and len(dataset) < 2:
            raise ValueError(
                f"{name} has {len(dataset)} example(s); the MI estimate (aggregate posterior) and active units need "
                "at least 2, and a few hundred for stable numbers."
            )
        columns = getattr(dataset, "column_names", None)
        if columns is None:
            return
        if "text" not in columns and not {"input_ids", "decoder_token_ids"} <= set(columns):
            raise ValueError(
                f"{name} has columns {columns}; it needs a 'text' column or the 'input_ids' and 'decoder_token_ids' "
                "columns of MineVaeProcessor.encode_texts (rename your text column to 'text')."
            )

    @property
    def _vae(self) -> MineVaeModel:
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        critic = self._vae.critic
        with _frozen(critic):  # the VAE optimizer must never see the critic's parameters
            optimizer = super().create_optimizer(model)
        critic_ids = {id(p) for p in critic.parameters()}
        if any(id(p) in critic_ids for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("The VAE optimizer holds critic parameters; build it from the encoder/decoder/heads only.")
        if self.critic_optimizer is None:
            self.critic_optimizer = torch.optim.AdamW(
                critic.parameters(),
                lr=self.args.critic_learning_rate,
                betas=(self.args.critic_adam_beta1, self.args.critic_adam_beta2),
                weight_decay=self.args.critic_weight_decay,
            )
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.critic_lr_scheduler is None:
            critic_updates = num_training_steps * self.args.critic_steps * self.args.gradient_accumulation_steps
            self.critic_lr_scheduler = get_scheduler(
                self.args.critic_lr_scheduler_type, self.critic_optimizer, num_training_steps=critic_updates
            )
        config = self._vae.config
        self.kl_schedule = self.args.kl_weight_schedule(config.kl_weight, num_training_steps)
        self.mi_schedule = self.args.mi_weight_schedule(config.mi_weight, num_training_steps)
        return scheduler

    # ----------------------------------------------------------------------------------------------------------------
    # The alternating step
    # ----------------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if not model.training:  # evaluation: the model's own loss at the configured weights
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        step = self.state.global_step
        beta, lam = self.kl_schedule(step), self.mi_schedule(step)
        outputs = model(**inputs, kl_weight=beta, mi_weight=0.0)
        loss = outputs.loss
        bound = outputs.mi_lower_bound
        if bound is None:  # a batch of one (an epoch's last) has no marginal pairs: the ELBO step alone
            self._record(reconstruction=outputs.reconstruction_loss, kl=outputs.kl, beta=beta)
            return (loss, outputs) if return_outputs else loss
        critic_loss = self._critic_updates(outputs)
        if lam > 0:
            bound = self._vae.mi_lower_bound(outputs.pooler_output, outputs.z)
            loss = loss - lam * bound
        self._check_finite("VAE", loss, reconstruction=outputs.reconstruction_loss, kl=outputs.kl, mi_bound=bound)
        self._record(
            reconstruction=outputs.reconstruction_loss,
            kl=outputs.kl,
            mi_bound=bound,
            critic_loss=critic_loss,
            beta=beta,
            **{"lambda": lam},
        )
        return (loss, outputs) if return_outputs else loss

    def _critic_updates(self, outputs) -> torch.Tensor:
        """k updates of the critic on (x's view, z) with z detached; each after the first on a fresh posterior draw."""
        vae = self._vae
        features, mu, std = outputs.pooler_output, outputs.mu.detach(), outputs.logvar.detach().mul(0.5).exp()
        latent = outputs.z.detach()
        for update in range(self.args.critic_steps):
            if update:
                latent = mu + std * torch.randn_like(std)
            loss = vae.critic_loss(features, latent)
            self._check_finite("critic", loss, critic_loss=loss)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._sync_critic()
            if self.args.critic_max_grad_norm > 0:
                nn.utils.clip_grad_norm_(vae.critic.parameters(), self.args.critic_max_grad_norm)
            self.critic_optimizer.step()
            self.critic_lr_scheduler.step()
        # Spent: keep them out of the Trainer's clip_grad_norm_(model.parameters()) and its logged grad_norm.
        self.critic_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _sync_critic(self) -> None:
        """Average the critic's gradients (and moving average) over processes: DDP leaves the critic to this step."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        critic = self._vae.critic
        grads = [p.grad for p in critic.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [critic.log_ema.reshape(1)])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for grad, chunk in zip(grads, flat[:-1].split([g.numel() for g in grads])):
            grad.copy_(chunk.view_as(grad))
        critic.log_ema.copy_(flat[-1])

    def _check_finite(self, step_name: str, loss: torch.Tensor, **terms: torch.Tensor | None) -> None:
        if torch.isfinite(loss):
            return
        bad = [name for name, value in terms.items() if value is not None and not torch.isfinite(value).all()]
        raise FloatingPointError(
            f"The {step_name} step's loss is not finite at step {self.state.global_step} "
            f"(non-finite term: {', '.join(bad) or 'loss'}). Training stopped before the update, so the last saved "
            "checkpoint is intact; resume from it with a lower learning rate or mi_weight."
        )

    def _record(self, **values: torch.Tensor | float | None) -> None:
        for name, value in values.items():
            if value is not None:
                self._terms[name].append(torch.as_tensor(value, dtype=torch.float32).detach())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss term since the last log, so the curves show collapse (KL, bound -> 0)."""
        if self._terms and "loss" in logs:
            for name, values in self._terms.items():
                mean = torch.stack([v.to(self.args.device) for v in values]).mean()
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 4)
            self._terms.clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The text-VAE metrics of `mine_vae.evaluation.evaluate_vae` (IW-NLL, PPL, KL, MI, AU, bound; BLEU with
        `args.eval_bleu`) on the evaluation set, logged with the `eval_` prefix."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        # Every process evaluates the whole set: MI and active units are properties of the whole set, not of a shard.
        dataloader = DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator, shuffle=False
        )
        columns = getattr(dataset, "column_names", None) or []
        metrics = evaluate_vae(
            self._vae,
            dataloader,
            num_importance_samples=self.args.eval_importance_samples,
            # Word counts give the per-word perplexity papers report (the eval sampler keeps dataset order).
            word_counts=count_words(dataset["text"]) if "text" in columns else None,
            compute_bleu=self.args.eval_bleu,
            processor=self.processing_class,
        )
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: the critic's optimizer and scheduler travel with the Trainer's own state
    # ----------------------------------------------------------------------------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save and self.critic_optimizer is not None:
            _save_state(output_dir, self.critic_optimizer.state_dict(), self.critic_lr_scheduler.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        if not os.path.isfile(os.path.join(checkpoint, CRITIC_STATE_JSON)):
            raise ValueError(
                f"{checkpoint} holds no critic state ({CRITIC_STATE_JSON}); it was not written by MineVaeTrainer "
                "or its save was interrupted. Resume from a complete checkpoint."
            )
        optimizer_state, scheduler_state = _load_state(checkpoint)
        self.critic_optimizer.load_state_dict(optimizer_state)
        self.critic_lr_scheduler.load_state_dict(scheduler_state)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint in {self.args.output_dir} to resume from.")
        elif isinstance(resume_from_checkpoint, str) and not is_complete_checkpoint(resume_from_checkpoint):
            newest = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (an interrupted save?); "
                f"resume from {newest or 'an earlier checkpoint'} instead."
            )
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.args.push_to_hub:  # the Trainer pushes only at saves (hub_strategy); push the final model and card
            self.push_to_hub(commit_message="End of training")
        return output

    def create_model_card(self, **kwargs: Any) -> None:
        """The MINE-VAE model card (README.md in output_dir), which `push_to_hub` uploads with the model."""
        write_trainer_model_card(self, **kwargs)


def is_complete_checkpoint(folder: str) -> bool:
    """True when `folder` holds everything a resume needs: the Trainer writes `trainer_state.json` last."""
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.isfile(os.path.join(folder, CRITIC_STATE_JSON))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir` that a resume can use, skipping interrupted saves."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.rpartition("-")
        if (
            prefix == PREFIX_CHECKPOINT_DIR
            and step.isdigit()
            and is_complete_checkpoint(os.path.join(output_dir, name))
        ):
            steps.append(int(step))
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _save_state(output_dir: str, optimizer_state: dict, scheduler_state: dict) -> None:
    """Optimizer tensors in safetensors, everything else in JSON: no pickle anywhere."""
    tensors = {
        f"{param}.{name}": value.contiguous()
        for param, state in optimizer_state["state"].items()
        for name, value in state.items()
    }
    save_file(tensors, os.path.join(output_dir, CRITIC_STATE_TENSORS))
    meta = {"param_groups": optimizer_state["param_groups"], "scheduler": scheduler_state}
    with open(os.path.join(output_dir, CRITIC_STATE_JSON), "w", encoding="utf-8") as f:
        json.dump(meta, f)


def _load_state(checkpoint: str) -> tuple[dict, dict]:
    with open(os.path.join(checkpoint, CRITIC_STATE_JSON), encoding="utf-8") as f:
        meta = json.load(f)
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in load_file(os.path.join(checkpoint, CRITIC_STATE_TENSORS)).items():
        param, name = key.split(".", 1)
        state[int(param)][name] = value
    return {"state": dict(state), "param_groups": meta["param_groups"]}, meta["scheduler"]


__all__ = ["MineVaeTrainer", "is_complete_checkpoint", "last_complete_checkpoint"]
