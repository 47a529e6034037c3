"""peft adapters on a MINE-VAE: the plain idiom trains the heads, and every way of saving reads back identically."""

import pytest
import tiny
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from mine_vae import MineVaeModel
from mine_vae.adapters import peft_base_vae, train_heads_with_adapters

TARGETS = {"gpt2": r".*decoder.*\.c_attn", "llama": r".*decoder.*\.(q_proj|v_proj)"}


@pytest.fixture(scope="module")
def batch():
    return tiny.processor()(tiny.sentences(4))


def lora_vae(kind: str, seed: int = 0):
    model = get_peft_model(tiny.model(kind, mi_weight=1.0, seed=seed), LoraConfig(target_modules=TARGETS[kind], r=4))
    return train_heads_with_adapters(model)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_plain_peft_idiom_leaves_the_heads_and_critic_trainable(kind):
    model = lora_vae(kind)
    vae = peft_base_vae(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for head in vae.head_names:
        assert any(f".{head}.modules_to_save." in name for name in trainable), head
    assert any("lora_" in name for name in trainable)
    assert not any(".encoder." in name and "modules_to_save" not in name for name in trainable)
    assert set(model.peft_config["default"].modules_to_save) >= set(vae.head_names)
    train_heads_with_adapters(model)  # idempotent: nothing listed twice
    assert len(model.peft_config["default"].modules_to_save) == len(set(model.peft_config["default"].modules_to_save))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_adapter_round_trip_restores_the_trained_model(kind, batch, tmp_path):
    model = lora_vae(kind)
    with torch.no_grad():  # stand-in for training: move the adapter and every head off their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    expected = model(**batch)
    model.save_pretrained(tmp_path / "adapter")
    base = tiny.model(kind, mi_weight=1.0, seed=0)  # the same pretrained pair, fresh (random) heads
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    out = reloaded(**batch)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.mu, expected.mu)
    torch.testing.assert_close(out.mi_lower_bound, expected.mi_lower_bound)


def test_merged_adapter_saves_as_a_plain_mine_vae(batch, tmp_path):
    model = lora_vae("gpt2")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    expected = model(**batch).logits
    merged = model.merge_and_unload()
    assert isinstance(merged, MineVaeModel) and type(merged.critic).__name__ == "MineCritic"
    merged.save_pretrained(tmp_path / "merged")
    reloaded = MineVaeModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected)


def test_a_peft_wrapped_decoder_is_refused_at_save(tmp_path):
    model = tiny.model()
    model.decoder = get_peft_model(model.decoder, LoraConfig(target_modules=["c_attn"], r=4))
    with pytest.raises(ValueError, match=r"decoder is a peft model.*merge_and_unload"):
        model.save_pretrained(tmp_path)
    model.decoder = model.decoder.merge_and_unload()
    model.save_pretrained(tmp_path)  # merged: a plain MINE-VAE folder
    MineVaeModel.from_pretrained(tmp_path)


