"""Tests for mine_vae.evaluation and the reconstruction_bleu metric module.

The pure functions are checked against torch.distributions and hand computations. ``evaluate_vae`` is
checked on a linear-Gaussian "VAE" whose marginal likelihood log p(x) is known in closed form, so the
importance-weighted NLL can be compared with the truth, and then run once on a tiny real MineVaeModel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import sacrebleu
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from mine_vae.evaluation import (
    GREEDY_DECODING,
    RECONSTRUCTION_DECODING,
    active_units,
    budgeted_samples_per_call,
    count_words,
    describe_mi,
    evaluate_vae,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    kl_per_dimension,
    mutual_information,
    standard_normal_log_density,
)
from mine_vae.metrics import available_metrics, load_metric, metric_path


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def test_gaussian_log_density_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    z = torch.randn(3, 5, 4)  # (K, B, L) against (B, L): broadcasting
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert gaussian_log_density(z, mu, logvar).shape == (3, 5)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)
    torch.testing.assert_close(standard_normal_log_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    # The standard normal is the special case mu = 0, logvar = 0.
    torch.testing.assert_close(standard_normal_log_density(z), gaussian_log_density(z, torch.zeros(4), torch.zeros(4)))


def test_kl_per_dimension_matches_torch_distributions() -> None:
    torch.manual_seed(1)
    mu, logvar = torch.randn(7, 3), torch.randn(7, 3)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(kl_per_dimension(mu, logvar), expected)
    assert kl_per_dimension(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0  # q = p
    with pytest.raises(ValueError, match="mu and logvar"):
        kl_per_dimension(torch.zeros(3), torch.zeros(3))


def test_importance_weighted_log_likelihood() -> None:
    torch.manual_seed(2)
    log_px, log_pz, log_qz = torch.randn(1, 4) - 50, torch.randn(1, 4), torch.randn(1, 4)
    # K = 1: exactly the single-sample ELBO term.
    single = importance_weighted_log_likelihood(log_px, log_pz, log_qz)
    torch.testing.assert_close(single, (log_px + log_pz - log_qz)[0])
    # K copies of the same sample: same value (the -log K cancels the K equal terms).
    rep = [t.repeat(10, 1) for t in (log_px, log_pz, log_qz)]
    torch.testing.assert_close(importance_weighted_log_likelihood(*rep), (log_px + log_pz - log_qz)[0])
    # Hand-computed mean of the weights, with sentence-sized log-weights that would underflow exp().
    log_w = torch.tensor([[-1000.0], [-1001.0], [-1002.0]])
    expected = -1000.0 + math.log((1 + math.exp(-1) + math.exp(-2)) / 3)
    out = importance_weighted_log_likelihood(log_w, torch.zeros_like(log_w), torch.zeros_like(log_w))
    assert out.item() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        importance_weighted_log_likelihood(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2))


def _calc_mi_reference(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> float:
    """He et al. 2019's calc_mi (lagging-inference-networks, modules/encoders/encoder.py), naive broadcast,
    given the samples z of shape (N, L) (one per example)."""
    x_batch, nz = mu.size()
    neg_entropy = (-0.5 * nz * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean()
    z_samples = z.unsqueeze(1)  # (z_batch, 1, nz)
    mu, logvar = mu.unsqueeze(0), logvar.unsqueeze(0)
    var = logvar.exp()
    dev = z_samples - mu
    log_density = -0.5 * ((dev**2) / var).sum(dim=-1) - 0.5 * (nz * math.log(2 * math.pi) + logvar.sum(-1))
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(x_batch)
    return float(neg_entropy - log_qz.mean(-1))


def test_mutual_information_matches_he_et_al_and_is_chunk_invariant() -> None:
    torch.manual_seed(3)
    mu, logvar = torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 6, dtype=torch.float64) - 1
    # Reproduce the function's draw: eps of shape (num_samples, N, L) in float64 from the same generator.
    eps = torch.randn((1, 50, 6), generator=torch.Generator().manual_seed(7), dtype=torch.float64)[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    reference = _calc_mi_reference(mu, logvar, z)
    for chunk_size in (1, 7, 50, 4096):
        ours = mutual_information(
            mu, logvar, chunk_size=chunk_size, generator=torch.Generator().manual_seed(7), closed_form_entropy=True
        )
        assert ours == pytest.approx(reference, abs=1e-9)
    # The default pairs both terms on the same draws: a different estimate of the same quantity.
    paired = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(7))
    log_q_own = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1).mean().item()
    neg_entropy = (-0.5 * 6 * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean().item()
    assert paired == pytest.approx(reference - neg_entropy + log_q_own, abs=1e-9)


def test_mutual_information_of_a_posterior_that_ignores_x_is_zero() -> None:
    mu = torch.full((64, 8), 0.3)
    logvar = torch.full((64, 8), -0.5)
    assert abs(mutual_information(mu, logvar, num_samples=4)) < 1e-9
    # He et al.'s closed-form first term gets there only on average (Monte-Carlo noise ~0.1 here).
    he = [
        mutual_information(mu, logvar, closed_form_entropy=True, generator=torch.Generator().manual_seed(s))
        for s in range(20)
    ]
    assert abs(sum(he) / len(he)) < 0.1


@pytest.mark.parametrize("closed_form_entropy", [False, True])
def test_mutual_information_of_a_gaussian_channel(closed_form_entropy: bool) -> None:
    # x ~ N(0, 1) gives posterior means mu = x; q(z|x) = N(x, s2): I(x; z) = 0.5 log(1 + 1 / s2).
    generator = torch.Generator().manual_seed(4)
    s2 = 0.25
    mu = torch.randn(2000, 1, generator=generator)
    logvar = torch.full_like(mu, math.log(s2))
    estimate = mutual_information(
        mu, logvar, num_samples=2, generator=generator, closed_form_entropy=closed_form_entropy
    )
    # Over seeds the estimates spread by about +-0.04 around the truth at this size.
    assert estimate == pytest.approx(0.5 * math.log(1 + 1 / s2), abs=0.06)


def test_mutual_information_is_at_most_log_n_for_separated_posteriors() -> None:
    # Well separated, nearly deterministic posteriors: each z identifies its x, so MI -> log N.
    mu = torch.arange(20, dtype=torch.float32).unsqueeze(1) * 10
    logvar = torch.full_like(mu, -4.0)
    assert mutual_information(mu, logvar) == pytest.approx(math.log(20), abs=1e-4)


def test_mutual_information_scales_to_an_eval_set_in_bounded_memory() -> None:
    # ~4k examples x 32 dims (a PTB test set): chunks keep the pairwise matrix at chunk_size x N.
    generator = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(4096, 32, generator=generator), torch.randn(4096, 32, generator=generator) * 0.1 - 1
    estimate = mutual_information(mu, logvar, chunk_size=512, generator=generator)
    assert 0.0 < estimate <= math.log(4096) + 1e-6


def test_mutual_information_needs_two_examples() -> None:
    with pytest.raises(ValueError, match="at least 2 examples"):
        mutual_information(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        mutual_information(torch.zeros(4), torch.zeros(4))


def test_active_units_on_constructed_means() -> None:
    n = 100
    mu = torch.zeros(n, 4)
    mu[:, 0] = torch.tensor([1.0, -1.0]).repeat(n // 2)  # variance ~1: active
    mu[:, 1] = 5.0  # constant: inactive however large
    mu[:, 2] = torch.linspace(-0.05, 0.05, n)  # variance ~0.00085 < 0.01: inactive
    mu[:, 3] = torch.linspace(-1.0, 1.0, n)  # variance ~0.34: active
    result = active_units(mu)
    assert result.count == 2
    torch.testing.assert_close(result.variances, mu.var(dim=0, unbiased=True))
    assert active_units(mu, threshold=1e-4).count == 3
    with pytest.raises(ValueError, match="at least 2"):
        active_units(mu[:1])


def test_count_words() -> None:
    assert count_words(["the cat sat", " a  b "]) == [4, 3]
    assert count_words(["the cat sat"], add_eos=False) == [3]


# ---------------------------------------------------------------------------------------------
# evaluate_vae on a linear-Gaussian model with a closed-form marginal likelihood
# ---------------------------------------------------------------------------------------------
@dataclass
class FakePosterior:
    mu: torch.Tensor
    logvar: torch.Tensor
    pooler_output: torch.Tensor


class WordTokenizer:
    """Ids -> words; ids 0..2 are special (pad, bos, eos)."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = ["<pad>", "<s>", "</s>", *vocab]

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else sequences
        return [" ".join(self.vocab[i] for i in row if not (skip_special_tokens and i < 3)) for row in rows]


