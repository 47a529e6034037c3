import pytest
import tiny
import torch
from transformers import AutoModel, MambaConfig

from mine_vae import MineVaeConfig, MineVaeModel

DECODERS = ["gpt2", "llama"]


@pytest.fixture(scope="module")
def batch():
    return tiny.processor()(tiny.sentences(6))


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("injection", ["memory", "embedding", "both"])
def test_output_fields_and_shapes(kind, injection, batch):
    model = tiny.model(kind, latent_injection=injection)
    out = model(**batch)
    b, t = batch["labels"].shape
    assert out.logits.shape == (b, t, model.config.decoder.vocab_size)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (b, 8)
    assert out.kl_per_dimension.shape == (8,)
    assert out.kl.shape == out.reconstruction_loss.shape == out.mi_lower_bound.shape == out.loss.shape == ()
    assert out.pooler_output.shape == (b, 32)
    assert torch.isfinite(out.loss)


def test_loss_is_reconstruction_plus_beta_kl_minus_lambda_bound(batch):
    model = tiny.model(kl_weight=0.7, mi_weight=2.0, free_bits=0.0).eval()
    torch.manual_seed(1)
    out = model(**batch)
    expected = out.reconstruction_loss + 0.7 * out.kl - 2.0 * out.mi_lower_bound
    # The bound pairs examples by a fresh random derangement each call; recompute with the same seed.
    torch.manual_seed(1)
    again = model(**batch)
    assert again.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Per-call weights override the config's (the trainer's schedules rely on it).
    override = model(**batch, kl_weight=0.0, mi_weight=0.0)
    assert override.loss.item() == pytest.approx(override.reconstruction_loss.item(), rel=1e-6)


def test_free_bits_floor_each_dimension(batch):
    model = tiny.model(free_bits=5.0, mi_weight=0.0).eval()
    out = model(**batch)
    assert out.loss.item() == pytest.approx(out.reconstruction_loss.item() + 5.0 * 8, rel=1e-5)


def test_reconstruction_is_summed_per_sentence(batch):
    model = tiny.model().eval()
    out = model(**batch)
    logits = out.logits.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    assert out.reconstruction_loss.item() == pytest.approx(nll.sum(1).mean().item(), rel=1e-5)
    assert model.log_likelihood(
        out.z, batch["decoder_input_ids"], batch["labels"], batch["decoder_attention_mask"]
    ).neg().mean().item() == pytest.approx(out.reconstruction_loss.item(), rel=1e-5)


def test_latent_skips_encoder_and_changes_the_decoding(batch):
    model = tiny.model().eval()
    decoder_inputs = {k: batch[k] for k in ("decoder_input_ids", "decoder_attention_mask", "labels")}
    z = torch.randn(batch["labels"].shape[0], 8)
    out = model(latent=z, **decoder_inputs)
    assert out.mu is None and out.kl is None and out.mi_lower_bound is None
    assert torch.equal(out.z, z)
    other = model(latent=z + 3.0, **decoder_inputs)
    assert not torch.allclose(out.logits, other.logits)
    with pytest.raises(ValueError, match=r"latent must have shape \(batch_size, 8\)"):
        model(latent=torch.randn(2, 5), **{k: v[:2] for k, v in decoder_inputs.items()})


@pytest.mark.parametrize("injection", ["memory", "embedding"])
def test_each_injection_alone_carries_z(injection, batch):
    model = tiny.model("llama", latent_injection=injection).eval()
    with torch.no_grad():  # as if trained: the embedding-only shift starts at zero
        for head in model.latent_path.heads():
            head.weight.normal_(std=0.02)
    z = torch.randn(batch["labels"].shape[0], 8)
    ids = batch["decoder_input_ids"]
    assert not torch.allclose(
        model(latent=z, decoder_input_ids=ids).logits, model(latent=-z, decoder_input_ids=ids).logits
    )


