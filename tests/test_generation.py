import pytest
import tiny
import torch


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny.model(request.param).eval()


@pytest.fixture(scope="module")
def encoder_inputs():
    batch = tiny.processor()(tiny.sentences(3))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# How z enters the decoder: (latent_injection, latent_memory_positions).
INJECTIONS = [("memory", 1), ("embedding", 1), ("both", 1), ("memory", 3), ("both", 2)]


@pytest.mark.parametrize("injection,positions", INJECTIONS)
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_greedy_decoding_equals_uncached(kind, injection, positions):
    model = tiny.model(kind, latent_injection=injection, latent_memory_positions=positions).eval()
    z = model.sample_prior(4, generator=torch.Generator().manual_seed(0)) * 3
    cached = model.generate(latent=z, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    uncached = model.generate(latent=z, max_new_tokens=12, do_sample=False, min_new_tokens=12, use_cache=False)
    assert cached.shape == (4, 13)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("positions", [1, 3])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generation_follows_forward_argmax(kind, positions):
    """Each generated token is the argmax of a full forward pass over the prefix: the cache changes nothing."""
    model = tiny.model(kind, latent_memory_positions=positions).eval()
    z = model.sample_prior(2, generator=torch.Generator().manual_seed(1)) * 3
    tokens = model.generate(latent=z, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    logits = model(latent=z, decoder_input_ids=tokens[:, :-1]).logits
    logits[..., model.config.eos_token_id] = -float("inf")  # min_new_tokens forbids EOS
    assert torch.equal(logits.argmax(-1), tokens[:, 1:])


# z's direct paths besides the key/value positions: (config settings, the head made strong enough to change the greedy
# tokens, the standard deviation that does it).
LATENT_HEADS = {
    "vocab_bias": ({"latent_vocab_bias": True}, lambda m: m.latent_to_vocab, 3.0),
    "residual": ({"latent_residual_layers": [0], "latent_residual_scale": 4.0}, lambda m: m.latent_to_residual[0], 1.0),
}


@pytest.mark.parametrize("head", sorted(LATENT_HEADS))
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_latent_heads_decode_alike_with_and_without_cache_and_follow_forward(kind, head):
    """The vocabulary bias and the residual shifts reach every generated position: cached and uncached greedy decoding
    agree, each token is the argmax of a full forward pass, beams expand them with z, and they change what is
    generated."""
    settings, module, std = LATENT_HEADS[head]
    model = tiny.model(kind, latent_memory_positions=2, **settings).eval()
    with torch.no_grad():
        module(model).weight.normal_(std=std)
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(2)) * 3
    cached = model.generate(latent=z, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    uncached = model.generate(latent=z, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    logits = model(latent=z, decoder_input_ids=cached[:, :-1]).logits
    logits[..., model.config.eos_token_id] = -float("inf")  # min_new_tokens forbids EOS
    assert torch.equal(logits.argmax(-1), cached[:, 1:])
    beams = model.generate(latent=z, max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 6  # each z's rows are expanded with it, the head's contribution included
    with torch.no_grad():
        module(model).weight.zero_()
    assert not torch.equal(model.generate(latent=z, max_new_tokens=8, min_new_tokens=8, do_sample=False), cached)


def test_generation_starts_with_decoder_start_token(model):
    tokens = model.generate(latent=model.sample_prior(2), max_new_tokens=3)
    assert (tokens[:, 0] == model.config.decoder_start_token_id).all()


def test_reconstruction_from_encoder_inputs_uses_posterior_mean(model, encoder_inputs):
    from_text = model.generate(**encoder_inputs, max_new_tokens=8, do_sample=False)
    mu = model.encode(**encoder_inputs).mu
    from_mean = model.generate(latent=mu, max_new_tokens=8, do_sample=False)
    assert torch.equal(from_text, from_mean)
    torch.manual_seed(0)
    sampled = model.generate(**encoder_inputs, sample_latent=True, max_new_tokens=8, do_sample=False)
    assert sampled.shape[0] == 3


def test_beam_search_and_num_return_sequences(model, encoder_inputs):
    out = model.generate(**encoder_inputs, num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert out.shape[0] == 6 and out.shape[1] <= 6


def test_sampling_is_seeded_and_varies(model):
    z = model.sample_prior(1).repeat(8, 1)
    torch.manual_seed(0)
    first = model.generate(latent=z, do_sample=True, top_k=10, max_new_tokens=8, min_new_tokens=8)
    torch.manual_seed(0)
    again = model.generate(latent=z, do_sample=True, top_k=10, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(first, again)
    assert len({tuple(row.tolist()) for row in first}) > 1


def test_different_latents_decode_differently():
    model = tiny.model("llama").eval()
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * 4
    out = model.generate(latent=z, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert len({tuple(row.tolist()) for row in out}) > 1


@pytest.mark.parametrize("settings", [{}, {"latent_residual_layers": [1], "latent_vocab_bias": True}])
def test_decoding_steps_do_not_walk_the_modules(monkeypatch, settings):
    """A decoding step's bookkeeping does not grow with the model: nothing per step iterates over its modules (the
    activation-checkpointing test in _decode did, at every step, when it ran before the eval-mode test; so did the
    search for the residual layers before they were found once)."""
    model = tiny.model("gpt2", **settings).eval()
    z = model.sample_prior(2, generator=torch.Generator().manual_seed(0))
    walks = 0
    modules = torch.nn.Module.modules

    def counted(self):
        nonlocal walks
        walks += 1
        return modules(self)

    monkeypatch.setattr(torch.nn.Module, "modules", counted)

    def walks_for(steps: int) -> int:
        nonlocal walks
        walks = 0
        model.generate(latent=z, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        return walks

    assert walks_for(2) == walks_for(10)


@pytest.mark.parametrize("bad", [torch.zeros(8), torch.zeros(2, 5), torch.zeros(0, 8), torch.zeros(1, 2, 8)])
def test_latent_of_wrong_shape_is_refused(model, bad):
    with pytest.raises(ValueError, match=r"latent must have shape \(batch_size, 8\)"):
        model.generate(latent=bad, max_new_tokens=2)


def test_without_inputs_each_sequence_is_decoded_from_its_own_prior_draw(model):
    """generate() alone samples p(x): z from N(0, I), one draw per returned sequence."""
    assert model.generate(max_new_tokens=3, min_new_tokens=3).shape == (1, 4)
    torch.manual_seed(0)
    drawn = model.sample_prior(4)
    torch.manual_seed(0)
    greedy_rows = model.generate(num_beams=2, num_return_sequences=4, max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(greedy_rows, model.generate(latent=drawn, num_beams=2, max_new_tokens=5, min_new_tokens=5))
    prefix = greedy_rows[:2, :3]
    torch.manual_seed(0)
    continued = model.generate(decoder_prompt_ids=prefix, do_sample=True, num_return_sequences=2, max_new_tokens=2)
    assert continued.shape == (4, 5)
    assert torch.equal(continued[:, :3], prefix.repeat_interleave(2, dim=0))


@pytest.mark.parametrize("injection,positions", INJECTIONS)
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_static_cache_decodes_as_the_dynamic_cache(kind, injection, positions, encoder_inputs):
    """z's key/value positions take the static cache's first slots; masks and positions count them."""
    model = tiny.model(kind, latent_injection=injection, latent_memory_positions=positions).eval()
    for options in ({}, {"num_beams": 3}):
        dynamic = model.generate(**encoder_inputs, max_new_tokens=6, min_new_tokens=6, **options)
        static = model.generate(
            **encoder_inputs, max_new_tokens=6, min_new_tokens=6, cache_implementation="static", **options
        )
        assert torch.equal(static, dynamic)


@pytest.mark.parametrize("injection,positions", INJECTIONS)
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_prefix_and_cache_continue_the_decoding(kind, injection, positions):
    """A decoder prefix is continued under z, from scratch or from the cache that decoded it."""
    model = tiny.model(kind, latent_injection=injection, latent_memory_positions=positions).eval()
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(0)) * 3
    full = model.generate(latent=z, max_new_tokens=8, min_new_tokens=8)
    prefix = full[:, :4]
    assert torch.equal(model.generate(latent=z, decoder_prompt_ids=prefix, max_new_tokens=5, min_new_tokens=5), full)
    static = model.generate(
        latent=z, decoder_prompt_ids=prefix, max_new_tokens=5, min_new_tokens=5, cache_implementation="static"
    )
    assert torch.equal(static, full)
    head = model.generate(latent=z, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True)
    tail = model.generate(
        latent=z, decoder_prompt_ids=head.sequences, cache=head.cache, max_new_tokens=5, min_new_tokens=5
    )
    assert torch.equal(tail, full)
    shared = model.generate(latent=z, decoder_prompt_ids=prefix[:1], max_new_tokens=1)
    assert torch.equal(shared[:, :4], prefix[:1].expand(3, -1))


def test_mismatched_prefix_rows_are_refused(model):
    z = model.sample_prior(3)
    with pytest.raises(ValueError, match="one prefix row per latent"):
        model.generate(latent=z, decoder_prompt_ids=torch.full((2, 1), 2), max_new_tokens=2)
    with pytest.raises(ValueError, match="one mask value per prefix token"):
        model.generate(
            latent=z, decoder_prompt_ids=torch.full((3, 2), 2), decoder_prompt_attention_mask=torch.ones(3, 1)
        )


def test_a_training_batch_is_reconstructed_not_continued(model):
    """generate(**processor(texts)) encodes the texts; the batch's decoder inputs and labels are not a prompt."""
    batch = tiny.processor()(tiny.sentences(2))
    encoder = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert torch.equal(model.generate(**batch, max_new_tokens=4), model.generate(**encoder, max_new_tokens=4))