@dataclass
class FakeProcessor:
    decoder_tokenizer: WordTokenizer


class LinearGaussianVae(torch.nn.Module):
    """x = W z + b + N(0, sigma^2 I), z ~ N(0, I), with W having orthogonal columns.

    "Sentences" are rows of a table X (N, D); a batch refers to example n by putting n in column 0 of
    ``input_ids`` and ``decoder_input_ids``. The exact posterior is then diagonal:
    var_d = 1 / (1 + s_d^2 / sigma^2), mean = var * W^T (x - b) / sigma^2, and
    log p(x) = log N(x; b, W W^T + sigma^2 I). ``mean_shift`` / ``logvar_shift`` make q(z|x) wrong on purpose.
    """

    def __init__(
        self,
        num_examples: int = 37,
        dim: int = 6,
        scales=(2.0, 1.0, 0.0),
        sigma: float = 0.5,
        mean_shift: float = 0.0,
        logvar_shift: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        latent = len(scales)
        q, _ = torch.linalg.qr(torch.randn(dim, latent, generator=generator, dtype=torch.float64))
        self.W = (q * torch.tensor(scales, dtype=torch.float64)).float()  # (D, L), W^T W = diag(s^2)
        self.b = torch.randn(dim, generator=generator)
        self.sigma = sigma
        self.config = type("Config", (), {"latent_size": latent})()
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # so the evaluator finds a device
        z = torch.randn(num_examples, latent, generator=generator)
        self.X = z @ self.W.T + self.b + sigma * torch.randn(num_examples, dim, generator=generator)
        s2 = torch.tensor(scales) ** 2
        self.post_var = 1.0 / (1.0 + s2 / sigma**2)  # (L,)
        self.mean_shift, self.logvar_shift = mean_shift, logvar_shift
        self.log_likelihood_rows: list[int] = []
        self.bound_values: list[float] = []
        self.decodings: list[dict] = []  # generate's options beyond do_sample, call by call
        self.saw_eval_mode: list[bool] = []

    # -- closed forms used by the tests --
    def log_marginal(self) -> torch.Tensor:
        cov = self.W.double() @ self.W.double().T + self.sigma**2 * torch.eye(self.X.shape[1], dtype=torch.float64)
        return MultivariateNormal(self.b.double(), covariance_matrix=cov).log_prob(self.X.double())

    def posterior(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.X[index]
        mu = self.post_var * ((x - self.b) @ self.W) / self.sigma**2 + self.mean_shift
        logvar = torch.log(self.post_var).expand_as(mu) + self.logvar_shift
        return mu, logvar

    # -- the model interface evaluate_vae codes against --
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FakePosterior:
        self.saw_eval_mode.append(not self.training)
        mu, logvar = self.posterior(input_ids[:, 0])
        return FakePosterior(mu=mu, logvar=logvar, pooler_output=self.X[input_ids[:, 0]])

    def log_likelihood(self, latent, decoder_input_ids, labels, decoder_attention_mask=None) -> torch.Tensor:
        assert latent.shape[0] == decoder_input_ids.shape[0] == labels.shape[0]
        if decoder_attention_mask is not None:
            assert decoder_attention_mask.shape == decoder_input_ids.shape
        self.log_likelihood_rows.append(latent.shape[0])
        x = self.X[decoder_input_ids[:, 0]]
        mean = latent @ self.W.T + self.b
        return Normal(mean, self.sigma).log_prob(x).sum(-1)

    def mi_lower_bound(self, pooler_output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        value = pooler_output[:, 0].mean()
        self.bound_values.append(float(value))
        return value

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, **decoding) -> torch.Tensor:
        assert do_sample is False
        self.decodings.append(decoding)
        # "Reconstruct" example n as the words of its reference, except example 0 which drops its last word; plain
        # greedy decoding (no options) also drops example 1's.
        dropped = (0,) if decoding else (0, 1)
        rows = []
        for n in input_ids[:, 0].tolist():
            words = reference_ids(n)
            rows.append([1, *(words[:-1] if n in dropped else words), 2][: max_new_tokens + 1])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [0] * (width - len(r)) for r in rows])