@pytest.mark.parametrize("kind", DECODERS)
def test_each_latent_memory_position_is_a_key_of_every_layer(kind, batch):
    """With latent_memory_positions=P every layer attends to P keys of z's ahead of the tokens, each its own."""
    model = tiny.model(kind, latent_injection="memory", latent_memory_positions=3).eval()
    z = torch.randn(batch["labels"].shape[0], 8)
    ids = batch["decoder_input_ids"]
    out = model(latent=z, decoder_input_ids=ids, output_attentions=True)
    assert all(layer.shape[-1] == 3 + ids.shape[1] for layer in out.attentions)
    # The positions have their own projections: giving the last position the first one's key and value changes what
    # the decoder reads.
    num_kv_heads, positions, head_dim = model.latent_path.kv_shape
    with torch.no_grad():
        for projection in (model.latent_to_key, model.latent_to_value):
            weight = projection.weight.view(-1, num_kv_heads, positions, head_dim, 8)
            bias = projection.bias.view(-1, num_kv_heads, positions, head_dim)
            weight[:, :, 2], bias[:, :, 2] = weight[:, :, 0].clone(), bias[:, :, 0].clone()
    assert not torch.allclose(model(latent=z, decoder_input_ids=ids).logits, out.logits)


@pytest.mark.parametrize("kind", DECODERS)
def test_latent_vocab_bias_starts_at_zero_and_adds_a_z_made_bias_to_every_position(kind, batch):
    """latent_vocab_bias adds W z + b to the logits of every position: zero at first (the decoder reads as without
    it), then the same z-made vector at every position."""
    plain = tiny.model(kind, seed=0).eval()
    biased = tiny.model(kind, seed=0, latent_vocab_bias=True).eval()
    biased.load_state_dict(plain.state_dict(), strict=False)  # all but latent_to_vocab, which starts at zero
    z = torch.randn(batch["labels"].shape[0], 8)
    ids = batch["decoder_input_ids"]
    without = plain(latent=z, decoder_input_ids=ids).logits
    torch.testing.assert_close(biased(latent=z, decoder_input_ids=ids).logits, without)
    with torch.no_grad():
        biased.latent_to_vocab.weight.normal_()
        biased.latent_to_vocab.bias.normal_()
        expected = biased.latent_to_vocab(z).unsqueeze(1).expand_as(without)
    torch.testing.assert_close(biased(latent=z, decoder_input_ids=ids).logits - without, expected)


@pytest.mark.parametrize("kind", DECODERS)
def test_embedding_only_injection_starts_at_zero_so_the_decoder_starts_as_it_was(kind, batch):
    """With z's embedding shift as its only path, the decoder's first logits are the bare decoder's whatever z is;
    beside key/value positions ("both") the shift starts random, as those heads do."""
    model = tiny.model(kind, seed=0, latent_injection="embedding").eval()
    ids = batch["decoder_input_ids"]
    assert torch.count_nonzero(model.latent_to_embedding.weight) == 0
    bare = model.decoder(input_ids=ids).logits
    for z in (torch.zeros(ids.shape[0], 8), 5 * torch.randn(ids.shape[0], 8)):
        torch.testing.assert_close(model(latent=z, decoder_input_ids=ids).logits, bare)
    assert torch.count_nonzero(tiny.model(kind, seed=0, latent_injection="both").latent_to_embedding.weight) > 0


