"""MineVaeTrainer: transformers' Trainer with the paper's alternating step (k critic updates, then one VAE update)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from transformers import Trainer
from transformers.optimization import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.training_args import ParallelMode
from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available, logging

from .adapters import check_adapter_base, peft_base_vae, train_heads_with_adapters, write_base_record
from .checkpointing import (
    CRITIC_STATE,
    CRITIC_WEIGHTS,
    OPTIMIZER_STATE,
    PICKLED_TRAINING_ARGS,
    TRAINING_ARGS_JSON,
    is_complete_checkpoint,
    last_complete_checkpoint,
    other_accelerator,
    read_checkpoint_file,
    read_rng,
    restore_state,
    resume_point,
    rng_file,
    rotate_step_checkpoints,
    save_rng,
    save_state,
    set_rng,
    unreadable,
)
from .data_collator import MineVaeTrainingCollator, check_dataset_columns, check_train_dataset
from .distributed import (
    as_model_class,
    check_deepspeed_config,
    freeze_unused_pooler,
    leave_critic_unsharded,
    partitioned_critic_weights,
    release_backward_leftovers,
    restore_partitioned_critic,
    whole_parameters,
)
from .evaluation import LatentMoments, aggregate_posterior_moments, count_words, evaluate_vae
from .hub import write_trainer_model_card
from .latent_path import decoder_layers
from .modeling_mine_vae import MineVaeModel, MineVaePosterior
from .processing_mine_vae import MineVaeProcessor
from .sampling import SeededLengthGroupedSampler, SeededRandomSampler
from .training_args import MineVaeTrainingArguments

logger = logging.get_logger(__name__)

# The private methods of transformers' Trainer (5.24) that MineVaeTrainer overrides, and why. A transformers upgrade
# that renames or re-signs one of these silently bypasses the override, so tests check that each still exists there.
OVERRIDDEN_TRAINER_INTERNALS: dict[str, str] = {
    "_get_train_sampler": (
        "the length-grouped sampler (and the random one when accelerate's seedable sampler is off) shuffles from "
        "(seed, epoch) alone, so a run resumed mid-epoch sees the batches the interrupted run would have seen"
    ),
    "_save_optimizer_and_scheduler": (
        "the VAE's and the critic's optimizer and scheduler states as safetensors + JSON, not pickled optimizer.pt / "
        "scheduler.pt"
    ),
    "_load_optimizer_and_scheduler": "reads those; a damaged file is a one-line ValueError naming it",
    "_save_rng_state": "the RNG states (python, numpy, torch CPU/CUDA) as safetensors + JSON, not a pickled .pth",
    "_load_rng_state": "reads those; a damaged file is a one-line error",
    "_save_checkpoint": (
        "save_total_limit then rotates only the checkpoint-<step> folders the Trainer writes: its own rotation orders "
        "every checkpoint-* folder by modification time and would delete a user's checkpoint-best/"
    ),
    "_save": "writes the training arguments as training_args.json instead of the pickled training_args.bin",
    "_push_from_checkpoint": (
        "the Trainer's push at each save (hub_strategy other than 'end') writes training_args.json, never the pickled "
        "training_args.bin (as save_model does)"
    ),
}

# The means MineVaeTrainer adds to each training log line, beside the Trainer's own loss and learning rate: its losses'
# terms and the schedules' weights (β, λ) at the step. The CLI's log lines and the study's curves show these. "bow"
# (the bag-of-words loss) is logged only by a model with a bag-of-words head (`MineVaeConfig.bow_weight` > 0).
LOGGED_TERMS = ("reconstruction", "kl", "mi_bound", "critic_loss", "beta", "lambda", "free_bits", "bow")


class MineVaeTrainer(Trainer):
    """
    Trains a [`MineVaeModel`] with the alternating step of Qian & Cheung (2019):

    1. one forward pass gives z ~ q(z|x), the reconstruction and the KL;
    2. the critic takes `args.critic_steps` updates that maximise the MI bound on (x, z) with z detached (its own
       AdamW and learning-rate schedule; the VAE optimizer never holds a critic parameter);
    3. the VAE takes one update on reconstruction + β KL - λ bound, the bound scored by the just-updated critic with
       its parameters held fixed, so the gradient reaches the encoder through z only.

    β and λ follow `args`' schedules up to the model's `config.kl_weight` / `config.mi_weight`.

    Datasets hold raw `text`, the columns of `MineVaeProcessor.encode_texts`, or ready model inputs (see
    [`MineVaeTrainingCollator`], the default collator); with your own `data_collator` any columns go. `eval_dataset`
    may be a dict (or `DatasetDict`) of several sets, each evaluated and logged under `eval_{name}_...`.

    Checkpoints hold no pickle: both optimizers and schedulers, the RNG states and the training arguments are
    safetensors and JSON (`mine_vae.checkpointing`). A resume
    mid-epoch replays the interrupted epoch's order with every sampler offered, so it continues exactly. A checkpoint
    counts as complete once its `trainer_state.json` is written, and `resume_from_checkpoint=True` picks the newest
    complete one, so an interrupted save never blocks resuming.
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
        train_heads_with_adapters(model)  # a peft-wrapped VAE's heads and critic train (and save) with its adapters
        if args.save_strategy != "no":  # refused now, not at the first checkpoint (which would be left empty)
            (peft_base_vae(model) or model).check_savable()
        _freeze_pretrained_parts(model, args)
        # Checked before the Trainer's set-up so a wrong dataset fails first, with the fix named.
        check_train_dataset(kwargs.get("train_dataset"))
        own_collator = data_collator is not None  # the user's collator may take any columns
        for name in ("train_dataset", "eval_dataset"):
            check_dataset_columns(kwargs.get(name), name, own_collator, processing_class is not None)
        if data_collator is None:
            data_collator = MineVaeTrainingCollator.for_model(model, processing_class)
        if model.config.mi_weight > 0 and args.per_device_train_batch_size < 2:
            raise ValueError(
                "The MI bound pairs each example with another example's z, so per_device_train_batch_size must be "
                f">= 2 (got {args.per_device_train_batch_size}); or set model.config.mi_weight = 0."
            )
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._terms: dict[str, list[torch.Tensor | float]] = defaultdict(list)

    # ----------------------------------------------------------------------------------------------------------------
    # Set-up
    # ----------------------------------------------------------------------------------------------------------------
    @property
    def _vae(self) -> MineVaeModel:
        return self.accelerator.unwrap_model(self.model)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.is_fsdp_enabled:
            vae = self.accelerator.unwrap_model(self.model)
            leave_critic_unsharded(self.accelerator.state.fsdp_plugin, vae, self.accelerator.device)
            freeze_unused_pooler(vae)
        if self.is_deepspeed_enabled:
            check_deepspeed_config(self.accelerator.state.deepspeed_plugin.deepspeed_config)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        critic = self._vae.critic
        with critic.frozen():  # the VAE optimizer must never see the critic's parameters
            optimizer = super().create_optimizer(model)
        if self.args.pretrained_learning_rate is not None:
            _give_pretrained_weights_their_rate(optimizer, self._vae, self.args.pretrained_learning_rate)
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
        self.free_bits_schedule = self.args.free_bits_schedule(config.free_bits, num_training_steps)
        return scheduler

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """The Trainer's sampler, made to shuffle from (seed, epoch) alone where it would draw from the global RNG.

        A resumed run rebuilds the sampler and skips the batches already trained (accelerate's `skip_first_batches`)
        before it restores the RNG state, so an order drawn from the global RNG differs from the interrupted run's.
        The Trainer's `LengthGroupedSampler` has no generator; its `RandomSampler` is replaced by accelerate's seeded
        one unless `accelerator_config.use_seedable_sampler` is off. Both get accelerate's convention: the epoch's
        order comes from a generator seeded with `data_seed` (or `seed`) + epoch."""
        sampler = super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if type(sampler) is LengthGroupedSampler:
            return SeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed=seed)
        if type(sampler) is RandomSampler and not self.accelerator.use_seedable_sampler:
            return SeededRandomSampler(sampler.data_source, seed=seed)
        return sampler

    # ----------------------------------------------------------------------------------------------------------------
    # The alternating step
    # ----------------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if not model.training:  # evaluation: the model's own loss at the configured weights
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        step = self.state.global_step
        beta, lam, free_bits = self.kl_schedule(step), self.mi_schedule(step), self.free_bits_schedule(step)
        # λ = 0 here: the bound that enters the VAE's loss is scored below, by the critic after this batch's updates
        # (MineVaeModel.vae_loss says why); forward's own bound, from the critic before them, is kept graph-free.
        # The step never continues a sequence, so the decoder cache (on by default in the config) is dead weight.
        outputs = model(**{**inputs, "use_cache": False}, kl_weight=beta, mi_weight=0.0)
        bound = outputs.mi_lower_bound
        vae = self._vae
        if bound is None:  # a batch of one (an epoch's last) has no marginal pairs: the ELBO step alone
            loss = vae.vae_loss(
                outputs.reconstruction_loss,
                outputs.kl_per_dimension,
                kl_weight=beta,
                mi_weight=0.0,
                bow_loss=outputs.bow_loss,
                free_bits=free_bits,
            )
            terms = {"reconstruction": outputs.reconstruction_loss, "kl": outputs.kl, "free_bits": free_bits}
            self._record(**terms, beta=beta, bow=outputs.bow_loss)
            return (loss, outputs) if return_outputs else loss
        critic_loss = self._critic_updates(outputs)
        if lam > 0:
            bound = vae.mi_lower_bound(outputs.pooler_output, outputs.z)
        loss = vae.vae_loss(
            outputs.reconstruction_loss,
            outputs.kl_per_dimension,
            bound,
            kl_weight=beta,
            mi_weight=lam,
            bow_loss=outputs.bow_loss,
            free_bits=free_bits,
        )
        terms = {"reconstruction": outputs.reconstruction_loss, "kl": outputs.kl, "mi_bound": bound}
        self._check_finite("VAE", loss, **terms, bow=outputs.bow_loss)
        self._record(
            **terms, critic_loss=critic_loss, beta=beta, free_bits=free_bits, bow=outputs.bow_loss, **{"lambda": lam}
        )
        return (loss, outputs) if return_outputs else loss

    def _critic_updates(self, outputs) -> torch.Tensor:
        """k updates of the critic on (x's view, z) with z detached; each after the first on a fresh posterior draw."""
        vae = self._vae
        features, latent = outputs.pooler_output, outputs.z.detach()
        posterior = MineVaePosterior(mu=outputs.mu.detach(), logvar=outputs.logvar.detach())
        for update in range(self.args.critic_steps):
            if update:
                latent = posterior.sample()
            loss = vae.critic_loss(features, latent)
            self._check_finite("critic", loss, critic_loss=loss)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            release_backward_leftovers(self.model_wrapped)
            vae.critic.sync_gradients()
            if self.args.critic_max_grad_norm > 0:
                nn.utils.clip_grad_norm_(vae.critic.parameters(), self.args.critic_max_grad_norm)
            with whole_parameters(vae.critic):
                self.critic_optimizer.step()
            self.critic_lr_scheduler.step()
        # Spent: keep them out of the Trainer's clip_grad_norm_(model.parameters()) and its logged grad_norm.
        self.critic_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _check_finite(self, step_name: str, loss: torch.Tensor, **terms: torch.Tensor | None) -> None:
        if torch.isfinite(loss):
            return
        bad = [name for name, value in terms.items() if value is not None and not torch.isfinite(value).all()]
        checkpoint = last_complete_checkpoint(self.args.output_dir)
        if checkpoint is None:
            advice = (
                f"there is no complete checkpoint in {self.args.output_dir} to resume from; restart with a lower "
                "learning rate or mi_weight."
            )
        else:
            advice = (
                f"the newest complete checkpoint, {checkpoint}, is intact; resume from it with a lower learning rate "
                "or mi_weight."
            )
        raise FloatingPointError(
            f"The {step_name} step's loss is not finite at step {self.state.global_step} "
            f"(non-finite term: {', '.join(bad) or 'loss'}). Training stopped before the update: {advice}"
        )

    def _record(self, **values: torch.Tensor | float | None) -> None:
        for name, value in values.items():
            if value is None:
                continue
            # The schedules' weights stay Python floats: as float32 tensors 0.1 would be logged as 0.10000000149.
            self._terms[name].append(value.detach().float() if isinstance(value, torch.Tensor) else float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each of `LOGGED_TERMS` since the last log, so the curves show collapse (KL, bound -> 0)."""
        if self._terms and "loss" in logs:
            for name, values in self._terms.items():
                if isinstance(values[0], torch.Tensor):
                    mean = torch.stack([v.to(self.args.device) for v in values]).mean()
                    logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
                else:  # a schedule's weight, the same on every process
                    logs[name] = math.fsum(values) / len(values)
            self._terms.clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The text-VAE metrics of `mine_vae.evaluation.evaluate_vae` (IW-NLL, PPL, KL, MI, AU, bound; BLEU with
        `args.eval_bleu`) on the evaluation set, logged with the `eval_` prefix.

        Several evaluation sets (a dict or a `DatasetDict`, here or as the trainer's `eval_dataset`) are evaluated one
        by one as in `Trainer.evaluate`: each set's metrics are logged on their own, under
        `f"{metric_key_prefix}_{name}_..."`, and all are returned in one dict."""
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if dataset is None:
            raise ValueError("MineVaeTrainer: evaluation needs an eval_dataset.")
        if isinstance(dataset, Mapping):
            metrics: dict[str, float] = {}
            for name, part in dataset.items():
                metrics.update(
                    self.evaluate(
                        eval_dataset=part if override else name,
                        ignore_keys=ignore_keys,
                        metric_key_prefix=f"{metric_key_prefix}_{name}",
                    )
                )
            return metrics
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
    # Checkpoints hold no pickle: both optimizers and schedulers, the RNG states and the arguments are safetensors and
    # JSON (the files of mine_vae.checkpointing).
    # ----------------------------------------------------------------------------------------------------------------
    def _trainer_owns_optimizer_files(self) -> bool:
        """DeepSpeed, FSDP, XLA and SageMaker MP save (and shard) the optimizer their own way: left to the Trainer."""
        return bool(
            self.is_deepspeed_enabled or self.is_fsdp_enabled or is_torch_xla_available() or is_sagemaker_mp_enabled()
        )

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._trainer_owns_optimizer_files():
            super()._save_optimizer_and_scheduler(output_dir)
        elif self.args.should_save:
            save_state(output_dir, self.optimizer.state_dict(), self.lr_scheduler.state_dict(), OPTIMIZER_STATE)
        if self.critic_optimizer is None:
            return
        # Every process takes part in gathering ZeRO-3's slices; the files are written before the critic state's
        # JSON, whose presence marks the checkpoint complete.
        weights = partitioned_critic_weights(self._vae.critic)
        if self.args.should_save and weights is not None:
            save_file(weights, os.path.join(output_dir, CRITIC_WEIGHTS))
        if self.args.should_save:
            save_state(
                output_dir, self.critic_optimizer.state_dict(), self.critic_lr_scheduler.state_dict(), CRITIC_STATE
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if self._trainer_owns_optimizer_files():
            super()._load_optimizer_and_scheduler(checkpoint)
        elif os.path.isfile(os.path.join(checkpoint, OPTIMIZER_STATE.meta)):
            restore_state(checkpoint, OPTIMIZER_STATE, self.optimizer, self.lr_scheduler)
        # else: saved with save_only_model, as the Trainer does, training goes on with fresh optimizer state.
        if not os.path.isfile(os.path.join(checkpoint, CRITIC_STATE.meta)):
            raise ValueError(
                f"{checkpoint} holds no critic state ({CRITIC_STATE.meta}); it was not written by MineVaeTrainer "
                "or its save was interrupted. Resume from a complete checkpoint."
            )
        restore_state(checkpoint, CRITIC_STATE, self.critic_optimizer, self.critic_lr_scheduler)
        restore_partitioned_critic(self._vae.critic, checkpoint)

    def _save_rng_state(self, output_dir: str) -> None:
        if other_accelerator():  # XLA/NPU/HPU/MLU/MUSA generators: left to the Trainer, which knows them
            super()._save_rng_state(output_dir)
            return
        # A process can get here before the first one has created the folder.
        os.makedirs(output_dir, exist_ok=True)
        save_rng(rng_file(output_dir, self.args), self.args.parallel_mode == ParallelMode.DISTRIBUTED)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if other_accelerator():
            super()._load_rng_state(checkpoint)
            return
        path = rng_file(checkpoint, self.args)
        if not os.path.isfile(path):
            logger.info(
                f"{checkpoint} holds no RNG state for this process; the resumed run's random draws (dropout, "
                "z samples) will differ from an uninterrupted run's."
            )
            return
        states = read_checkpoint_file(path, read_rng)
        try:
            set_rng(states, self.args.parallel_mode == ParallelMode.DISTRIBUTED)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise unreadable(path, error) from None

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The Trainer's rotation (save_total_limit) globs `checkpoint-*` and orders by modification time, so it also
        # deletes a user's own `checkpoint-best/` in the output folder. Rotate only the step folders it writes.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_step_checkpoints(self._get_output_dir(trial), limit, self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with as_model_class(self.model):
            super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        # The Trainer's _save ends with torch.save(args, "training_args.bin"); replacing that one line would mean
        # copying the whole method, so the JSON takes the pickle's place right after it.
        folder = output_dir if output_dir is not None else self.args.output_dir
        with open(os.path.join(folder, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())
        if peft_base_vae(self.model) is not None:  # an adapter folder lacks the base: record which one it fits
            write_base_record(self.model, folder)
        pickled = os.path.join(folder, PICKLED_TRAINING_ARGS)
        if os.path.isfile(pickled):
            os.remove(pickled)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with _training_args_as_json(self.args):  # every save of a model goes through here, checkpoints included
            super().save_model(output_dir, _internal_call)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with _training_args_as_json(self.args):
            super()._push_from_checkpoint(checkpoint_folder)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        resume_from_checkpoint = resume_point(self.args.output_dir, resume_from_checkpoint)
        if resume_from_checkpoint is not None and peft_base_vae(self.model) is not None:
            check_adapter_base(self.model, resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.args.standardize_latent_examples:
            self.standardize_latent()
        if self.args.push_to_hub:  # the Trainer pushes only at saves (hub_strategy); push the final model and card
            self.push_to_hub(commit_message="End of training")
        return output

    def standardize_latent(self) -> LatentMoments:
        """Measure the aggregate posterior over `args.standardize_latent_examples` training sentences (split between
        the processes, summed over them, so every process gets the same model) and fold its mean and spread into the
        model (`MineVaeModel.standardize_latent`). `train` calls this at its end when the setting is on; checkpoints
        written during training keep z as trained."""
        share = math.ceil(self.args.standardize_latent_examples / self.args.world_size)
        moments = aggregate_posterior_moments(
            self.model,
            self.get_train_dataloader(),
            max_examples=share,
            reduce=(lambda tensor: self.accelerator.reduce(tensor, "sum")) if self.args.world_size > 1 else None,
        )
        self._vae.standardize_latent(moments.mean, moments.std)  # on the model's device already
        logger.info(
            "Standardised z over %d training sentences: removed a mean of norm %.3g and scales %.3g-%.3g.",
            moments.num_examples,
            float(moments.mean.norm()),
            float(moments.std.min()),
            float(moments.std.max()),
        )
        return moments

    def create_model_card(self, **kwargs: Any) -> None:
        """The MINE-VAE model card (README.md in output_dir), which `push_to_hub` uploads with the model."""
        write_trainer_model_card(self, **kwargs)


def _give_pretrained_weights_their_rate(optimizer: torch.optim.Optimizer, model: nn.Module, rate: float) -> None:
    """Move the encoder's and decoder's trainable weights (LoRA adapters included) into groups of their own at `rate`,
    each beside the group it came from (same weight decay). The heads start from random and take a high rate; the
    pretrained weights, fine-tuned at that rate, lose what they were pretrained for. Runs before the scheduler and
    the first step, so the groups' rates are the scheduler's base rates and no optimizer state exists yet."""
    vae = peft_base_vae(model) or model
    pretrained = {id(p) for side in (vae.encoder, vae.decoder) for p in side.parameters()}
    groups = []
    for group in optimizer.param_groups:
        own = [p for p in group["params"] if id(p) in pretrained]
        rest = [p for p in group["params"] if id(p) not in pretrained]
        if rest:
            groups.append({**group, "params": rest})
        if own:
            groups.append({**group, "params": own, "lr": rate})
    optimizer.param_groups[:] = groups


def _freeze_pretrained_parts(model: nn.Module, args: MineVaeTrainingArguments) -> None:
    """`args.freeze_encoder` / `freeze_decoder`: fix the pretrained sub-models' weights. The heads this model adds
    (posterior, latent injection, critic) are left trainable. With `args.decoder_trainable_layers` = N, the frozen
    decoder's top N layers and its final norm train again (full fine-tuning of a few top layers); its embeddings and
    LM head (tied in most causal LMs) stay fixed. A peft-wrapped model is left to peft, which has already frozen every
    base weight; freezing a side there would freeze its adapters."""
    if peft_base_vae(model) is not None:
        if args.decoder_trainable_layers:
            raise ValueError(
                "decoder_trainable_layers unfreezes layers of the decoder, which peft's adapters have frozen; set "
                "decoder_trainable_layers=0 with adapters (or drop the adapters)."
            )
        return
    for side in ("encoder", "decoder"):
        if getattr(args, f"freeze_{side}"):
            getattr(model, side).requires_grad_(False)
    count = args.decoder_trainable_layers
    if count:
        layers = decoder_layers(model.decoder, needed_by="decoder_trainable_layers")
        if count > len(layers):
            raise ValueError(
                f"decoder_trainable_layers={count}, but the decoder has {len(layers)} layers; use at most "
                f"{len(layers)}."
            )
        for layer in layers[len(layers) - count :]:
            layer.requires_grad_(True)
        norm = _final_norm(model.decoder)
        if norm is not None:
            norm.requires_grad_(True)


def _final_norm(decoder: nn.Module) -> nn.Module | None:
    """The norm the decoder applies after its last layer (GPT-2's `ln_f`, Llama's `norm`): a normalisation module
    among its base model's direct children, or None when it has none."""
    base = getattr(decoder, "base_model", decoder)
    for child in base.children():
        if "norm" in type(child).__name__.lower():
            return child
    return None


@contextmanager
def _training_args_as_json(args: Any) -> Iterator[None]:
    """The Trainer's `torch.save(args, ".../training_args.bin")` (in `save_model` and `_push_from_checkpoint`) writes
    `training_args.json` instead: no pickle exists in the folder, not even between the Trainer's save and its removal
    (a push at every save uploads the folder as it is then)."""
    from transformers.trainer import TRAINING_ARGS_NAME  # the name the Trainer gives that pickle

    real_save = torch.save

    def save(obj: Any, f: Any, *args_: Any, **kwargs: Any) -> None:
        if obj is args and isinstance(f, (str, os.PathLike)) and os.path.basename(f) == TRAINING_ARGS_NAME:
            with open(os.path.join(os.path.dirname(f), TRAINING_ARGS_JSON), "w", encoding="utf-8") as out:
                out.write(args.to_json_string())
            return
        real_save(obj, f, *args_, **kwargs)

    torch.save = save
    try:
        yield
    finally:
        torch.save = real_save


__all__ = [
    "LOGGED_TERMS",
    "MineVaeTrainer",
    "MineVaeTrainingCollator",
    "OVERRIDDEN_TRAINER_INTERNALS",
    "SeededLengthGroupedSampler",
    "SeededRandomSampler",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
]