VOCAB = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]


def reference_ids(n: int) -> list[int]:
    """Token ids of example n's "sentence": 3 to 7 words."""
    return [3 + (n * 7 + k) % len(VOCAB) for k in range(3 + n % 5)]


def make_batches(num_examples: int, batch_size: int, with_num_words: bool = False) -> list[dict]:
    batches = []
    for begin in range(0, num_examples, batch_size):
        index = list(range(begin, min(begin + batch_size, num_examples)))
        sequences = [reference_ids(n) + [2] for n in index]  # labels: words + EOS
        width = max(len(s) for s in sequences)
        labels = torch.full((len(index), width), -100)
        decoder_input_ids = torch.zeros((len(index), width), dtype=torch.long)
        decoder_attention_mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, (n, seq) in enumerate(zip(index, sequences, strict=True)):
            labels[row, : len(seq)] = torch.tensor(seq)
            decoder_attention_mask[row, : len(seq)] = 1
            decoder_input_ids[row, 0] = n  # the fake decoder reads the example index here
        input_ids = torch.tensor(index).unsqueeze(1).repeat(1, 3)
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
            "labels": labels,
        }
        if with_num_words:
            batch["num_words"] = torch.tensor([len(reference_ids(n)) + 1 for n in index])
        batches.append(batch)
    return batches