@pytest.mark.parametrize("kind", DECODERS)
def test_residual_injection_starts_at_zero_and_shifts_the_chosen_layers_output(kind, batch):
    """latent_residual_layers adds scale * (W z + b) to the output of each listed decoder layer at every position:
    zero at first (the decoder reads as without it), then exactly that shift in the layer's hidden states, and
    nothing is left behind for a call to the bare decoder."""
    plain = tiny.model(kind, seed=0).eval()
    shifted = tiny.model(kind, seed=0, latent_residual_layers=[0], latent_residual_scale=3.0).eval()
    shifted.load_state_dict(plain.state_dict(), strict=False)  # all but latent_to_residual, which starts at zero
    z = torch.randn(batch["labels"].shape[0], 8)
    ids = batch["decoder_input_ids"]
    torch.testing.assert_close(
        shifted(latent=z, decoder_input_ids=ids).logits, plain(latent=z, decoder_input_ids=ids).logits
    )
    with torch.no_grad():
        shifted.latent_to_residual[0].weight.normal_()
        shifted.latent_to_residual[0].bias.normal_()
        expected = 3.0 * shifted.latent_to_residual[0](z).unsqueeze(1)
    before = plain(latent=z, decoder_input_ids=ids, output_hidden_states=True).hidden_states[1]
    after = shifted(latent=z, decoder_input_ids=ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(after - before, expected.expand_as(before))
    bare = shifted.decoder(input_ids=ids).logits
    torch.testing.assert_close(bare, plain.decoder(input_ids=ids).logits)


def test_residual_injection_trains_standardises_and_survives_save_load(batch, tmp_path):
    model = tiny.model(latent_residual_layers=[0, 1], latent_residual_scale=2.0)
    model(**batch).loss.backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in model.latent_to_residual)  # the loss reaches every layer's map
    assert "latent_to_residual" in model.head_names  # so it trains with a frozen decoder
    model.eval()
    with torch.no_grad():
        for projection in model.latent_to_residual:
            projection.weight.normal_()
            projection.bias.normal_()
    z = torch.randn(batch["labels"].shape[0], 8)
    ids, labels = batch["decoder_input_ids"], batch["labels"]
    before = model.log_likelihood(z, ids, labels)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    model.standardize_latent(mean, std)  # the shifts read z' = (z - mean) / std and give the same decoder
    torch.testing.assert_close(model.log_likelihood((z - mean) / std, ids, labels), before, atol=1e-4, rtol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = MineVaeModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.latent_residual_layers == [0, 1]
    torch.testing.assert_close(reloaded.log_likelihood((z - mean) / std, ids, labels), before, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_log_likelihood_is_the_decoder_alone_on_the_same_tokens(kind, batch):
    """The baseline the VAE must beat: log p(x) summed over label tokens under the bare decoder, with none of z's
    paths (key/value positions, shifts, vocabulary bias), whatever the model's last call left."""
    model = tiny.model(kind, latent_residual_layers=[0], latent_vocab_bias=True).eval()
    with torch.no_grad():
        model.latent_to_residual[0].weight.normal_()
        model.latent_to_vocab.weight.normal_()
    ids, labels = batch["decoder_input_ids"], batch["labels"]
    model(latent=torch.randn(ids.shape[0], 8), decoder_input_ids=ids)
    log_probs = torch.log_softmax(model.decoder(input_ids=ids).logits, dim=-1)
    keep = labels != -100
    expected = (log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(dim=1)
    torch.testing.assert_close(model.decoder_log_likelihood(ids, labels), expected)
    assert not torch.allclose(model.log_likelihood(torch.zeros(ids.shape[0], 8), ids, labels), expected)


def test_latent_vocab_bias_trains_and_survives_save_load(batch, tmp_path):
    model = tiny.model(latent_vocab_bias=True)
    model(**batch).loss.backward()
    assert model.latent_to_vocab.weight.grad.abs().sum() > 0  # the reconstruction loss reaches it
    assert "latent_to_vocab" in model.head_names  # so it trains with a frozen decoder
    with torch.no_grad():
        model.latent_to_vocab.weight.normal_()
        model.latent_to_vocab.bias.normal_()
    model.save_pretrained(tmp_path)
    reloaded = MineVaeModel.from_pretrained(tmp_path)
    assert reloaded.config.latent_vocab_bias is True
    torch.testing.assert_close(reloaded.latent_to_vocab.weight, model.latent_to_vocab.weight)
    torch.testing.assert_close(reloaded.latent_to_vocab.bias, model.latent_to_vocab.bias)


def test_resizing_the_vocabulary_resizes_the_vocab_bias(batch):
    """New tokens get a zero row of z's vocabulary bias; the rows of the old tokens keep their values."""
    model = tiny.model(latent_vocab_bias=True).eval()
    with torch.no_grad():
        model.latent_to_vocab.weight.normal_()
        model.latent_to_vocab.bias.normal_()
    old_weight, old_bias = model.latent_to_vocab.weight.clone(), model.latent_to_vocab.bias.clone()
    vocab = old_weight.shape[0]
    model.resize_token_embeddings(vocab + 3)
    assert model.latent_to_vocab.weight.shape[0] == vocab + 3
    torch.testing.assert_close(model.latent_to_vocab.weight[:vocab], old_weight)
    torch.testing.assert_close(model.latent_to_vocab.bias[:vocab], old_bias)
    assert not model.latent_to_vocab.weight[vocab:].any() and not model.latent_to_vocab.bias[vocab:].any()
    z = torch.randn(batch["labels"].shape[0], 8)
    assert model(latent=z, decoder_input_ids=batch["decoder_input_ids"]).logits.shape[-1] == vocab + 3
    model.resize_token_embeddings(vocab - 2)  # shrinking keeps the first rows
    torch.testing.assert_close(model.latent_to_vocab.weight, old_weight[: vocab - 2])


def test_labels_alone_build_decoder_inputs(batch):
    model = tiny.model().eval()
    out_given = model(**batch)
    no_inputs = {k: v for k, v in batch.items() if k not in ("decoder_input_ids", "decoder_attention_mask")}
    out_built = model(**no_inputs)
    # Shifted labels equal the collator's decoder inputs on every unpadded position.
    mask = batch["decoder_attention_mask"].bool()
    assert torch.allclose(out_given.logits[mask], out_built.logits[mask], atol=1e-5)


def test_eval_uses_posterior_mean_and_training_samples(batch):
    model = tiny.model()
    model.eval()
    out = model(**batch)
    assert torch.equal(out.z, out.mu)
    model.train()
    out = model(**batch)
    assert not torch.equal(out.z, out.mu)
    forced_mean = model(**batch, sample_latent=False)
    assert torch.equal(forced_mean.z, forced_mean.mu)


def test_gradients_of_the_loss_leave_the_critic_alone_and_reach_the_encoder(batch):
    model = tiny.model(mi_weight=1.0)
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.critic.parameters())
    assert (
        model.posterior.weight.grad is not None and model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    )


def test_bound_gradient_reaches_encoder_only_through_z(batch):
    model = tiny.model()
    out = model(**batch)
    out.mi_lower_bound.backward()
    # The critic's view of x is detached: d bound / d pooled states comes through the posterior (z) only.
    assert model.posterior.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.critic.parameters())


def test_critic_loss_trains_only_the_critic(batch):
    model = tiny.model(xi="ema")
    out = model(**batch)
    loss = model.critic_loss(out.pooler_output, out.z)
    loss.backward()
    assert all(p.grad is not None for p in model.critic.parameters())
    assert model.posterior.weight.grad is None
    assert model.critic.ema_updates.item() == 1


def test_single_example_batch_has_no_bound_but_a_loss():
    model = tiny.model()
    out = model(**tiny.processor()(["the cat sees the moon"]))
    assert out.mi_lower_bound is None and torch.isfinite(out.loss)


def test_helpers_prior_interpolation_encode():
    model = tiny.model()
    assert model.sample_prior(5).shape == (5, 8)
    a, b = torch.zeros(8), torch.ones(8)
    path = MineVaeModel.interpolate(a, b, 5)
    assert path.shape == (5, 8) and torch.equal(path[0], a) and torch.equal(path[-1], b)
    assert torch.allclose(path[2], torch.full((8,), 0.5))
    with pytest.raises(ValueError, match="num_steps"):
        MineVaeModel.interpolate(a, b, 1)
    posterior = model.encode(
        **{k: v for k, v in tiny.processor()(tiny.sentences(3)).items() if k in ("input_ids", "attention_mask")}
    )
    assert posterior.mu.shape == (3, 8) and posterior.sample(4).shape == (4, 3, 8)


@pytest.mark.parametrize("pooling", ["pooler", "first", "mean"])
def test_pooling_modes(pooling, batch):
    model = tiny.model(pooling=pooling).eval()
    assert torch.isfinite(model(**batch).loss)


def test_mean_pooling_ignores_padding():
    model = tiny.model(pooling="mean").eval()
    processor = tiny.processor()
    alone = processor(["the cat sees the moon"])
    padded = processor(["the cat sees the moon", "the old man finds the quiet house"])
    mu_alone = model.encode(alone["input_ids"], alone["attention_mask"]).mu
    mu_padded = model.encode(padded["input_ids"], padded["attention_mask"]).mu[:1]
    assert torch.allclose(mu_alone, mu_padded, atol=1e-5)


def test_decoder_without_kv_prefix_gets_a_clear_error():
    config = MineVaeConfig(
        encoder=tiny.encoder_config(),
        decoder=MambaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, state_size=4),
        latent_injection="memory",
        latent_size=4,
    )
    with pytest.raises(ValueError, match="cannot take a key/value prefix.*latent_injection='embedding'"):
        MineVaeModel(config)


