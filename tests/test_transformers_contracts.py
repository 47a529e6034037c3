"""The transformers contracts a user relies on: cache names, outputs, return_dict, use_cache, resizing, pipelines."""

import logging
import warnings

import pytest
import tiny
import torch
from transformers import GPT2LMHeadModel, pipeline

from mine_vae import MineVaeConfig, MineVaeModel
from mine_vae.configuration_mine_vae import (
    SUPPORTED_TRANSFORMERS,
    UntestedTransformersWarning,
    check_transformers_version,
)

KINDS = ["gpt2", "llama"]


@pytest.fixture(scope="module")
def batch():
    return tiny.processor()(tiny.sentences(3))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("injection", ["memory", "embedding", "both"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_deprecated_cache_name_passes_through_the_package(kind, injection, batch):
    """transformers flags the old name with a FutureWarning (keywords) or a once-per-process log line (outputs):
    record every warning, clear the log's once-memory and watch its logger."""
    model = tiny.model(kind, latent_injection=injection).eval()
    logging.getLogger("transformers").warning_once.cache_clear()
    handler = _Collect()
    logging.getLogger("transformers").addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(**batch, use_cache=True)
        model(latent=out.z, decoder_input_ids=batch["decoder_input_ids"][:, -1:], cache=out.cache)
        model.generate(**_encoder(batch), max_new_tokens=4)
        model.generate(**_encoder(batch), max_new_tokens=4, num_beams=2)
        model.generate(**_encoder(batch), max_new_tokens=4, do_sample=True, top_p=0.9)
    logging.getLogger("transformers").removeHandler(handler)
    messages = handler.messages + [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "cache_params" in m], messages


@pytest.mark.parametrize("kind", KINDS)
def test_cache_continues_the_forward_pass(kind, batch):
    model = tiny.model(kind).eval()
    ids = batch["decoder_input_ids"]
    full = model(**_encoder(batch), decoder_input_ids=ids).logits
    head = model(**_encoder(batch), decoder_input_ids=ids[:, :-2], use_cache=True)
    tail = model(latent=head.z, decoder_input_ids=ids[:, -2:], cache=head.cache).logits
    torch.testing.assert_close(tail, full[:, -2:], atol=1e-5, rtol=1e-5)


def test_use_cache_defaults_to_the_config(batch):
    model = tiny.model().eval()
    assert model(**batch).cache is not None
    model.config.use_cache = False
    assert model(**batch).cache is None
    assert model(**batch, use_cache=True).cache is not None


@pytest.mark.parametrize("kind", KINDS)
def test_return_dict_false_gives_a_tuple_of_tensors(kind, batch):
    model = tiny.model(kind).eval()
    expected = model(**batch)
    loss, logits, *_ = model(**batch, return_dict=False)
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(logits, expected.logits)
    model.config.return_dict = False
    assert isinstance(model(**batch), tuple)


@pytest.mark.parametrize("injection", ["memory", "embedding"])
@pytest.mark.parametrize("kind", KINDS)
def test_hidden_states_and_attentions_are_returned(kind, injection, batch):
    model = tiny.model(kind, latent_injection=injection, attn_implementation="eager").eval()
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    decoder_layers = model.config.decoder.num_hidden_layers
    encoder_layers = model.config.encoder.num_hidden_layers
    batch_size, length = batch["decoder_input_ids"].shape
    assert len(out.hidden_states) == decoder_layers + 1
    assert out.hidden_states[-1].shape[:2] == (batch_size, length)
    assert len(out.attentions) == decoder_layers
    keys = length + (1 if injection == "memory" else 0)  # the latent's key/value position comes first
    assert out.attentions[0].shape[-2:] == (length, keys)
    assert len(out.encoder_hidden_states) == encoder_layers + 1
    assert len(out.encoder_attentions) == encoder_layers
    assert model(**batch).hidden_states is None


@pytest.mark.parametrize("kind", KINDS)
def test_generate_returns_scores_hidden_states_and_attentions(kind, batch):
    model = tiny.model(kind, attn_implementation="eager").eval()
    out = model.generate(
        **_encoder(batch),
        max_new_tokens=3,
        min_new_tokens=3,
        return_dict_in_generate=True,
        output_hidden_states=True,
        output_attentions=True,
        output_scores=True,
    )
    assert out.sequences.shape == (3, 4)
    assert len(out.scores) == len(out.hidden_states) == len(out.attentions) == 3
    assert len(out.hidden_states[0]) == model.config.decoder.num_hidden_layers + 1


def test_eval_mode_bound_is_deterministic(batch):
    model = tiny.model().eval()
    first, second = model(**batch).mi_lower_bound, model(**batch).mi_lower_bound
    assert torch.equal(first, second)


@pytest.mark.parametrize("kind", KINDS)
def test_resize_token_embeddings_resizes_the_decoder_consistently(kind, batch, tmp_path):
    model = tiny.model(kind).eval()
    old = model.config.decoder.vocab_size
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().weight.shape[0] == old + 8
    assert model.get_output_embeddings().weight.shape[0] == old + 8
    assert model.config.decoder.vocab_size == old + 8
    assert model.encoder.get_input_embeddings().weight.shape[0] == model.config.encoder.vocab_size  # untouched
    new_token = torch.full((3, 1), old + 5)
    ids = torch.cat([batch["decoder_input_ids"], new_token], dim=1)
    logits = model(**_encoder(batch), decoder_input_ids=ids).logits
    assert logits.shape[-1] == old + 8
    model.save_pretrained(tmp_path)
    reloaded = MineVaeModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**_encoder(batch), decoder_input_ids=ids).logits, logits)