def test_iw_nll_with_the_exact_posterior_is_the_true_nll() -> None:
    # With q(z|x) = p(z|x) every importance weight equals p(x): the estimate is exact for any K.
    model = LinearGaussianVae()
    true_nll = -model.log_marginal().mean().item()
    for k in (1, 7):
        results = evaluate_vae(model, make_batches(37, 8), num_importance_samples=k, importance_batch_size=3)
        assert results["nll"] == pytest.approx(true_nll, abs=1e-4)


def test_iw_nll_approaches_the_true_nll_as_k_grows() -> None:
    model = LinearGaussianVae(mean_shift=0.4, logvar_shift=0.7)  # a deliberately wrong posterior
    true_nll = -model.log_marginal().mean().item()
    batches = make_batches(37, 8)
    one = evaluate_vae(model, batches, num_importance_samples=1)["nll"]
    many = evaluate_vae(model, batches, num_importance_samples=2000, importance_batch_size=500)["nll"]
    # K = 1 is the negative ELBO: biased upwards by E[KL(q || p(z|x))] (~0.5 nats here).
    assert one > true_nll + 0.2
    assert many == pytest.approx(true_nll, abs=0.02)
    assert many < one


def test_default_decoder_calls_fit_a_logits_budget() -> None:
    model = LinearGaussianVae()
    model.config.vocab_size = 2**16  # 8 label positions: 2 MiB of float32 logits per sentence and sample
    evaluate_vae(model, make_batches(37, 8), num_importance_samples=10)
    # 32 MiB per call on a CPU: 2 samples for the batches of 8 sentences, 3 for the last batch of 5.
    expected = []
    for b, calls in [(8, (2, 2, 2, 2, 2))] * 4 + [(5, (3, 3, 3, 1))]:
        expected += [b] + [n * b for n in calls]
    assert model.log_likelihood_rows == expected


def test_samples_per_call_budgets() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    per_sample = 16 * 64 * 32000 * 4  # 125 MiB of logits: over the CPU budget, 16 of them fit 2 GiB
    assert budgeted_samples_per_call(100, 16, 64, 32000, cpu) == 1
    assert budgeted_samples_per_call(100, 16, 64, 32000, cuda) == (2 * 2**30) // per_sample == 16
    assert budgeted_samples_per_call(5, 2, 8, 100, cuda) == 5  # never more than asked for
    assert budgeted_samples_per_call(100, 16, 64, None, cpu) == 10  # unknown vocabulary: a fixed 10


