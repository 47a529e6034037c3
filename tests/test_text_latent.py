"""Between text and latents (mine_vae.text_latent), on tiny untrained models: one special-token policy for every
decoding, one interpolation function (lerp or slerp by argument), seeded prior draws that do not depend on batching,
and the old names still importable where users import them."""

from __future__ import annotations

import pytest
import tiny
import torch

from mine_vae import MineVaeModel, latent, text_latent
from mine_vae.text_latent import (
    decode_latent_batches,
    decode_latents,
    encode_texts,
    interpolate,
    interpolation,
    prior_latents,
    prior_sample_batches,
    prior_samples,
    reconstruction_batches,
    texts_from_ids,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

LATENT_SIZE = 8  # tiny.model's
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny.model().eval(), tiny.processor()


# ----------------------------------------------------------------------------------------------------------------------
# The special-token policy
# ----------------------------------------------------------------------------------------------------------------------
def test_texts_from_ids_keeps_unk_and_drops_start_end_and_padding():
    processor = tiny.processor()
    tokenizer = processor.decoder_tokenizer
    start, eos, pad = processor.decoder_start_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    cat, moon = tokenizer.convert_tokens_to_ids(["cat", "moon"])
    unk = tokenizer.unk_token_id
    assert len({start, eos, pad, unk, cat, moon}) == 6  # the test means something only if they are all different
    ids = torch.tensor([[start, cat, unk, moon, eos, cat, pad], [start, moon, pad, pad, pad, pad, pad]])
    assert texts_from_ids(processor, ids) == ["cat <unk> moon", "moon"]
    # The processor follows the tokenizer's convention instead (every special token dropped, nothing cut at EOS):
    # which is why the library's decodings do not go through it.
    assert processor.batch_decode(ids)[0] == "cat moon cat"


def test_every_decoding_gives_texts_from_ids_of_what_generate_returns(model_and_processor, monkeypatch):
    """Prior samples, reconstructions, interpolations and plain decodings all read the generated ids one way: each
    returns exactly `texts_from_ids` of `model.generate`'s output, whatever that holds."""
    model, processor = model_and_processor
    tokenizer = processor.decoder_tokenizer
    unk, cat = tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("cat")
    seen: list[torch.Tensor] = []

    def generate(*args, **kwargs):  # a decoder that says "<unk> cat </s> cat" to every latent
        rows = (kwargs["latent"] if kwargs.get("latent") is not None else kwargs["input_ids"]).shape[0]
        row = [processor.decoder_start_token_id, unk, cat, tokenizer.eos_token_id, cat]
        ids = torch.tensor([row] * rows)
        seen.append(ids)
        return ids

    monkeypatch.setattr(model, "generate", generate)
    outputs = [
        decode_latents(model, processor, torch.zeros(2, LATENT_SIZE)),
        [t for batch in prior_sample_batches(model, processor, 3, seed=0, batch_size=2) for t in batch],
        [
            t
            for batch in reconstruction_batches(model, processor, ["a dog", "the cat"], seed=0, batch_size=1)
            for t in batch
        ],
        [text for _, text in interpolation(model, processor, "a dog", "the cat", 3, seed=0)],
    ]
    for texts in outputs:
        assert texts and set(texts) == {"<unk> cat"}
    assert set(texts_from_ids(processor, torch.cat(seen))) == {"<unk> cat"}


# ----------------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------------
def test_decoding_in_batches_gives_the_texts_of_one_batch_and_restores_the_mode(model_and_processor):
    model, processor = model_and_processor
    latents = prior_latents(LATENT_SIZE, 5, seed=3)
    whole = decode_latents(model, processor, latents, batch_size=5, **GREEDY)
    batches = list(decode_latent_batches(model, processor, latents, batch_size=2, **GREEDY))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert [text for batch in batches for text in batch] == whole
    assert whole == texts_from_ids(processor, model.generate(latent=latents, **GREEDY))
    model.train()
    try:
        decode_latents(model, processor, latents[:1], **GREEDY)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        decode_latents(model, processor, latents, batch_size=0)


# ----------------------------------------------------------------------------------------------------------------------
# Prior draws
# ----------------------------------------------------------------------------------------------------------------------
def test_prior_draws_follow_the_seed_not_the_batch_size(model_and_processor):
    model, processor = model_and_processor
    draws = prior_latents(LATENT_SIZE, 4, seed=7)
    assert draws.shape == (4, LATENT_SIZE) and draws.device.type == "cpu"
    assert torch.equal(draws, prior_latents(LATENT_SIZE, 4, seed=7))
    assert not torch.equal(draws, prior_latents(LATENT_SIZE, 4, seed=8))
    assert torch.equal(prior_latents(LATENT_SIZE, 2, seed=7), draws[:2])  # fewer draws are the first of more
    one_batch = [t for b in prior_sample_batches(model, processor, 4, 7, batch_size=4, **GREEDY) for t in b]
    in_pairs = [t for b in prior_sample_batches(model, processor, 4, 7, batch_size=2, **GREEDY) for t in b]
    assert one_batch == in_pairs == decode_latents(model, processor, draws, **GREEDY)
    with pytest.raises(ValueError, match="count must be at least 1"):
        prior_latents(LATENT_SIZE, 0, seed=0)


def test_a_reduced_temperature_prior_decodes_the_same_draws_scaled(model_and_processor):
    model, processor = model_and_processor
    draws = prior_latents(LATENT_SIZE, 4, seed=7)
    assert torch.equal(prior_latents(LATENT_SIZE, 4, seed=7, prior_scale=0.5), 0.5 * draws)
    scaled = prior_samples(model, processor, 4, 7, prior_scale=0.05, **GREEDY)
    assert scaled == decode_latents(model, processor, 0.05 * draws, **GREEDY)
    assert scaled != prior_samples(model, processor, 4, 7, **GREEDY)  # the scale reaches the decoded latents
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior_scale must be a number > 0"):
            prior_latents(LATENT_SIZE, 4, seed=7, prior_scale=bad)


# ----------------------------------------------------------------------------------------------------------------------
# Interpolation: one function
# ----------------------------------------------------------------------------------------------------------------------
def test_interpolate_is_the_models_line_or_the_arc_by_argument():
    a, b = prior_latents(LATENT_SIZE, 2, seed=0)
    line = interpolate(a, b, 6, method="lerp")
    torch.testing.assert_close(line, MineVaeModel.interpolate(a, b, 6))  # the model's interpolation is the line
    assert torch.equal(interpolate(a, b, 6), line)  # lerp is the default, as for MineVaeModel.interpolate
    arc = interpolate(a, b, 6, method="slerp")
    assert torch.equal(arc[0], a) and torch.equal(arc[-1], b)
    assert not torch.allclose(arc[1:-1], line[1:-1])
    # On the arc between two unit vectors every point is a unit vector; the line's midpoints are shorter.
    unit_a, unit_b = a / a.norm(), b / b.norm()
    torch.testing.assert_close(interpolate(unit_a, unit_b, 5, "slerp").norm(dim=1), torch.ones(5))
    assert (interpolate(unit_a, unit_b, 5, "lerp")[1:-1].norm(dim=1) < 1).all()
    # The old names are this one function.
    assert torch.equal(latent.lerp(a, b, 6), line) and torch.equal(latent.slerp(a, b, 6), arc)
    with pytest.raises(ValueError, match="method must be 'lerp' or 'slerp'"):
        interpolate(a, b, 6, method="cubic")


def test_interpolation_decodes_the_path_between_the_posterior_means(model_and_processor):
    model, processor = model_and_processor
    means = encode_texts(model, processor, ["the cat sees the moon", "a dog"])
    for method in ("lerp", "slerp"):
        steps = interpolation(model, processor, "the cat sees the moon", "a dog", 4, seed=0, method=method, **GREEDY)
        assert [t for t, _ in steps] == pytest.approx([0, 1 / 3, 2 / 3, 1])
        path = interpolate(means[0], means[1], 4, method=method)
        assert [text for _, text in steps] == decode_latents(model, processor, path, **GREEDY)


# ----------------------------------------------------------------------------------------------------------------------
# Old names
# ----------------------------------------------------------------------------------------------------------------------
def test_the_old_names_are_the_new_functions():
    assert latent.encode_texts is text_latent.encode_texts
    assert latent.decode is latent.decode_latents is text_latent.decode_latents
    assert latent.texts_from_ids is text_latent.texts_from_ids
    assert latent.generation_limit is text_latent.generation_limit
    assert latent.DEFAULT_MAX_NEW_TOKENS == text_latent.DEFAULT_MAX_NEW_TOKENS
    from mine_vae.cli import decoding

    assert decoding.generation_limit is text_latent.generation_limit
    assert set(latent.__all__) <= set(dir(latent)) and set(text_latent.__all__) <= set(dir(text_latent))