@pytest.mark.parametrize("injection", ["memory", "embedding", "both"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_activation_checkpointing_gives_the_unchecked_gradients(kind, injection, batch):
    """z reaches checkpointed layers (through a cache that stores nothing), so every gradient is the unchecked one."""
    gradients = []
    for checkpointing in (False, True):
        model = tiny.model(kind, latent_injection=injection, seed=3)
        model.config.encoder.hidden_dropout_prob = model.config.decoder.attn_pdrop = 0.0
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(**batch, sample_latent=False).loss
        loss.backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    unchecked, checked = gradients
    assert unchecked.keys() == checked.keys()
    assert any(n.startswith("latent_to_") for n in checked)  # z's own heads get gradients through the decoder
    for name, grad in unchecked.items():
        torch.testing.assert_close(checked[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("injection", ["memory", "both"])
def test_activation_checkpointing_recomputes_the_decoder_layers(injection, batch):
    """The checkpointed layers do run twice (the recompute happens, with the latent's prefix in the cache)."""
    model = tiny.model(latent_injection=injection).train()
    model.activation_checkpointing_enable()
    calls = []
    for layer in model.decoder.transformer.h:  # the layer's own hooks stay outside the checkpoint; its parts' do not
        layer.attn.register_forward_hook(lambda module, args, output: calls.append(output[0].shape))
    model(**batch).loss.backward()
    assert len(calls) == 2 * len(model.decoder.transformer.h)


def test_over_long_decoder_input_raises():
    model = tiny.model()
    ids = torch.full((2, 64), 5)
    with pytest.raises(ValueError, match="accepts 64 positions"):
        model(latent=torch.zeros(2, 8), decoder_input_ids=ids)


def test_empty_batch_raises():
    model = tiny.model()
    with pytest.raises(ValueError, match="empty batch"):
        model.encode(torch.zeros((0, 5), dtype=torch.long))


def test_auto_model_builds_from_config():
    model = AutoModel.from_config(tiny.model().config)
    assert isinstance(model, MineVaeModel)


def test_one_step_lowers_loss_on_fixed_batch(batch):
    model = tiny.model("llama")
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("critic.")], lr=3e-3)
    model.eval()  # posterior mean: a deterministic loss to compare
    before = model(**batch).loss.item()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch, sample_latent=False).loss.backward()
        optimizer.step()
    model.eval()
    assert model(**batch).loss.item() < before


def test_from_encoder_decoder_pretrained_routes_kwargs_and_keeps_attention(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny.encoder_config())
    decoder = AutoModelForCausalLM.from_config(tiny.decoder_config("llama"))
    encoder.save_pretrained(tmp_path / "enc")
    decoder.save_pretrained(tmp_path / "dec")
    model = MineVaeModel.from_encoder_decoder_pretrained(
        tmp_path / "enc", tmp_path / "dec", latent_size=4, decoder_start_token_id=5, decoder_attn_implementation="eager"
    )
    assert model.config.latent_size == 4 and model.config.decoder_start_token_id == 5
    assert model.config.encoder._attn_implementation == "sdpa"
    assert model.decoder.config._attn_implementation == "eager"
    assert torch.equal(model.decoder.lm_head.weight, decoder.lm_head.weight)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)


