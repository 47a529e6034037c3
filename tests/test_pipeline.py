"""`transformers.pipeline` on a saved MINE-VAE: the model's own tasks (embed, reconstruct, sample, interpolate)."""

import json

import pytest
import tiny
import torch
from transformers import pipeline

from mine_vae.latent import decode, encode_texts

TEXTS = tiny.sentences(5, seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tiny.saved_model(tmp_path_factory.mktemp("pipeline") / "model", kind="llama")
    return folder


@pytest.fixture(scope="module")
def pipe(saved):
    return pipeline(model=str(saved), trust_remote_code=True, device="cpu")


@pytest.fixture(scope="module")
def model_and_processor(saved):
    from mine_vae import MineVaeModel, MineVaeProcessor

    return MineVaeModel.from_pretrained(saved).eval(), MineVaeProcessor.from_pretrained(saved)


def test_a_saved_model_names_its_pipeline_and_carries_the_code(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["custom_pipelines"]["feature-extraction"]["impl"] == "pipeline_mine_vae.MineVaePipeline"
    assert (saved / "pipeline_mine_vae.py").is_file()


def test_pipeline_without_a_task_is_the_mine_vae_pipeline_and_embeds_posterior_means(pipe, model_and_processor):
    model, processor = model_and_processor
    assert type(pipe).__name__ == "MineVaePipeline"
    expected = encode_texts(model, processor, TEXTS)
    got = torch.tensor(pipe(TEXTS, batch_size=2))
    assert got.shape == (len(TEXTS), model.config.latent_size)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(pipe(TEXTS[0])), expected[0], atol=1e-6, rtol=0)


def test_feature_extraction_returns_posterior_means_not_decoder_logits(saved, model_and_processor):
    model, processor = model_and_processor
    features = pipeline("feature-extraction", model=str(saved), trust_remote_code=True, device="cpu")
    got = features(TEXTS[:2], return_tensors=True)
    torch.testing.assert_close(got, encode_texts(model, processor, TEXTS[:2]), atol=1e-6, rtol=0)


def test_reconstruct_passes_generate_options_and_batches(pipe, model_and_processor):
    model, processor = model_and_processor
    expected = decode(model, processor, encode_texts(model, processor, TEXTS), max_new_tokens=6, num_beams=2)
    got = pipe(TEXTS, mode="reconstruct", batch_size=2, max_new_tokens=6, num_beams=2)
    assert [row["generated_text"] for row in got] == [text.strip() for text in expected]
    several = pipe(TEXTS[:2], mode="reconstruct", max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert len(several) == 2 and all(len(group) == 3 for group in several)


def test_sample_and_interpolate(pipe, model_and_processor):
    model, processor = model_and_processor
    torch.manual_seed(0)
    samples = pipe(mode="sample", num_samples=3, max_new_tokens=4)
    assert len(samples) == 3 and all(isinstance(row["generated_text"], str) for row in samples)
    path = pipe(TEXTS[:2], mode="interpolate", num_steps=4, max_new_tokens=5)
    ends = pipe(TEXTS[:2], mode="reconstruct", max_new_tokens=5)
    assert len(path) == 4 and [path[0], path[-1]] == ends


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p(TEXTS, mode="paraphrase"), "choose one of embed, reconstruct, sample, interpolate"),
        (lambda p: p(TEXTS, mode="sample"), "takes no texts"),
        (lambda p: p(TEXTS, mode="interpolate"), "takes two texts"),
        (lambda p: p(TEXTS[:2], mode="interpolate", num_steps=1), "num_steps must be at least 2"),
        (lambda p: p(TEXTS, max_new_tokens=3), "mode='embed' does not generate"),
    ],
)
def test_bad_calls_get_one_line_naming_the_fix(pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(pipe)


def test_in_memory_model_gives_the_same_pipeline(model_and_processor):
    model, processor = model_and_processor
    pipe = model.pipeline(processor, device="cpu")
    torch.testing.assert_close(
        torch.tensor(pipe(TEXTS[:2])), encode_texts(model, processor, TEXTS[:2]), atol=1e-6, rtol=0
    )