def test_importance_samples_are_batched_not_looped() -> None:
    model = LinearGaussianVae()
    evaluate_vae(model, make_batches(37, 8), num_importance_samples=10, importance_batch_size=4)
    # Per batch: one call for the reconstruction sample, then ceil(10 / 4) = 3 calls of 4, 4, 2 samples x B rows.
    expected = []
    for b in (8, 8, 8, 8, 5):
        expected += [b, 4 * b, 4 * b, 2 * b]
    assert model.log_likelihood_rows == expected


def test_evaluate_vae_reports_every_metric() -> None:
    model = LinearGaussianVae()
    model.train()
    batches = make_batches(37, 8)
    results = evaluate_vae(model, batches, num_importance_samples=5, seed=11)
    assert model.training and all(model.saw_eval_mode)  # evaluated in eval mode, mode restored

    num_tokens = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert results["num_examples"] == 37 and results["num_tokens"] == num_tokens
    assert results["ppl"] == pytest.approx(math.exp(results["nll"] * 37 / num_tokens))
    assert "ppl_word" not in results and "bleu" not in results

    mu, logvar = model.posterior(torch.arange(37))
    closed_form_kl = kl_per_dimension(mu, logvar).sum().item()
    assert results["kl"] == pytest.approx(closed_form_kl, rel=1e-5)

    # MI over the whole set at once (not averaged per batch), with the seeded generator.
    expected_mi = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(11))
    assert results["mi"] == pytest.approx(expected_mi, abs=1e-6)
    assert results["au"] == 2  # the third latent has W's column 0: its posterior mean never moves

    assert results["mi_bound"] == pytest.approx(sum(model.bound_values) / len(model.bound_values))
    assert len(model.bound_values) == len(batches)

    # With the exact posterior, E_q[log p(x|z)] - KL = log p(x): one sample per sentence is close.
    assert results["elbo"] == pytest.approx(-(results["reconstruction"] + results["kl"]))
    assert results["elbo"] == pytest.approx(-results["nll"], abs=0.5)


class LinearGaussianVaeWithDecoder(LinearGaussianVae):
    """The same model with a decoder that can run alone: p(x) = N(x; b, sigma^2 I), what the decoder predicts
    without z."""

    def decoder_log_likelihood(self, decoder_input_ids, labels, decoder_attention_mask=None) -> torch.Tensor:
        return Normal(self.b, self.sigma).log_prob(self.X[decoder_input_ids[:, 0]]).sum(-1)


def test_evaluate_vae_reports_the_decoder_alone_and_the_mi_ceiling() -> None:
    """decoder_nll is the decoder alone on the same sentences and latent_gain how much lower the VAE's IW-NLL is;
    the MI estimate comes with its ceiling log N. A model without a decoder-alone path reports no baseline."""
    model = LinearGaussianVaeWithDecoder()
    results = evaluate_vae(model, make_batches(37, 8), num_importance_samples=50, seed=2)
    alone = -Normal(model.b, model.sigma).log_prob(model.X).sum(-1).mean().item()
    assert results["decoder_nll"] == pytest.approx(alone, rel=1e-6)
    assert results["latent_gain"] == pytest.approx(results["decoder_nll"] - results["nll"], rel=1e-6)
    assert results["latent_gain"] > 0  # z carries x here: the VAE is the better density model
    assert results["mi_ceiling"] == pytest.approx(math.log(37))
    assert results["mi"] <= results["mi_ceiling"]
    plain = evaluate_vae(LinearGaussianVae(), make_batches(37, 8), num_importance_samples=5, seed=2)
    assert "decoder_nll" not in plain and "latent_gain" not in plain and plain["mi_ceiling"] == results["mi_ceiling"]


def test_describe_mi_marks_an_estimate_at_its_ceiling_as_a_lower_bound() -> None:
    ceiling = math.log(200)
    assert describe_mi(3.2, ceiling) == "3.2 (ceiling 5.3)"
    assert describe_mi(ceiling - 0.05, ceiling) == "≥ 5.25 (ceiling 5.3, saturated)"
    assert describe_mi(ceiling - 0.2, ceiling).startswith("5.1 ")  # 0.2 nats below: a measurement
    assert describe_mi(float("nan"), ceiling) == "nan"


