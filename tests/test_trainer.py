import json
import os
import shutil
import subprocess
import sys
import textwrap

import datasets
import pytest
import tiny
import torch

from mine_vae.trainer import LOGGED_TERMS, MineVaeTrainer, last_complete_checkpoint
from mine_vae.training_args import MineVaeTrainingArguments


def make_args(tmp_path, **overrides) -> MineVaeTrainingArguments:
    return tiny.training_args(tmp_path / "out", **overrides)


def make_trainer(tmp_path, model=None, dataset_size=48, **overrides) -> MineVaeTrainer:
    model = model or tiny.model(mi_weight=1.0)
    data = datasets.Dataset.from_dict({"text": tiny.sentences(dataset_size)})
    return MineVaeTrainer(
        model=model,
        args=make_args(tmp_path, **overrides),
        processing_class=tiny.processor(),
        train_dataset=data,
        eval_dataset=data.select(range(min(16, dataset_size))),
    )


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_optimizers_are_disjoint_and_both_parts_learn(tmp_path):
    trainer = make_trainer(tmp_path, critic_steps=2)
    before = parameters(trainer.model)
    trainer.train()
    critic_ids = {id(p) for p in trainer.model.critic.parameters()}
    vae_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert critic_ids and not critic_ids & vae_ids
    assert {id(p) for g in trainer.critic_optimizer.param_groups for p in g["params"]} == critic_ids
    after = parameters(trainer.model)
    assert not torch.equal(before["critic.feature_proj.weight"], after["critic.feature_proj.weight"])
    assert not torch.equal(
        before["encoder.embeddings.word_embeddings.weight"], after["encoder.embeddings.word_embeddings.weight"]
    )
    # k = 2 critic updates per VAE update.
    steps = {int(state["step"]) for state in trainer.critic_optimizer.state.values()}
    assert steps == {2 * 6}


def test_pretrained_weights_take_their_own_rate(tmp_path):
    trainer = make_trainer(tmp_path, learning_rate=1e-3, pretrained_learning_rate=1e-5, weight_decay=0.1)
    trainer.create_optimizer_and_scheduler(2)
    vae = trainer.model
    rate_of = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    pretrained = [p for side in (vae.encoder, vae.decoder) for p in side.parameters() if p.requires_grad]
    assert pretrained and {rate_of[id(p)] for p in pretrained} == {1e-5}
    assert {rate_of[id(p)] for p in vae.posterior.parameters()} == {1e-3}
    # Every trainable parameter sits in exactly one group, and the Trainer's weight-decay split is kept on both sides.
    ids = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(rate_of)
    assert {(g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups} == {
        (rate, decay) for rate in (1e-3, 1e-5) for decay in (0.0, 0.1)
    }


def test_a_pretrained_rate_of_zero_leaves_the_pretrained_weights_and_trains_the_heads(tmp_path):
    trainer = make_trainer(tmp_path, pretrained_learning_rate=0.0, max_steps=3)
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)
    for name in before:
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["posterior.weight"], after["posterior.weight"])


def test_without_a_pretrained_rate_every_weight_takes_learning_rate(tmp_path):
    trainer = make_trainer(tmp_path, learning_rate=1e-3, warmup_steps=0)
    trainer.create_optimizer_and_scheduler(2)
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {1e-3}