def test_a_peft_wrapped_decoder_with_checkpoints_is_refused_before_training(tmp_path):
    """Refused when the trainer is built, not at the first checkpoint (which would be left as an empty folder)."""
    import datasets

    from mine_vae import MineVaeTrainer

    model = tiny.model()
    model.decoder = get_peft_model(model.decoder, LoraConfig(target_modules=["c_attn"], r=4))
    data = datasets.Dataset.from_dict({"text": tiny.sentences(16)})
    args = tiny.training_args(tmp_path / "out", max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(ValueError, match=r"decoder is a peft model.*merge_and_unload"):
        MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data)
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    args = tiny.training_args(tmp_path / "out", max_steps=2)  # no checkpoints: nothing to refuse
    MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data).train()


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_2_SEQ_LM", "FEATURE_EXTRACTION", "SEQ_CLS", "TOKEN_CLS"])
def test_a_peft_task_type_is_refused_before_training_with_the_idiom_that_works(task_type, batch, tmp_path):
    import datasets

    from mine_vae import MineVaeTrainer

    model = get_peft_model(tiny.model(), LoraConfig(task_type=task_type, target_modules=TARGETS["gpt2"], r=4))
    data = datasets.Dataset.from_dict({"text": tiny.sentences(16)})
    args = tiny.training_args(tmp_path / "out", max_steps=2)
    with pytest.raises(ValueError, match=rf"task_type='{task_type}'.*Leave task_type unset: get_peft_model\(vae, "):
        MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data)
    if task_type in ("CAUSAL_LM", "FEATURE_EXTRACTION"):  # called directly: one line, not a TypeError in the decoder
        with pytest.raises(ValueError, match=r"takes no inputs_embeds.*Leave task_type unset"):
            model(**batch)


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path):
    tiny.model("gpt2", latent_injection="memory").save_pretrained(tmp_path)
    config = MineVaeModel.config_class.from_pretrained(tmp_path)
    config.latent_injection = "embedding"  # the saved latent_to_key/value are unexpected, latent_to_embedding missing
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"do not fit its config: \d+ missing and \d+ unexpected"):
        MineVaeModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_plain_peft_idiom_trains_through_the_trainer_and_round_trips(kind, batch, tmp_path):
    """The user writes only get_peft_model(vae, LoraConfig(target_modules=...)); the trainer does the rest."""
    import datasets

    from mine_vae import MineVaeTrainer

    model = get_peft_model(tiny.model(kind, mi_weight=1.0), LoraConfig(target_modules=TARGETS[kind], r=4))
    vae = peft_base_vae(model)
    args = tiny.training_args(tmp_path / "out", max_steps=3, critic_warmup_steps=0)
    data = datasets.Dataset.from_dict({"text": tiny.sentences(32)})
    trainer = MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}  # the heads are peft-wrapped by now
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for head in vae.head_names:  # the critic included: its own step trains it
        assert any(f".{head}.modules_to_save." in n for n in changed), head
    assert any("lora_" in n for n in changed)
    assert not any("base_layer" in n or (".encoder." in n and "lora_" not in n) for n in changed)
    model.eval()
    expected = model(**batch)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny.model(kind, mi_weight=1.0), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected.logits)
    torch.testing.assert_close(reloaded(**batch).mi_lower_bound, expected.mi_lower_bound)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_a_frozen_side_is_bit_identical_after_training_and_the_heads_learn(side, tmp_path):
    import datasets

    from mine_vae import MineVaeTrainer

    model = tiny.model(mi_weight=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # weight_decay would move a frozen weight if the optimizer held it
    args = tiny.training_args(
        tmp_path / "out", max_steps=3, weight_decay=0.1, critic_warmup_steps=0, **{f"freeze_{side}": True}
    )
    data = datasets.Dataset.from_dict({"text": tiny.sentences(32)})
    MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=data).train()
    for name, p in model.named_parameters():
        if name.startswith(f"{side}."):
            assert torch.equal(p, before[name]), name
    other = "decoder" if side == "encoder" else "encoder"
    for prefix in (*model.head_names, other):
        assert any(n.startswith(f"{prefix}.") and not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_asking_for_the_loading_info_reports_mismatched_weights_instead_of_raising(tmp_path):
    tiny.model("gpt2", latent_injection="memory").save_pretrained(tmp_path)
    config = MineVaeModel.config_class.from_pretrained(tmp_path)
    config.latent_injection = "embedding"
    config.save_pretrained(tmp_path)
    _, info = MineVaeModel.from_pretrained(tmp_path, output_loading_info=True)
    assert any(key.startswith("latent_to_embedding") for key in info["missing_keys"])
    assert any(key.startswith("latent_to_key") for key in info["unexpected_keys"])


def test_resizing_a_peft_wrapped_vocab_bias_is_refused_and_works_before_wrapping():
    """The vocabulary bias is one of the heads peft saves with the adapter: resizing it under the wrapper would swap
    in a plain Linear the adapter no longer saves, so it is refused; resizing first, then wrapping, keeps both."""
    vae = tiny.model("llama", latent_vocab_bias=True)
    size = vae.latent_to_vocab.out_features
    model = train_heads_with_adapters(get_peft_model(vae, LoraConfig(target_modules=TARGETS["llama"], r=4)))
    with pytest.raises(ValueError, match="resize_token_embeddings on the MineVaeModel before get_peft_model"):
        model.resize_token_embeddings(size + 8)
    assert peft_base_vae(model).get_output_embeddings().out_features == size  # refused before anything changed
    vae = tiny.model("llama", latent_vocab_bias=True)
    vae.resize_token_embeddings(size + 8)
    model = train_heads_with_adapters(get_peft_model(vae, LoraConfig(target_modules=TARGETS["llama"], r=4)))
    assert peft_base_vae(model).latent_to_vocab.modules_to_save["default"].out_features == size + 8
    assert any("latent_to_vocab.modules_to_save" in name for name, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_lora_adapts_the_decoders_attention_only_and_merges_into_the_same_model(kind, batch):
    """add_decoder_lora targets every attention projection of the decoder (never the encoder's, never its MLP) and
    leaves the heads trainable; merged_vae folds the trained adapters into a plain MineVaeModel that computes what
    the adapted model computed."""
    from mine_vae.adapters import add_decoder_lora, decoder_lora_targets, merged_vae

    targets = decoder_lora_targets(tiny.model(kind))
    layers = tiny.model(kind).config.decoder.num_hidden_layers
    assert len(targets) == layers * (2 if kind == "gpt2" else 4)
    assert all(t.startswith("decoder.") and (".attn." in t or ".self_attn." in t) for t in targets)
    assert decoder_lora_targets(tiny.model(kind), ["c_fc" if kind == "gpt2" else "up_proj"])[0].endswith(
        "c_fc" if kind == "gpt2" else "up_proj"
    )
    model = add_decoder_lora(tiny.model(kind, mi_weight=1.0), r=2, alpha=8)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and not any(".encoder." in n and "lora" in n for n in trainable)
    assert all(any(f".{head}.modules_to_save." in n for n in trainable) for head in peft_base_vae(model).head_names)
    with torch.no_grad():  # as if trained: LoRA's B starts at zero, which would make the merge trivially equal
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    adapted = model(**batch)
    merged = merged_vae(model)
    assert type(merged) is MineVaeModel and not any("lora_" in name for name, _ in merged.named_parameters())
    again = merged(**batch)
    torch.testing.assert_close(again.logits, adapted.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.mi_lower_bound, adapted.mi_lower_bound)
    with pytest.raises(ValueError, match="no modules named nope for LoRA; choose among its linear layers"):
        decoder_lora_targets(tiny.model(kind), ["c_attn" if kind == "gpt2" else "q_proj", "nope"])  # one typo
    if tiny.model(kind).config.decoder.tie_word_embeddings:  # GPT-2's LM head is its input embedding matrix
        with pytest.raises(ValueError, match="no modules named lm_head"):
            decoder_lora_targets(tiny.model(kind), ["lm_head"])
    else:
        assert decoder_lora_targets(tiny.model(kind), ["lm_head"]) == ["decoder.lm_head"]


def test_resuming_adapters_onto_another_base_is_refused(tmp_path):
    """An adapter checkpoint does not hold the base model: MineVaeTrainer records which base it fits (lora_base.json)
    and refuses to resume the adapters onto a base with other weights or other settings."""
    import datasets

    from mine_vae import MineVaeTrainer
    from mine_vae.adapters import LORA_BASE_JSON, add_decoder_lora

    data = datasets.Dataset.from_dict({"text": tiny.sentences(32)})
    args = tiny.training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, critic_warmup_steps=0)
    MineVaeTrainer(
        model=add_decoder_lora(tiny.model("llama", seed=0), r=2), args=args, processing_class=tiny.processor(),
        train_dataset=data,
    ).train()  # fmt: skip
    checkpoint = str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-2" / LORA_BASE_JSON).is_file()
    args = tiny.training_args(tmp_path, max_steps=4, critic_warmup_steps=0)
    for other, what in ((tiny.model("llama", seed=1), "its weights differ"),
                        (tiny.model("llama", seed=0, kl_weight=0.5), "kl_weight 1.0 -> 0.5")):  # fmt: skip
        trainer = MineVaeTrainer(
            model=add_decoder_lora(other, r=2), args=args, processing_class=tiny.processor(), train_dataset=data
        )
        with pytest.raises(ValueError, match=f"trained on another base model: .*{what}"):
            trainer.train(resume_from_checkpoint=checkpoint)
    trainer = MineVaeTrainer(
        model=add_decoder_lora(tiny.model("llama", seed=0), r=2), args=args, processing_class=tiny.processor(),
        train_dataset=data,
    )
    trainer.train(resume_from_checkpoint=checkpoint)  # the same base resumes
    assert trainer.state.global_step == 4


def test_unfreezing_decoder_layers_under_adapters_is_refused_before_training(tmp_path):
    """peft has frozen every base weight; decoder_trainable_layers would unfreeze some behind its back."""
    from mine_vae import MineVaeTrainer

    model = get_peft_model(tiny.model("llama", mi_weight=1.0), LoraConfig(target_modules=TARGETS["llama"], r=4))
    args = tiny.training_args(tmp_path / "out", freeze_decoder=True, decoder_trainable_layers=1)
    with pytest.raises(ValueError, match="set decoder_trainable_layers=0 with adapters"):
        MineVaeTrainer(model=model, args=args, processing_class=tiny.processor())
