"""generate() beyond plain decoding: assisted decoding (refused with a second model, prompt lookup works), a cache
passed back in, and torch.compile of the static-cache decoding step."""

import pytest
import tiny
import torch


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny.model(request.param).eval()


@pytest.mark.parametrize("assistant", ["mine-vae", "plain decoder"])
def test_an_assistant_model_is_refused_in_one_line_and_prompt_lookup_decodes_as_greedy(model, assistant):
    z = model.sample_prior(1, generator=torch.Generator().manual_seed(0)) * 3
    helper = tiny.model("gpt2", seed=1).eval()
    helper = helper if assistant == "mine-vae" else helper.decoder
    with pytest.raises(ValueError, match="does not take assistant_model.*prompt_lookup_num_tokens"):
        model.generate(latent=z, assistant_model=helper, max_new_tokens=8)
    greedy = model.generate(latent=z, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(model.generate(latent=z, prompt_lookup_num_tokens=2, max_new_tokens=8, min_new_tokens=8), greedy)


@pytest.mark.parametrize("prefix_tokens", [None, 3, 6])
def test_a_cache_not_shorter_than_the_prefix_is_refused_in_one_line(model, prefix_tokens):
    z = model.sample_prior(2, generator=torch.Generator().manual_seed(0))
    head = model.generate(latent=z, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True)
    # The cache has run every token but the last of head.sequences (6 tokens): 5 cached decoder tokens.
    prefix = {} if prefix_tokens is None else {"decoder_prompt_ids": head.sequences[:, :prefix_tokens]}
    if prefix_tokens == 6:  # the whole text so far: continued
        assert model.generate(latent=z, cache=head.cache, max_new_tokens=2, **prefix).shape == (2, 8)
        return
    with pytest.raises(ValueError, match=r"cache holds 5 decoder tokens but the decoder prefix has \d+"):
        model.generate(latent=z, cache=head.cache, max_new_tokens=2, **prefix)


@pytest.mark.parametrize("injection", ["memory", "embedding"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_static_cache_decoding_compiles_to_one_full_graph(kind, injection):
    """`_can_compile_fullgraph` holds: a decoding step with a static cache traces to one graph with fullgraph=True
    (the eager backend keeps the test in seconds: the tracing is what can fail) and decodes as without compiling."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model = tiny.model(kind, latent_injection=injection, latent_memory_positions=2, latent_vocab_bias=True).eval()
    assert model._can_compile_fullgraph
    z = model.sample_prior(2, generator=torch.Generator().manual_seed(0)) * 3
    eager = model.generate(latent=z, max_new_tokens=5, min_new_tokens=5, cache_implementation="static")
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = model.generate(
            latent=z, max_new_tokens=5, min_new_tokens=5, cache_implementation="static", compile_config=compile_config
        )
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled, eager)