def test_each_term_is_logged(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged
    for key in ("reconstruction", "kl", "mi_bound", "critic_loss", "beta", "lambda"):
        assert all(key in entry for entry in logged), key
    # What the CLI and the study show of a log line: the trainer's terms, declared once, and nothing it does not log
    # ("bow" only with a bag-of-words head, below).
    assert set(LOGGED_TERMS) - {"bow"} == set(logged[0]) - {"loss", "grad_norm", "learning_rate", "epoch", "step"}
    # lambda is 0 during the critic warm-up step and then active.
    assert logged[0]["lambda"] < 1.0 and logged[-1]["lambda"] == 1.0


def test_the_bag_of_words_term_is_logged_with_its_head(tmp_path):
    trainer = make_trainer(tmp_path, model=tiny.model(mi_weight=1.0, bow_weight=1.0))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(entry["bow"] > 0 for entry in logged)
    assert set(LOGGED_TERMS) == set(logged[0]) - {"loss", "grad_norm", "learning_rate", "epoch", "step"}


def test_schedules_drive_the_weights(tmp_path):
    trainer = make_trainer(tmp_path, kl_schedule="cyclical", kl_cycles=2, critic_warmup_steps=3, max_steps=8)
    trainer.create_optimizer_and_scheduler(8)
    assert [trainer.kl_schedule(s) for s in range(8)] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert [trainer.mi_schedule(s) for s in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_the_rate_cut_lowers_the_free_bits_for_the_last_steps(tmp_path):
    """final_free_bits replaces the model's free bits over the last final_free_bits_ratio of the steps: the logged
    floor drops at the cut, and the loss there charges the KL a floor of 100 nats per dimension had hidden."""
    model = tiny.model(mi_weight=0.0, free_bits=100.0)
    trainer = make_trainer(
        tmp_path,
        model=model,
        max_steps=8,
        logging_steps=1,
        kl_schedule="constant",
        final_free_bits=0.0,
        final_free_bits_ratio=0.25,
    )
    trainer.create_optimizer_and_scheduler(8)
    assert [trainer.free_bits_schedule(step) for step in range(8)] == [100.0] * 6 + [0.0] * 2
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["free_bits"] for entry in logged] == [100.0] * 6 + [0.0] * 2
    # Under the floor the KL term is the constant 100 x latent size; after the cut it is the KL itself.
    constant = 100.0 * model.config.latent_size
    for entry in logged:
        charged = constant if entry["free_bits"] else entry["kl"]
        assert entry["loss"] == pytest.approx(entry["reconstruction"] + charged, rel=1e-4), entry
    # Without final_free_bits the model's own floor holds throughout.
    plain = make_trainer(tmp_path / "plain", model=tiny.model(free_bits=0.5), max_steps=4)
    plain.create_optimizer_and_scheduler(4)
    assert {plain.free_bits_schedule(step) for step in range(4)} == {0.5}


def test_gradient_accumulation_and_bf16_autocast_train(tmp_path):
    trainer = make_trainer(
        tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=4, bf16=True, max_steps=3
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # The critic updates once per micro-batch: 2 micro-batches x 3 optimizer steps.
    assert {int(s["step"]) for s in trainer.critic_optimizer.state.values()} == {6}


def test_resume_continues_exactly(tmp_path):
    full = make_trainer_with_ema(tmp_path / "full", max_steps=6)
    full.train()
    expected = parameters(full.model)

    first = make_trainer_with_ema(tmp_path / "half", max_steps=6, save_strategy="steps", save_steps=3)
    first.add_callback(tiny.StopAt(3))  # an interruption half-way through the same 6-step run
    first.train()
    checkpoint = last_complete_checkpoint(first.args.output_dir)
    assert checkpoint.endswith("checkpoint-3")
    second = make_trainer_with_ema(tmp_path / "half", max_steps=6, save_strategy="steps", save_steps=3)
    second.train(resume_from_checkpoint=True)
    got = parameters(second.model)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)


def make_trainer_with_ema(tmp_path, **overrides):
    return make_trainer(tmp_path, model=tiny.model(mi_weight=1.0, xi="ema"), **overrides)


def test_resume_restores_critic_state_and_moving_average(tmp_path):
    trainer = make_trainer_with_ema(tmp_path, max_steps=4, save_strategy="steps", save_steps=4)
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-4")
    files = os.listdir(checkpoint)
    assert "critic_optimizer.safetensors" in files and "critic_state.json" in files
    resumed = make_trainer_with_ema(tmp_path, max_steps=4)
    resumed.create_optimizer_and_scheduler(4)
    resumed._load_optimizer_and_scheduler(checkpoint)
    for key, state in trainer.critic_optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed.critic_optimizer.state_dict()["state"][key][name], value)
    assert resumed.critic_lr_scheduler.state_dict() == json.loads(json.dumps(trainer.critic_lr_scheduler.state_dict()))
    from mine_vae import MineVaeModel

    reloaded = MineVaeModel.from_pretrained(checkpoint)
    assert reloaded.critic.ema_updates.item() == 4 and torch.equal(
        reloaded.critic.log_ema, trainer.model.critic.log_ema
    )


