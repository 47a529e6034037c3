import pytest
import tiny
from transformers import AutoConfig

from mine_vae import MineVaeConfig


def test_defaults_and_inherited_special_tokens():
    config = MineVaeConfig(encoder=tiny.encoder_config(), decoder=tiny.decoder_config("llama"))
    assert config.latent_size == 32 and config.latent_injection == "both"
    assert config.xi == "dv" and config.mi_weight == 3.0  # the settings the Penn Treebank study found to work
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    assert config.decoder_start_token_id == 2
    assert config.get_text_config(decoder=True) is config.decoder


def test_round_trip_through_json(tmp_path):
    config = MineVaeConfig(
        encoder=tiny.encoder_config(), decoder=tiny.decoder_config("gpt2"), xi="ema", latent_size=5, free_bits=0.2
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MineVaeConfig)
    assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert loaded.decoder.model_type == "gpt2" and loaded.encoder.hidden_size == 32


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("latent_size", 0, "positive integer"),
        ("latent_size", 2.5, "positive integer"),
        ("pooling", "max", "pooler"),
        ("latent_injection", "cross", "memory"),
        ("latent_memory_positions", 0, "positive integer"),
        ("latent_vocab_bias", "yes", "true or false"),
        ("latent_residual_layers", [1, 1], "distinct decoder layer indices"),
        ("latent_residual_layers", [-1], "distinct decoder layer indices"),
        ("latent_residual_layers", [99], "indices of the decoder's"),
        ("latent_residual_scale", 0.0, "positive number"),
        ("xi", "mine", "positive number"),
        ("xi", 0.0, "positive number"),
        ("kl_weight", -1.0, ">= 0"),
        ("mi_weight", -0.5, ">= 0"),
        ("free_bits", float("nan"), ">= 0"),
        ("critic_num_layers", 0, "positive integer"),
        ("critic_score_bound", 0.0, "positive number or None"),
        ("critic_score_bound", float("inf"), "positive number or None"),
        ("ema_decay", 1.0, "(0, 1)"),
    ],
)
def test_contradictory_config_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=field) as error:
        MineVaeConfig(**{field: value})
    assert allowed in str(error.value)
