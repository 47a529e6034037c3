"""Activation checkpointing end to end through the Trainer, with z in the decoder cache (memory injection)."""

import datasets
import pytest
import tiny
import torch

from mine_vae import MineVaeTrainer, MineVaeTrainingArguments


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_trainer_with_activation_checkpointing_matches_the_unchecked_run(kind, tmp_path):
    data = datasets.Dataset.from_dict({"text": tiny.sentences(32)})
    runs = []
    for checkpointing in (False, True):
        model = tiny.model(kind, latent_injection="both", mi_weight=1.0, seed=1)
        args = MineVaeTrainingArguments(
            output_dir=str(tmp_path / f"out-{checkpointing}"),
            per_device_train_batch_size=8,
            max_steps=3,
            learning_rate=3e-3,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            activation_checkpointing=checkpointing,
        )
        trainer = MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data)
        trainer.train()
        assert model.is_activation_checkpointing == checkpointing
        runs.append({n: p.detach().clone() for n, p in model.named_parameters()})
    unchecked, checked = runs
    for name, value in unchecked.items():
        torch.testing.assert_close(checked[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_reentrant_checkpointing_with_z_in_the_cache_is_refused_when_enabled():
    model = tiny.model(latent_injection="both")
    with pytest.raises(ValueError, match="use_reentrant=True"):
        model.activation_checkpointing_enable({"use_reentrant": True})
    tiny.model(latent_injection="embedding").activation_checkpointing_enable({"use_reentrant": True})