def test_posterior_logvar_init_starts_the_posterior_narrow_and_survives_save_load(tmp_path):
    """The log-variance half of the posterior starts at config.posterior_logvar_init (0: the prior's width); the
    means' half is untouched, and a saved model loads its trained values, not the initial ones."""
    default = tiny.model(seed=0).eval()  # eval: no dropout between the two encodings
    narrow = tiny.model(seed=0, posterior_logvar_init=-6.0).eval()
    latent = narrow.config.latent_size
    torch.testing.assert_close(narrow.posterior.bias[latent:], torch.full((latent,), -6.0))
    torch.testing.assert_close(narrow.posterior.weight, default.posterior.weight)
    batch = tiny.processor()(tiny.sentences(4))
    with torch.no_grad():
        logvar = narrow.encode(batch["input_ids"], batch["attention_mask"]).logvar
        logvar_default = default.encode(batch["input_ids"], batch["attention_mask"]).logvar
    torch.testing.assert_close(logvar, logvar_default - 6.0)
    with torch.no_grad():
        narrow.posterior.bias[latent:] = -1.5
    narrow.save_pretrained(tmp_path)
    reloaded = MineVaeModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.posterior.bias[latent:], torch.full((latent,), -1.5))


def test_posterior_logvar_init_must_be_finite():
    with pytest.raises(ValueError, match="posterior_logvar_init"):
        tiny.model(posterior_logvar_init=float("nan"))