def test_interrupted_save_leaves_the_last_good_checkpoint_loadable(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    out = trainer.args.output_dir
    # Simulate a save cut off half-way: the weights are there but not the trainer state written last.
    broken = os.path.join(out, "checkpoint-6")
    shutil.copytree(os.path.join(out, "checkpoint-4"), broken)
    os.remove(os.path.join(broken, "trainer_state.json"))
    assert last_complete_checkpoint(out).endswith("checkpoint-4")
    again = make_trainer(tmp_path, max_steps=5, save_strategy="no")
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 5
    with pytest.raises(ValueError, match="not a complete checkpoint.*checkpoint-4"):
        make_trainer(tmp_path, max_steps=8).train(resume_from_checkpoint=broken)


def test_non_finite_loss_stops_with_the_step_and_term(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    original = trainer.model.decoder.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] == 4:
            out.logits = out.logits * float("nan")
        return out

    trainer.model.decoder.forward = poisoned
    with pytest.raises(
        FloatingPointError, match=r"VAE step's loss is not finite at step 3 \(non-finite term: reconstruction"
    ):
        trainer.train()
    from mine_vae import MineVaeModel

    checkpoint = last_complete_checkpoint(trainer.args.output_dir)
    assert checkpoint.endswith("checkpoint-2")
    model = MineVaeModel.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_evaluate_reports_text_vae_metrics(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_nll", "eval_ppl", "eval_ppl_word", "eval_kl", "eval_mi", "eval_au", "eval_mi_bound"):
        assert key in metrics and metrics[key] == metrics[key]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"critic_steps": 0}, "critic_steps=0"),
        ({"critic_learning_rate": -1.0}, "critic_learning_rate=-1.0"),
        ({"kl_schedule": "cosine"}, "kl_schedule='cosine'"),
        ({"kl_schedule": "cyclical", "kl_zero_ratio": 0.9, "kl_increase_ratio": 0.5}, "zero_ratio \\+ increase_ratio"),
    ],
)
def test_contradictory_critic_settings_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_bad_datasets_fail_before_training(tmp_path):
    model, processor = tiny.model(), tiny.processor()
    wrong = datasets.Dataset.from_dict({"sentence": tiny.sentences(8)})
    with pytest.raises(ValueError, match="needs a 'text' column"):
        MineVaeTrainer(model=model, args=make_args(tmp_path), processing_class=processor, train_dataset=wrong)
    tiny_eval = datasets.Dataset.from_dict({"text": tiny.sentences(1)})
    with pytest.raises(ValueError, match="at least 2"):
        MineVaeTrainer(model=model, args=make_args(tmp_path), processing_class=processor, eval_dataset=tiny_eval)
    with pytest.raises(ValueError, match="per_device_train_batch_size must be >= 2"):
        MineVaeTrainer(model=model, args=make_args(tmp_path, per_device_train_batch_size=1), processing_class=processor)


def test_two_processes_end_with_identical_parameters(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, os, torch, datasets
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import tiny
            from safetensors.torch import save_file
            from mine_vae.trainer import MineVaeTrainer
            from mine_vae.training_args import MineVaeTrainingArguments
            args = MineVaeTrainingArguments(output_dir={str(tmp_path / "out")!r}, per_device_train_batch_size=4,
                max_steps=3, learning_rate=3e-3, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                critic_warmup_steps=0, ddp_backend="gloo", seed=0)
            model = tiny.model(mi_weight=1.0, xi="ema")
            data = datasets.Dataset.from_dict({{"text": tiny.sentences(64)}})
            trainer = MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data)
            assert trainer.accelerator.num_processes == 2
            # Each process sees its own shard and its own z samples; gradients are averaged.
            trainer.train()
            state = {{k: v.detach().clone() for k, v in trainer.model.state_dict().items()}}
            save_file(state, os.path.join({str(tmp_path)!r}, f"rank{{trainer.accelerator.process_index}}.safetensors"))
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(str(tmp_path / f"rank{i}.safetensors")) for i in (0, 1))
    initial = tiny.model(mi_weight=1.0, xi="ema").state_dict()
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert not torch.equal(rank0["critic.feature_proj.weight"], initial["critic.feature_proj.weight"])
    assert not torch.equal(rank0["posterior.weight"], initial["posterior.weight"])


def test_length_grouped_sampling_measures_the_encoder_inputs(tmp_path):
    # Without a length column, transformers' sampler measures `processing_class.model_input_names[0]`.
    processor = tiny.processor()
    texts = tiny.sentences(48)
    data = datasets.Dataset.from_dict(dict(processor.encode_texts(texts)))
    trainer = MineVaeTrainer(
        model=tiny.model(mi_weight=1.0),
        args=make_args(tmp_path, train_sampling_strategy="group_by_length"),
        processing_class=processor,
        train_dataset=data,
    )
    first = next(iter(trainer.get_train_dataloader()))
    # The sampler puts the batch holding the longest example first, so training fails fast on memory.
    assert first["input_ids"].shape[1] == max(len(ids) for ids in data["input_ids"])


