"""Standardising z folds the aggregate posterior's mean and spread into the model: the same encoder and decoder, now
under a prior that covers where the posteriors are."""

import datasets
import pytest
import tiny
import torch

from mine_vae import MineVaeModel
from mine_vae.adapters import add_decoder_lora, peft_base_vae
from mine_vae.evaluation import aggregate_posterior_moments
from mine_vae.trainer import MineVaeTrainer


def _batches(texts, size=8):
    processor = tiny.processor()
    return [processor(texts[start : start + size]) for start in range(0, len(texts), size)]


def _off_prior_model(kind="gpt2", **config):
    """A tiny model whose posterior sits away from N(0, I), as free bits let it: shifted and spread means, small
    variances; and a critic whose scores vary."""
    model = tiny.model(kind, latent_vocab_bias=True, **config).eval()
    size = model.config.latent_size
    with torch.no_grad():
        model.posterior.weight[:size] *= 4
        model.posterior.bias[:size] += torch.linspace(-2.0, 2.0, size)
        model.posterior.bias[size:] -= 3.0
        for layer in model.critic.modules():  # scores of order 1, not the initialisation's 1e-4
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, 0.5)
    return model


def _by_hand(model, batches):
    mus, variances = [], []
    with torch.no_grad():
        for batch in batches:
            posterior = model.encode(batch["input_ids"], batch["attention_mask"])
            mus.append(posterior.mu)
            variances.append(posterior.logvar.exp())
    mu, variance = torch.cat(mus).double(), torch.cat(variances).double()
    return mu.mean(0), (mu.var(0) + variance.mean(0)).sqrt()


def test_moments_are_the_aggregate_posteriors_mean_and_total_variance():
    model, batches = _off_prior_model(), _batches(tiny.sentences(40))
    moments = aggregate_posterior_moments(model, batches)
    mean, std = _by_hand(model, batches)
    assert moments.num_examples == 40
    torch.testing.assert_close(moments.mean.double(), mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moments.std.double(), std, atol=1e-5, rtol=1e-5)
    assert moments.mean.abs().max() > 0.5  # the model really sits off the prior
    # max_examples stops part-way through a batch.
    assert aggregate_posterior_moments(model, batches, max_examples=13).num_examples == 13
    with pytest.raises(ValueError, match="at least 2 examples"):
        aggregate_posterior_moments(model, batches, max_examples=1)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_standardizing_keeps_the_model_and_centres_the_aggregate_posterior(kind):
    model, batches = _off_prior_model(kind), _batches(tiny.sentences(32))
    batch = batches[0]
    with torch.no_grad():
        before = model.encode(batch["input_ids"], batch["attention_mask"])
        z = before.mu + (0.5 * before.logvar).exp() * torch.randn_like(before.mu)
        decoder_inputs = (model._shift_right(batch["labels"]), batch["labels"], batch["decoder_attention_mask"])
        likelihood = model.log_likelihood(z, *decoder_inputs)
        permutation = torch.roll(torch.arange(z.shape[0]), 1)
        scores = model.critic(before.pooler_output, z, permutation)
        greedy = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=8, do_sample=False)

    moments = aggregate_posterior_moments(model, batches)
    model.standardize_latent(moments.mean, moments.std)

    with torch.no_grad():
        after = model.encode(batch["input_ids"], batch["attention_mask"])
        z_new = (z - moments.mean) / moments.std
        torch.testing.assert_close(after.mu, (before.mu - moments.mean) / moments.std, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(after.logvar, before.logvar - 2 * moments.std.log(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.log_likelihood(z_new, *decoder_inputs), likelihood, atol=1e-3, rtol=1e-4)
        for got, expected in zip(model.critic(after.pooler_output, z_new, permutation), scores):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        regenerated = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=8, do_sample=False)
    assert torch.equal(regenerated, greedy)  # reconstructions do not change
    standardized = aggregate_posterior_moments(model, batches)
    torch.testing.assert_close(standardized.mean, torch.zeros_like(standardized.mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardized.std, torch.ones_like(standardized.std), atol=1e-4, rtol=0)


def test_standardizing_reaches_the_heads_inside_peft_adapters():
    plain, batches = _off_prior_model(), _batches(tiny.sentences(24))
    adapted = add_decoder_lora(_off_prior_model(), r=2)
    moments = aggregate_posterior_moments(plain, batches)
    plain.standardize_latent(moments.mean, moments.std)
    peft_base_vae(adapted).standardize_latent(moments.mean, moments.std)
    batch = batches[0]
    with torch.no_grad():
        expected = plain.encode(batch["input_ids"], batch["attention_mask"]).mu
        got = adapted.encode(batch["input_ids"], batch["attention_mask"]).mu
        torch.testing.assert_close(got, expected)
        z = torch.randn(expected.shape)
        inputs = (plain._shift_right(batch["labels"]), batch["labels"], batch["decoder_attention_mask"])
        # LoRA's B starts at zero, so the adapted decoder is the plain one until it trains.
        torch.testing.assert_close(adapted.log_likelihood(z, *inputs), plain.log_likelihood(z, *inputs))


def test_bad_moments_are_refused():
    model = tiny.model()
    size = model.config.latent_size
    with pytest.raises(ValueError, match=rf"shape \({size},\)"):
        model.standardize_latent(torch.zeros(size + 1), torch.ones(size + 1))
    with pytest.raises(ValueError, match="std finite and > 0"):
        model.standardize_latent(torch.zeros(size), torch.zeros(size))


def test_the_trainer_standardizes_at_the_end_and_checkpoints_keep_z_as_trained(tmp_path):
    texts = tiny.sentences(48)
    data = datasets.Dataset.from_dict({"text": texts})

    def train(folder, examples):
        args = tiny.training_args(
            tmp_path / folder, standardize_latent_examples=examples, save_strategy="steps", save_steps=6
        )
        trainer = MineVaeTrainer(
            model=tiny.model(mi_weight=1.0), args=args, processing_class=tiny.processor(), train_dataset=data
        )
        trainer.train()
        return trainer.model.eval()

    plain, standardized = train("plain", 0), train("standardized", len(texts))
    # The same run, standardised over every training sentence at its end: exactly the plain run's model standardised.
    moments = aggregate_posterior_moments(plain, _batches(texts))
    plain.standardize_latent(moments.mean, moments.std)
    for (name, expected), got in zip(plain.state_dict().items(), standardized.state_dict().values()):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=name)
    # The checkpoint of the last step was written before: resuming from it continues the run as trained.
    checkpoint = MineVaeModel.from_pretrained(tmp_path / "standardized" / "checkpoint-6")
    assert not torch.allclose(checkpoint.posterior.bias, standardized.posterior.bias)


@pytest.mark.parametrize("examples", [1, -5])
def test_too_few_standardizing_examples_are_refused(tmp_path, examples):
    with pytest.raises(ValueError, match="standardize_latent_examples"):
        tiny.training_args(tmp_path, standardize_latent_examples=examples)