def test_adding_the_vocab_bias_to_a_saved_model_is_refused_by_name_or_accepted_at_zero(batch, tmp_path):
    """`from_pretrained(folder, latent_vocab_bias=True)` on a model saved without the bias names the argument that
    changed the shape; with `output_loading_info=True` the new head loads at its initial zero, so the model reads as
    it was saved."""
    model = tiny.model().eval()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"as changed by latent_vocab_bias: 2 missing .* output_loading_info=True"):
        MineVaeModel.from_pretrained(tmp_path, latent_vocab_bias=True)
    biased, info = MineVaeModel.from_pretrained(tmp_path, latent_vocab_bias=True, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["latent_to_vocab.bias", "latent_to_vocab.weight"]
    assert not biased.latent_to_vocab.weight.any() and not biased.latent_to_vocab.bias.any()
    z = torch.randn(batch["input_ids"].shape[0], model.config.latent_size)
    ids = batch["decoder_input_ids"]
    torch.testing.assert_close(biased.eval()(latent=z, decoder_input_ids=ids).logits,
                               model(latent=z, decoder_input_ids=ids).logits)  # fmt: skip


def test_a_setting_that_does_not_explain_the_mismatch_is_not_blamed_for_it(tmp_path):
    """Only settings that differ from the saved ones, with a mismatch confined to the heads, are named: a damaged
    folder loaded with use_cache=False, or with the value it was saved with, gets the re-save advice instead of
    output_loading_info (which would keep a head at its initial values)."""
    from safetensors.torch import load_file, save_file

    def save_without(prefix: str) -> None:
        weights = load_file(tmp_path / "model.safetensors")
        kept = {key: value for key, value in weights.items() if not key.startswith(prefix)}
        save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})

    tiny.model().save_pretrained(tmp_path)
    save_without("decoder.")
    for kwargs in ({"use_cache": False}, {"latent_vocab_bias": True}):  # no setting explains a missing decoder
        with pytest.raises(ValueError, match="do not fit its config: .* Save the model again"):
            MineVaeModel.from_pretrained(tmp_path, **kwargs)
    tiny.model(latent_vocab_bias=True).save_pretrained(tmp_path)
    save_without("latent_to_vocab.")
    with pytest.raises(ValueError, match="do not fit its config: .* Save the model again"):
        MineVaeModel.from_pretrained(tmp_path, latent_vocab_bias=True)  # as saved: the file is what is wrong