def test_a_last_batch_of_one_trains_without_the_critic(tmp_path):
    trainer = make_trainer(tmp_path, dataset_size=9, max_steps=4)  # batches of 8, 1, 8, 1
    trainer.train()
    assert trainer.state.global_step == 4
    assert {int(s["step"]) for s in trainer.critic_optimizer.state.values()} == {2}


@pytest.mark.parametrize("bow_weight", [0.0, 0.4])
def test_the_vae_step_loss_is_the_models_loss_at_the_scheduled_weights(tmp_path, bow_weight):
    """After the critic's updates, the trainer's VAE loss (and its gradients) equal the model's own forward loss at the
    same β and λ, free bits and the bag-of-words term included: both assemble it with `MineVaeModel.vae_loss`. A
    batch of 2 has one pairing (the swap), and reseeding gives both passes the same dropout and posterior sample."""
    model = tiny.model(mi_weight=1.5, kl_weight=0.7, xi=1.0, free_bits=0.3, bow_weight=bow_weight)
    trainer = make_trainer(
        tmp_path,
        model=model,
        per_device_train_batch_size=2,
        critic_warmup_steps=0,
        kl_schedule="constant",
        mi_schedule="constant",
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=6)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()

    torch.manual_seed(1)
    loss = trainer.compute_loss(model, inputs)
    critic_after_update = {name: p.detach().clone() for name, p in model.critic.named_parameters()}
    encoder = model.encoder.embeddings.word_embeddings.weight
    (trainer_grad,) = torch.autograd.grad(loss, encoder)

    torch.manual_seed(1)
    own = model(**inputs, use_cache=False, kl_weight=0.7, mi_weight=1.5)
    assert all(torch.equal(p, critic_after_update[name]) for name, p in model.critic.named_parameters())
    assert own.mi_lower_bound is not None and loss.item() != (own.reconstruction_loss + 0.7 * own.kl).item()
    torch.testing.assert_close(loss, own.loss, rtol=0, atol=0)
    (own_grad,) = torch.autograd.grad(own.loss, encoder)
    # The same terms, reached through graphs built in another order (the trainer scores the bound after the critic's
    # updates): equal up to float32 summation order.
    torch.testing.assert_close(trainer_grad, own_grad)


@pytest.mark.parametrize(
    ("kind", "top", "bottom", "norm"),
    [
        ("gpt2", "transformer.h.1.", "transformer.h.0.", "transformer.ln_f."),
        ("llama", "model.layers.1.", "model.layers.0.", "model.norm."),
    ],
)
def test_decoder_trainable_layers_train_the_top_of_a_frozen_decoder_only(tmp_path, kind, top, bottom, norm):
    """freeze_decoder with decoder_trainable_layers=1: the decoder's last layer and final norm train, its lower layer,
    embeddings and LM head keep their weights bit for bit (weight decay would move any weight the optimizer held)."""
    model = tiny.model(kind, mi_weight=1.0)
    trainer = make_trainer(
        tmp_path, model=model, max_steps=3, weight_decay=0.1, freeze_decoder=True, decoder_trainable_layers=1
    )
    trainable = {name for name, p in model.decoder.named_parameters() if p.requires_grad}
    expected = {name for name, _ in model.decoder.named_parameters() if name.startswith((top, norm))}
    assert expected and trainable == expected
    before = parameters(model)
    trainer.train()
    after = parameters(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    decoder_changed = {name.removeprefix("decoder.") for name in changed if name.startswith("decoder.")}
    assert any(name.startswith(top) and name.endswith("weight") for name in decoder_changed)
    assert all(name.startswith((top, norm)) for name in decoder_changed), decoder_changed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder_trainable_layers": -1}, "decoder_trainable_layers=-1 is not allowed"),
        ({"decoder_trainable_layers": 1}, "set freeze_decoder=True"),
    ],
)
def test_bad_decoder_trainable_layers_fail_in_the_arguments(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_more_decoder_trainable_layers_than_the_decoder_has_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="decoder_trainable_layers=3, but the decoder has 2 layers; use at most 2"):
        make_trainer(tmp_path, freeze_decoder=True, decoder_trainable_layers=3)
