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


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path):
    tiny.model("gpt2", latent_injection="memory").save_pretrained(tmp_path)
    config = MineVaeModel.config_class.from_pretrained(tmp_path)
    config.latent_injection = "embedding"  # the saved latent_to_key/value are unexpected, latent_to_embedding missing
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"do not fit its config: \d+ missing and \d+ unexpected"):
        MineVaeModel.from_pretrained(tmp_path)