def test_bag_of_words_loss_is_each_target_tokens_log_probability_under_the_head(batch):
    """bow_loss = mean over sentences of −Σ log softmax(bow_head(z))[token] over the label tokens (padding's -100
    skipped), and the loss adds bow_weight times it."""
    model = tiny.model(bow_weight=0.5, kl_weight=0.7, mi_weight=0.0).eval()
    with torch.no_grad():
        model.bow_head.weight.normal_()  # logits far from uniform: a wrong token or a counted pad shows
    labels = batch["labels"]
    assert (labels == -100).any()  # sentences of several lengths: the padding must be left out
    out = model(**batch)
    scores = model.bow_head(out.z).double()
    per_sentence = []
    for row, sentence in zip(scores, labels.tolist()):
        log_probs = row - torch.logsumexp(row, dim=0)
        per_sentence.append(-sum(log_probs[token] for token in sentence if token != -100))
    expected = torch.stack(per_sentence).mean()
    assert out.bow_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(
        (out.reconstruction_loss + 0.7 * out.kl + 0.5 * out.bow_loss).item(), rel=1e-5
    )


def test_without_bow_weight_there_is_no_head_and_nothing_else_changes(batch):
    """bow_weight = 0 builds no head and no term; with a head, every other weight starts as it does without one."""
    plain = tiny.model(seed=3).eval()
    assert not hasattr(plain, "bow_head") and "bow_head" not in plain.head_names
    assert not any(name.startswith("bow_head") for name in plain.state_dict())
    out = plain(**batch)
    assert out.bow_loss is None
    with_head = tiny.model(seed=3, bow_weight=1.0)
    assert "bow_head" in with_head.head_names  # trained whatever is frozen
    bare = {name: value for name, value in with_head.state_dict().items() if not name.startswith("bow_head")}
    assert bare.keys() == plain.state_dict().keys()
    assert all(torch.equal(value, plain.state_dict()[name]) for name, value in bare.items())


def test_bag_of_words_gradient_reaches_the_posterior_and_not_the_decoder(batch):
    model = tiny.model(bow_weight=1.0)
    model(**batch).bow_loss.backward()
    assert model.bow_head.weight.grad.abs().sum() > 0
    assert model.posterior.weight.grad.abs().sum() > 0
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())


def test_bag_of_words_head_survives_save_load_standardisation_and_resizing(batch, tmp_path):
    model = tiny.model(bow_weight=2.0).eval()
    with torch.no_grad():
        model.bow_head.weight.normal_()
        model.bow_head.bias.normal_()
    expected = model(**batch)
    model.save_pretrained(tmp_path)
    reloaded = MineVaeModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.bow_weight == 2.0
    again = reloaded(**batch)
    torch.testing.assert_close(again.bow_loss, expected.bow_loss, rtol=0, atol=0)
    torch.testing.assert_close(again.loss, expected.loss, rtol=0, atol=0)
    # z' = (z - mean) / std: the head reads z' and predicts the same words.
    labels = batch["labels"]
    z = torch.randn(labels.shape[0], 8)
    before = model.bag_of_words_loss(z, labels)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    model.standardize_latent(mean, std)
    torch.testing.assert_close(model.bag_of_words_loss((z - mean) / std, labels), before, atol=1e-4, rtol=1e-5)
    # A resized vocabulary keeps the old tokens' rows; new tokens start at zero.
    weight, vocab = model.bow_head.weight.detach().clone(), model.bow_head.out_features
    model.resize_token_embeddings(vocab + 3)
    assert model.bow_head.out_features == vocab + 3
    torch.testing.assert_close(model.bow_head.weight[:vocab], weight)
    assert not model.bow_head.weight[vocab:].any()


def test_a_config_saved_before_bow_weight_existed_loads_without_the_head(tmp_path):
    import json

    tiny.model().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved.pop("bow_weight", None)
    path.write_text(json.dumps(saved))
    reloaded = MineVaeModel.from_pretrained(tmp_path)
    assert reloaded.config.bow_weight == 0.0 and not hasattr(reloaded, "bow_head")


def test_bow_weight_must_be_a_finite_number_at_least_zero():
    with pytest.raises(ValueError, match="bow_weight=-1.0 is not allowed"):
        tiny.model(bow_weight=-1.0)