def test_text_generation_pipeline_is_refused_with_the_way_to_generate():
    model = tiny.model().eval()
    generator = pipeline("text-generation", model=model, tokenizer=tiny.decoder_tokenizer())
    with pytest.raises(TypeError, match=r"model\.generate\(\*\*processor\(texts\)\)"):
        generator("the cat sees", max_new_tokens=3)


def test_non_finite_latents_are_refused():
    model = tiny.model().eval()
    latent = model.sample_prior(2)
    latent[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(latent=latent, max_new_tokens=2)


def test_release_below_the_floor_gets_one_clear_error():
    low, high = SUPPORTED_TRANSFORMERS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither end of the tested range warns
        check_transformers_version(str(low))
        check_transformers_version("5.25.0")
    for version in ("5.23.0", "4.57.1"):
        with pytest.raises(ImportError, match=rf"needs transformers>={low}; transformers {version} is installed"):
            check_transformers_version(version)


def test_release_above_the_tested_ceiling_warns_and_goes_on():
    """A shared model keeps loading for users who upgrade: the gate names the tested range instead of refusing."""
    low, high = SUPPORTED_TRANSFORMERS
    for version in (str(high), "6.0.0"):
        expected = rf"tested with transformers>={low},<{high}; transformers {version} is installed"
        with pytest.warns(UntestedTransformersWarning, match=expected):
            check_transformers_version(version)


class _NoCacheDecoder(GPT2LMHeadModel):
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):  # no cache argument
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)


def test_decoder_without_cache_argument_error_says_what_was_looked_for():
    import transformers

    config = MineVaeConfig(encoder=tiny.encoder_config(), decoder=tiny.decoder_config("gpt2"))
    decoder = _NoCacheDecoder(config.decoder)
    with pytest.raises(ValueError, match=rf"looked for `cache`.*transformers {transformers.__version__} is installed"):
        MineVaeModel(config, decoder=decoder)


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_inputs_alone_decode_the_start_token(kind, batch):
    """forward(x) decodes, as a decoder-only model's forward does: the first step, p(first token | z)."""
    model = tiny.model(kind).eval()
    out = model(**_encoder(batch), output_hidden_states=True)
    start = batch["decoder_input_ids"][:, :1]
    assert out.logits.shape == (3, 1, model.config.decoder.vocab_size)
    assert out.hidden_states[-1].shape[:2] == (3, 1)
    torch.testing.assert_close(out.logits, model(**_encoder(batch), decoder_input_ids=start).logits)


def test_old_cache_name_is_accepted_with_transformers_warning(batch):
    model = tiny.model().eval()
    head = model(**_encoder(batch), decoder_input_ids=batch["decoder_input_ids"][:, :-1], use_cache=True)
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        old = model(latent=head.z, decoder_input_ids=batch["decoder_input_ids"][:, -1:], past_key_values=head.cache)
    assert old.cache is head.cache and old.cache.get_seq_length() == batch["decoder_input_ids"].shape[1] + 1


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_states_of_chosen_layers(kind, batch):
    model = tiny.model(kind).eval()
    every = model(**batch, output_hidden_states=True).hidden_states
    chosen = model(**batch, output_hidden_states=[0, -1]).hidden_states
    assert len(chosen) == len(every) and all(state is None for state in chosen[1:-1])
    torch.testing.assert_close(chosen[0], every[0])
    torch.testing.assert_close(chosen[-1], every[-1])


def _encoder(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