def test_evaluate_vae_is_reproducible_and_leaves_global_rng_alone() -> None:
    model = LinearGaussianVae(mean_shift=0.3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluate_vae(model, make_batches(20, 6), num_importance_samples=4, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_vae(model, make_batches(20, 6), num_importance_samples=4, seed=5) == first
    assert evaluate_vae(model, make_batches(20, 6), num_importance_samples=4, seed=6)["nll"] != first["nll"]


class SeedableBoundVae(LinearGaussianVae):
    def mi_lower_bound(self, pooler_output, z, generator=None) -> torch.Tensor:
        assert isinstance(generator, torch.Generator) and generator.device.type == "cpu"
        return torch.randperm(5, generator=generator)[0].float()


def test_critic_permutation_is_seeded_when_the_model_allows() -> None:
    model = SeedableBoundVae()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = evaluate_vae(model, make_batches(20, 6), num_importance_samples=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_vae(model, make_batches(20, 6), num_importance_samples=2, seed=3)["mi_bound"] == first["mi_bound"]


def test_per_word_perplexity() -> None:
    model = LinearGaussianVae()
    words = [len(reference_ids(n)) + 1 for n in range(37)]
    from_list = evaluate_vae(model, make_batches(37, 8), num_importance_samples=2, word_counts=words)
    assert from_list["num_words"] == sum(words)
    assert from_list["ppl_word"] == pytest.approx(math.exp(from_list["nll"] * 37 / sum(words)))
    from_batches = evaluate_vae(model, make_batches(37, 8, with_num_words=True), num_importance_samples=2)
    assert from_batches["ppl_word"] == pytest.approx(from_list["ppl_word"])
    total = evaluate_vae(model, make_batches(37, 8), num_importance_samples=2, word_counts=sum(words))
    assert total["ppl_word"] == pytest.approx(from_list["ppl_word"])
    with pytest.raises(ValueError, match="word_counts"):
        evaluate_vae(model, make_batches(37, 8), num_importance_samples=2, word_counts=words[:5])


def test_reconstruction_bleu() -> None:
    model = LinearGaussianVae(num_examples=12)
    processor = FakeProcessor(WordTokenizer(VOCAB))
    results = evaluate_vae(model, make_batches(12, 5), num_importance_samples=1, compute_bleu=True, processor=processor)
    references = [" ".join(VOCAB[i - 3] for i in reference_ids(n)) for n in range(12)]

    def dropping(examples: tuple[int, ...]) -> list[str]:
        return [" ".join(r.split()[:-1]) if n in examples else r for n, r in enumerate(references)]

    # BLEU under the reconstruction decoding, and plain greedy's beside it, each from its own reconstructions.
    assert results["bleu"] == pytest.approx(sacrebleu.corpus_bleu(dropping((0,)), [references]).score)
    assert results["bleu_greedy"] == pytest.approx(sacrebleu.corpus_bleu(dropping((0, 1)), [references]).score)
    assert 50 < results["bleu_greedy"] < results["bleu"] < 100
    beams = {key: value for key, value in RECONSTRUCTION_DECODING.items() if key != "do_sample"}
    assert beams and model.decodings == [beams, {}] * 3  # 3 batches: both decodings each
    # The study's plain greedy BLEU: one decoding, no bleu_greedy.
    model.decodings.clear()
    greedy = evaluate_vae(
        model,
        make_batches(12, 5),
        num_importance_samples=1,
        compute_bleu=True,
        processor=processor,
        bleu_decoding=GREEDY_DECODING,
    )
    assert greedy["bleu"] == pytest.approx(results["bleu_greedy"]) and "bleu_greedy" not in greedy
    assert model.decodings == [{}] * 3
    with pytest.raises(ValueError, match="decoder_tokenizer"):
        evaluate_vae(model, make_batches(12, 5), num_importance_samples=1, compute_bleu=True)


def test_max_batches_and_ragged_single_example_batch() -> None:
    model = LinearGaussianVae()
    results = evaluate_vae(model, make_batches(37, 8), num_importance_samples=2, max_batches=2)
    assert results["num_examples"] == 16
    # A last batch of one has no marginal pair for the critic: it is left out of the bound's average.
    model = LinearGaussianVae(num_examples=9)
    results = evaluate_vae(model, make_batches(9, 8), num_importance_samples=2)
    assert results["num_examples"] == 9 and len(model.bound_values) == 1


def test_evaluate_vae_argument_errors() -> None:
    model = LinearGaussianVae()
    with pytest.raises(ValueError, match="num_importance_samples"):
        evaluate_vae(model, make_batches(8, 8), num_importance_samples=0)
    batch = make_batches(8, 8)[0]
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        evaluate_vae(model, [batch])
    with pytest.raises(ValueError, match="no batches"):
        evaluate_vae(model, [])


# ---------------------------------------------------------------------------------------------
# The metric module
# ---------------------------------------------------------------------------------------------
PREDICTIONS = ["the cat sat on the mat", "a dog runs in the park today", "hello there"]
REFERENCES = ["the cat sat on a mat", "a dog runs in the park", "hello world , friend"]


def test_reconstruction_bleu_loads_offline_and_matches_sacrebleu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "reconstruction_bleu" in available_metrics()
    metric = load_metric("reconstruction_bleu")
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    assert result["score"] == pytest.approx(expected.score)
    assert result["precisions"] == pytest.approx(expected.precisions)
    assert result["brevity_penalty"] == pytest.approx(expected.bp)
    assert (result["sys_len"], result["ref_len"]) == (expected.sys_len, expected.ref_len)


def test_reconstruction_bleu_by_folder_path_and_multiple_references() -> None:
    import evaluate

    path = metric_path("reconstruction_bleu")
    assert path.endswith(os.path.join("reconstruction_bleu", "reconstruction_bleu.py")) and os.path.isfile(path)
    metric = evaluate.load(os.path.dirname(path))
    second = ["the cat is on the mat", "a dog runs in a park today", "hello there"]
    result = metric.compute(
        predictions=PREDICTIONS, references=[[a, b] for a, b in zip(REFERENCES, second, strict=True)]
    )
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second]).score)
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("rouge")


