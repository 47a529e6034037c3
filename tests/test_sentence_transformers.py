"""sentence-transformers loads a saved MINE-VAE (the optional extra `sentence-transformers`): posterior means."""

import pytest
import sentence_transformers  # the optional extra `sentence-transformers`, in the dev extra
import tiny
import torch

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.latent import encode_texts

TEXTS = tiny.sentences(7, seed=5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return tiny.saved_model(tmp_path_factory.mktemp("st") / "model", kind="llama")


def test_a_saved_model_loads_and_encodes_posterior_means(saved):
    model, processor = MineVaeModel.from_pretrained(saved).eval(), MineVaeProcessor.from_pretrained(saved)
    expected = encode_texts(model, processor, TEXTS)
    encoder = sentence_transformers.SentenceTransformer(str(saved), trust_remote_code=True, device="cpu")
    got = encoder.encode(TEXTS, batch_size=3, convert_to_tensor=True)
    assert got.shape == expected.shape == (len(TEXTS), model.config.latent_size)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-6, rtol=0)
    assert encoder.get_embedding_dimension() == model.config.latent_size


def test_a_model_in_memory_and_its_save_give_the_same_embeddings(saved, tmp_path):
    model, processor = MineVaeModel.from_pretrained(saved).eval(), MineVaeProcessor.from_pretrained(saved)
    encoder = model.sentence_transformer(processor, device="cpu")
    expected = encode_texts(model, processor, TEXTS)
    torch.testing.assert_close(encoder.encode(TEXTS, convert_to_tensor=True).cpu(), expected, atol=1e-6, rtol=0)
    encoder.save(str(tmp_path / "copy"))
    reloaded = sentence_transformers.SentenceTransformer(str(tmp_path / "copy"), trust_remote_code=True, device="cpu")
    torch.testing.assert_close(reloaded.encode(TEXTS, convert_to_tensor=True).cpu(), expected, atol=1e-6, rtol=0)