# ---------------------------------------------------------------------------------------------
# The real model, tiny
# ---------------------------------------------------------------------------------------------
def test_evaluate_vae_on_a_tiny_mine_vae_model() -> None:
    import tiny  # tests/tiny.py: the tiny BERT + GPT-2 the other tests build

    model = tiny.model("gpt2", latent_size=8)
    model.train()
    processor = tiny.processor()
    texts = tiny.sentences(10)
    batches = [processor(texts[i : i + 4]) for i in range(0, 10, 4)]  # 4, 4, 2
    results = evaluate_vae(
        model,
        batches,
        num_importance_samples=6,
        importance_batch_size=4,
        word_counts=count_words(texts),
        compute_bleu=True,
        processor=processor,
        max_new_tokens=8,
    )
    for key in ("nll", "ppl", "ppl_word", "kl", "mi", "au", "mi_bound", "reconstruction", "elbo", "bleu"):
        assert math.isfinite(results[key]), key
    assert results["num_examples"] == 10
    assert results["ppl"] > 1 and results["kl"] >= 0 and 0 <= results["au"] <= 8
    assert 0 <= results["bleu"] <= 100
    # The tiny decoder tokenizer is word-level, so tokens are exactly words + EOS: both perplexities agree.
    assert results["num_words"] == results["num_tokens"]
    assert results["ppl_word"] == pytest.approx(results["ppl"])

    # The batched IW-NLL equals a per-sample loop over the same latents (the repeat is sample-major).
    assert model.training  # evaluate_vae switched to eval mode and back
    model.eval()  # no dropout, so the two ways of running the decoder can agree
    batch = batches[0]
    with torch.no_grad():
        posterior = model.encode(batch["input_ids"], batch["attention_mask"])
        z = posterior.mu + torch.exp(0.5 * posterior.logvar) * torch.randn(3, *posterior.mu.shape)
        looped = torch.stack(
            [
                model.log_likelihood(z[k], batch["decoder_input_ids"], batch["labels"], batch["decoder_attention_mask"])
                for k in range(3)
            ]
        )
        batched = model.log_likelihood(
            z.reshape(-1, z.shape[-1]),
            batch["decoder_input_ids"].repeat(3, 1),
            batch["labels"].repeat(3, 1),
            batch["decoder_attention_mask"].repeat(3, 1),
        ).view(3, -1)
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-4)
