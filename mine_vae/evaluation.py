r"""The numbers text-VAE papers report, usable with or without a ``Trainer``.

Notation: an evaluation set of ``N`` sentences ``x``, a diagonal Gaussian posterior ``q(z|x) = N(mu(x),
diag(exp(logvar(x))))`` over an ``L``-dimensional latent, the prior ``p(z) = N(0, I)`` and the decoder ``p(x|z)``. All
log-probabilities are natural logs (nats).

Metrics returned by :func:`evaluate_vae` (keys of its dict):

- ``nll``: importance-weighted negative log-likelihood per sentence (Burda et al. 2016, as in Bowman et al. 2016 / He
  et al. 2019 / Li et al. 2020), with ``K`` samples ``z_k ~ q(z|x)``: ``-log p(x) ~= -[logsumexp_k(log p(x|z_k) + log
  p(z_k) - log q(z_k|x)) - log K]``, averaged over sentences. It is an upper bound on the true NLL that tightens as
  ``K`` grows; with ``K = 1`` it is the negative single-sample ELBO.
- ``decoder_nll`` (when the model has ``decoder_log_likelihood``): ``-log p(x)`` under the decoder alone, without z,
  on the same tokens; ``latent_gain = decoder_nll - nll`` (> 0: the VAE is the better language model).
- ``ppl``: perplexity per decoder token, ``exp(sum_x nll(x) / #label tokens)``, where the label tokens are the
  positions of ``labels`` that are not ``-100`` (the end-of-sentence token included, any start token excluded since it
  is never predicted).
- ``ppl_word`` (only when word counts are known): ``exp(sum_x nll(x) / #words)``. Following He et al. 2019, word
  counts should include one end-of-sentence token per sentence (:func:`count_words` does this).
- ``kl``: ``KL(q(z|x) || p(z))`` in closed form, summed over latent dimensions and averaged over sentences.
- ``mi``: the mutual information ``I_q(x; z)`` under the aggregate posterior, estimated as in He et al. 2019 ("Lagging
  inference networks", ``calc_mi``): ``E_x E_{q(z|x)}[log q(z|x)] - E_x E_{q(z|x)}[log q(z)]`` with ``q(z) ~= (1/N)
  sum_j q(z|x_j)`` over the *whole* evaluation set (He et al. average per-batch estimates instead, which caps each
  estimate at ``log(batch size)``). Both terms are averaged over the same posterior samples (He et al. take the first
  in closed form; same expectation, more variance: see :func:`mutual_information`).
- ``mi_ceiling``: ``log N``, the most the ``mi`` estimate over ``N`` sentences can read.
- ``au``: the number of active units (Burda et al. 2016): latent dimensions whose posterior mean varies over the data,
  ``Var_x(E_{q(z|x)}[z_d]) > threshold`` (0.01), with the unbiased variance as in He et al. 2019.
- ``mi_bound``: the critic's lower bound on the MI (``model.mi_lower_bound``, Qian & Cheung 2019, on one posterior
  sample per sentence), averaged over batches.
- ``reconstruction``: ``-log p(x|z)`` per sentence for one sample ``z ~ q(z|x)``, averaged over sentences; ``elbo =
  -(reconstruction + kl)``.
- ``bleu`` (only with ``compute_bleu=True``): corpus BLEU (sacrebleu, 0-100) of reconstructions decoded from the
  posterior mean against the input sentences, decoded with ``bleu_decoding`` (default
  :data:`RECONSTRUCTION_DECODING`: beams of 4, no repeated 4-gram of tokens).
- ``bleu_greedy`` (with ``compute_bleu=True`` when ``bleu_decoding`` is not plain greedy): the same BLEU with plain
  greedy decoding, which loops on the decoder's commonest words; the gap between the two is the decoding's share.
- ``num_examples``, ``num_tokens``, ``num_words``: the counts behind the averages.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from .estimators import (
    ActiveUnits,
    active_units,
    describe_mi,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    kl_per_dimension,
    mutual_information,
    standard_normal_log_density,
)
from .modeling_mine_vae import MineVaePosterior

# How reconstructions are decoded, for BLEU and for every reconstruction a report prints. Plain greedy decoding from a
# frozen pretrained decoder falls into loops of its commonest words ("the <unk> <unk> <unk> ..."), which hide what z
# carries: on the default preset's main-job model, BLEU 6.5 greedy, 8.9 without a repeated 4-gram and 10.4 with beams
# of 4 as well (docs/benchmarks.md). 4-grams of tokens, not 3: PTB's "<unk>" is three SmolLM2 tokens, and blocking
# 3-grams mangled its second occurrence ("<unkunk>").
RECONSTRUCTION_DECODING: Mapping[str, Any] = MappingProxyType(
    {"do_sample": False, "num_beams": 4, "no_repeat_ngram_size": 4}
)
RECONSTRUCTION_DECODING_TEXT = "beam search over 4, no repeated 4-gram"
# Plain greedy decoding: `bleu_greedy`, and the study's BLEU (its tables compare methods under one decoding).
GREEDY_DECODING: Mapping[str, Any] = MappingProxyType({"do_sample": False})


# -------------------------------------------------------------------------------------------
# The aggregate posterior's moments; word counts
# -------------------------------------------------------------------------------------------
class LatentMoments(NamedTuple):
    """Result of :func:`aggregate_posterior_moments`: per-dimension ``mean`` and ``std`` ``(L,)`` and the
    ``num_examples`` they were measured on."""

    mean: torch.Tensor
    std: torch.Tensor
    num_examples: int


@torch.no_grad()
def aggregate_posterior_moments(
    model: Any,
    dataloader: Iterable[Mapping[str, Any]],
    max_examples: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LatentMoments:
    """Mean and standard deviation, per latent dimension, of the aggregate posterior
    ``q(z) = (1/N) sum_x q(z|x)`` over the dataloader's examples: ``mean = E_x[mu]`` and
    ``std^2 = Var_x[mu] + E_x[sigma^2]`` (the law of total variance). What
    ``MineVaeModel.standardize_latent`` takes.

    Args:
        model: exposes ``encode(input_ids, attention_mask[, token_type_ids]) -> posterior``.
        dataloader: batches with ``input_ids`` and ``attention_mask`` (``token_type_ids`` optional).
        max_examples: stop after this many examples (per process); None reads the whole dataloader.
        reduce: sums a tensor over processes (``accelerator.reduce(t, "sum")``) so that every process
            gets the same moments; None on one process.
    """
    device = _model_device(model)
    seen, sums = 0, None  # sums: (3, L) of mu, mu^2 and sigma^2 over the examples seen
    with _evaluation_mode(model):
        for batch in dataloader:
            if max_examples is not None and seen >= max_examples:
                break
            keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if batch.get(key) is not None]
            left = None if max_examples is None else max_examples - seen
            posterior = model.encode(**{key: batch[key][:left].to(device) for key in keys})
            mu, var = posterior.mu.double(), posterior.logvar.double().exp()
            batch_sums = torch.stack([mu.sum(0), (mu * mu).sum(0), var.sum(0)])
            sums = batch_sums if sums is None else sums + batch_sums
            seen += mu.shape[0]
    if sums is None:
        raise ValueError("aggregate_posterior_moments got no examples; give a dataloader with at least 2.")
    counted = torch.tensor(float(seen), dtype=torch.float64, device=sums.device)
    if reduce is not None:
        sums, counted = reduce(sums), reduce(counted)
    count = float(counted)
    if count < 2:
        raise ValueError(f"aggregate_posterior_moments needs at least 2 examples; got {int(count)}.")
    mean = sums[0] / count
    # The unbiased variance of the means, as active_units takes it, plus the mean posterior variance.
    variance = (sums[1] - count * mean * mean).clamp(min=0) / (count - 1) + sums[2] / count
    return LatentMoments(mean=mean.float(), std=variance.sqrt().float(), num_examples=int(count))


def count_words(texts: Iterable[str], add_eos: bool = True) -> list[int]:
    """Whitespace word counts per sentence, plus one for the end-of-sentence when ``add_eos``.

    The ``+1`` follows He et al. 2019 / Bowman et al. 2016, whose per-word perplexity counts the
    end-of-sentence token as a word.
    """
    return [len(text.split()) + int(add_eos) for text in texts]


# -------------------------------------------------------------------------------------------
# Whole-model evaluation
# -------------------------------------------------------------------------------------------
_TENSOR_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "labels",
)


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _accepts_keyword(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


# Logits a decoder call may hold at once in automatic chunking. On a CPU the decoder is compute-bound and batching
# samples gains nothing once a call is a few hundred rows; larger logits only fall out of the caches (measured on a
# 2-core AMD EPYC: 24 MiB per call was fastest, 488 MiB 1.6x slower). On an accelerator large calls are what pay.
_CPU_LOGITS_BUDGET = 32 * 2**20
_ACCELERATOR_LOGITS_BUDGET = 2 * 2**30


def _vocab_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    decoder = getattr(config, "decoder", None)
    return getattr(decoder, "vocab_size", None) or getattr(config, "vocab_size", None)


def budgeted_samples_per_call(
    num_samples: int, batch_size: int, length: int, vocab_size: int | None, device: torch.device
) -> int:
    """Importance samples per decoder call such that the call's float32 logits,
    ``samples * batch_size * length * vocab_size * 4`` bytes, fit the device's budget (at least one sample)."""
    if vocab_size is None:
        return min(num_samples, 10)
    budget = _CPU_LOGITS_BUDGET if device.type == "cpu" else _ACCELERATOR_LOGITS_BUDGET
    per_sample = batch_size * length * vocab_size * 4
    return max(1, min(num_samples, budget // max(per_sample, 1)))


def _repeat_rows(tensor: torch.Tensor | None, times: int) -> torch.Tensor | None:
    """``(B, ...) -> (times * B, ...)``, sample-major: row ``s * B + b`` is ``tensor[b]``."""
    if tensor is None:
        return None
    return tensor.repeat(times, *([1] * (tensor.dim() - 1)))


@torch.no_grad()
def importance_weighted_log_marginal(
    model: Any,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    labels: torch.Tensor,
    decoder_attention_mask: torch.Tensor | None = None,
    num_samples: int = 100,
    samples_per_call: int | None = None,
    generator: torch.Generator | None = None,
    latent_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The importance-weighted estimate of ``log p(x)`` for a batch, from ``num_samples`` draws ``z_k ~ q(z|x)``.

    The samples go through the decoder in chunks, each chunk ONE ``model.log_likelihood`` call over the batch
    repeated sample-major (row ``s * B + b`` holds sample ``s`` of example ``b``), not one call per sample.

    Args:
        model: exposes ``log_likelihood(latent, decoder_input_ids, labels, decoder_attention_mask) -> (rows,)``.
        mu, logvar: the posterior, ``(B, L)``, float32 for the densities.
        decoder_input_ids, labels, decoder_attention_mask: ``(B, T)``, as ``log_likelihood`` takes them.
        num_samples: ``K``.
        samples_per_call: samples per decoder call; ``None`` sizes calls to a logits budget
            (:func:`budgeted_samples_per_call`).
        generator: draws the samples (the global RNG when ``None``).
        latent_dtype: dtype of the latents given to the decoder (default: ``mu``'s).
    Returns:
        ``(B,)``: ``log p(x)`` estimates in nats, float32.
    """
    batch_size, latent_size = mu.shape
    posterior = MineVaePosterior(mu=mu, logvar=logvar)
    per_call = samples_per_call or budgeted_samples_per_call(
        num_samples, batch_size, labels.shape[1], _vocab_size(model), mu.device
    )
    log_px, log_pz, log_qz = [], [], []
    for begin in range(0, num_samples, per_call):
        num = min(per_call, num_samples - begin)
        z = posterior.sample(num, generator)  # (num, B, L)
        rows = model.log_likelihood(
            z.reshape(num * batch_size, latent_size).to(latent_dtype or mu.dtype),
            _repeat_rows(decoder_input_ids, num),
            _repeat_rows(labels, num),
            decoder_attention_mask=_repeat_rows(decoder_attention_mask, num),
        )
        log_px.append(rows.float().view(num, batch_size))
        log_pz.append(standard_normal_log_density(z))  # (num, B)
        log_qz.append(gaussian_log_density(z, mu, logvar))  # (num, B)
    return importance_weighted_log_likelihood(torch.cat(log_px), torch.cat(log_pz), torch.cat(log_qz))


@torch.no_grad()
def evaluate_vae(
    model: Any,
    dataloader: Iterable[Mapping[str, Any]],
    num_importance_samples: int = 100,
    importance_batch_size: int | None = None,
    word_counts: Sequence[int] | int | None = None,
    compute_bleu: bool = False,
    processor: Any = None,
    max_new_tokens: int | None = None,
    mi_num_samples: int = 1,
    active_units_threshold: float = 0.01,
    seed: int | None = 0,
    max_batches: int | None = None,
    bleu_decoding: Mapping[str, Any] = RECONSTRUCTION_DECODING,
) -> dict[str, float]:
    """Evaluate a text VAE over ``dataloader``; see the module docstring for each metric.

    Args:
        model: exposes ``encode(input_ids, attention_mask[, token_type_ids]) -> posterior`` (``.mu``,
            ``.logvar`` ``(B, L)`` and ``.pooler_output`` ``(B, H)``),
            ``log_likelihood(latent, decoder_input_ids, labels, decoder_attention_mask) -> (B,)``,
            ``mi_lower_bound(pooler_output, z) -> scalar`` (batches of one are skipped) and, for BLEU,
            ``generate(input_ids=, attention_mask=, max_new_tokens=, **bleu_decoding)``.
        dataloader: batches (mappings) with ``input_ids``, ``attention_mask``,
            ``decoder_input_ids``, ``decoder_attention_mask`` (optional) and ``labels`` (``-100``
            on ignored positions). A batch may also carry ``num_words`` ``(B,)`` (word counts) and
            ``texts`` (list of str, BLEU references).
        num_importance_samples: ``K`` for the importance-weighted NLL.
        importance_batch_size: samples per decoder call: each call runs
            ``importance_batch_size * B`` rows (the batch repeated), not one call per sample. The
            logits dominate memory: about ``rows * length * vocab * 4`` bytes, twice over. ``None``
            (default) sizes the calls per batch to a logits budget (:func:`budgeted_samples_per_call`: 32 MiB
            on a CPU, 2 GiB on an accelerator).
        word_counts: words per sentence in dataloader order (or their total) for ``ppl_word``;
            include one per sentence for the end-of-sentence (:func:`count_words`).
        compute_bleu: also compute reconstruction BLEU (needs ``processor.decoder_tokenizer``).
        processor: object with ``decoder_tokenizer`` (used only for BLEU).
        max_new_tokens: generation length for BLEU; default: the batch's label length + 8.
        mi_num_samples: ``z`` draws per example for the MI estimate.
        active_units_threshold: variance threshold for active units.
        seed: seeds the latent samples with local generators, leaving the global RNG alone (the
            critic's permutation too when ``mi_lower_bound`` takes a ``generator``; otherwise it
            draws from the global RNG); ``None`` draws everything from the global RNG.
        max_batches: stop after this many batches (quick evaluations during training).
        bleu_decoding: ``generate`` options of BLEU's reconstructions (default :data:`RECONSTRUCTION_DECODING`);
            unless it is :data:`GREEDY_DECODING`, plain greedy reconstructions give ``bleu_greedy`` as well.
    Returns:
        ``dict[str, float]`` with ``nll``, ``decoder_nll`` and ``latent_gain`` (when the model has
        ``decoder_log_likelihood``: -log p(x) under the decoder alone, and how much lower the VAE's IW-NLL is),
        ``ppl``, ``kl``, ``mi`` with its ceiling ``mi_ceiling`` (log N), ``au``, ``mi_bound``,
        ``reconstruction``, ``elbo``, ``num_examples``, ``num_tokens`` and, when available,
        ``ppl_word``, ``num_words``, ``bleu``, ``bleu_greedy``.
    """
    decoder_tokenizer = _check_arguments(num_importance_samples, importance_batch_size, compute_bleu, processor)
    device = _model_device(model)
    sampling = _Sampling(
        generator=torch.Generator(device=device).manual_seed(seed) if seed is not None else None,
        # The critic's marginal pairs come from a random permutation; seed it too when the model lets us
        # (a CPU generator: permutations are drawn on the CPU).
        bound_kwargs=(
            {"generator": torch.Generator().manual_seed(seed)}
            if seed is not None and _accepts_keyword(model.mi_lower_bound, "generator")
            else {}
        ),
        num_importance_samples=num_importance_samples,
        importance_batch_size=importance_batch_size,
    )
    # BLEU's decodings by name: the chosen one, and plain greedy beside it when they differ.
    decodings = {"bleu": dict(bleu_decoding)}
    if dict(bleu_decoding) != dict(GREEDY_DECODING):
        decodings["bleu_greedy"] = dict(GREEDY_DECODING)
    totals = _Totals()
    with _evaluation_mode(model):
        for batch_index, batch in enumerate(dataloader):
            if max_batches is not None and batch_index >= max_batches:
                break
            inputs = _batch_inputs(batch, device)
            _evaluate_batch(model, batch, inputs, sampling, totals)
            if compute_bleu:
                _reconstruct(model, batch, inputs, decoder_tokenizer, max_new_tokens, decodings, totals)
    if totals.num_examples == 0:
        raise ValueError("evaluate_vae: the dataloader yielded no batches.")

    results = _averages(totals)
    results.update(_latent_statistics(totals, mi_num_samples, active_units_threshold, seed))
    results.update(_word_perplexity(totals, word_counts))
    if compute_bleu:
        from .metrics import load_metric

        metric = load_metric("reconstruction_bleu")
        for name, predictions in totals.predictions.items():
            results[name] = float(metric.compute(predictions=predictions, references=totals.references)["score"])
    return results


# The steps of `evaluate_vae`: one pass over the batches adds each batch's terms to `_Totals` (the reconstruction and
# the critic's bound on one posterior sample, then the IW-NLL, then BLEU's reconstructions); the results are
# then the averages, the statistics of the whole set's posteriors (MI, active units) and the word perplexity.
@dataclass
class _Sampling:
    """How `evaluate_vae` draws: the latent samples' generator (None: the global RNG), the critic's pairing
    generator when the model takes one, and the importance samples per sentence and per decoder call."""

    generator: torch.Generator | None
    bound_kwargs: dict[str, Any]
    num_importance_samples: int
    importance_batch_size: int | None


@dataclass
class _Totals:
    """Sums over the sentences evaluated so far, and what the whole-set statistics need."""

    nll: float = 0.0  # sum over sentences of -log p(x) (IW estimate)
    decoder_nll: float = 0.0  # sum over sentences of -log p(x) under the decoder alone (no z)
    decoder_alone: bool = True  # every batch had the decoder-alone term (the model has `decoder_log_likelihood`)
    kl: float = 0.0
    reconstruction: float = 0.0
    num_examples: int = 0
    num_tokens: int = 0
    batch_num_words: int = 0
    every_batch_counted_words: bool = True
    bounds: list[float] = field(default_factory=list)
    mu: list[torch.Tensor] = field(default_factory=list)
    logvar: list[torch.Tensor] = field(default_factory=list)
    predictions: dict[str, list[str]] = field(default_factory=dict)  # BLEU's reconstructions, by decoding's name
    references: list[str] = field(default_factory=list)


def _check_arguments(
    num_importance_samples: int, importance_batch_size: int | None, compute_bleu: bool, processor: Any
) -> Any:
    """Refuse impossible settings before any batch runs; returns the decoder tokenizer (BLEU's decoding)."""
    if num_importance_samples < 1 or (importance_batch_size is not None and importance_batch_size < 1):
        raise ValueError(
            "num_importance_samples and importance_batch_size must be >= 1; "
            f"got {num_importance_samples} and {importance_batch_size}."
        )
    decoder_tokenizer = getattr(processor, "decoder_tokenizer", None)
    if compute_bleu and decoder_tokenizer is None:
        raise ValueError("compute_bleu=True needs a processor with a decoder_tokenizer to decode reconstructions.")
    return decoder_tokenizer


@contextmanager
def _evaluation_mode(model: Any) -> Iterator[None]:
    """The model in eval mode (and its FSDP2 root gathered) for the pass; its training flag is restored after."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    sharded = _is_fsdp2_module(model)
    if sharded:
        # FSDP2 gathers the root's own parameters (the heads, the encoder's embeddings) in hooks that only `forward`
        # fires, and this evaluation calls other methods; sub-modules sharded on their own (the transformer layers)
        # still gather in their own forward.
        model.unshard()
    try:
        yield
    finally:
        if sharded:
            model.reshard()
        if hasattr(model, "train"):
            model.train(was_training)


def _batch_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's model inputs on the model's device; a batch without one the metrics need is refused."""
    inputs = {key: batch[key].to(device) for key in _TENSOR_KEYS if key in batch and batch[key] is not None}
    for key in ("input_ids", "attention_mask", "decoder_input_ids", "labels"):
        if key not in inputs:
            raise ValueError(f"evaluate_vae: every batch needs {key!r}; got keys {sorted(batch.keys())}.")
    return inputs


def _evaluate_batch(
    model: Any, batch: Mapping[str, Any], inputs: Mapping[str, torch.Tensor], sampling: _Sampling, totals: _Totals
) -> None:
    """Add one batch's counts, KL, reconstruction, bound and IW-NLL to `totals`, and keep its posteriors."""
    decoder_input_ids, labels = inputs["decoder_input_ids"], inputs["labels"]
    decoder_attention_mask = inputs.get("decoder_attention_mask")
    encode_kwargs = {"token_type_ids": inputs["token_type_ids"]} if "token_type_ids" in inputs else {}
    posterior = model.encode(inputs["input_ids"], inputs["attention_mask"], **encode_kwargs)
    latent_dtype = posterior.mu.dtype
    # Metrics in float32 even under bf16/fp16 weights: log-weights are hundreds of nats.
    posterior = MineVaePosterior(
        mu=posterior.mu.float(), logvar=posterior.logvar.float(), pooler_output=posterior.pooler_output
    )
    mu, logvar = posterior.mu, posterior.logvar
    batch_size = mu.shape[0]
    totals.num_examples += batch_size
    totals.num_tokens += int((labels != -100).sum())
    if "num_words" in batch and batch["num_words"] is not None:
        totals.batch_num_words += int(torch.as_tensor(batch["num_words"]).sum())
    else:
        totals.every_batch_counted_words = False
    totals.mu.append(mu.cpu())
    totals.logvar.append(logvar.cpu())
    totals.kl += float(posterior.kl_per_dimension().sum()) * batch_size

    # One posterior sample for the reconstruction term and the critic's bound (drawn before the importance samples:
    # the generator's order fixes which z each metric sees).
    z = posterior.sample(generator=sampling.generator)
    log_px = model.log_likelihood(
        z.to(latent_dtype), decoder_input_ids, labels, decoder_attention_mask=decoder_attention_mask
    )
    totals.reconstruction -= float(log_px.float().sum())
    if batch_size >= 2:
        # The bound pairs each x with another example's z for its marginal term: a batch of
        # one (a ragged last batch) has no such pair and is left out of the average.
        bound = model.mi_lower_bound(posterior.pooler_output, z.to(latent_dtype), **sampling.bound_kwargs)
        totals.bounds.append(float(bound))

    log_px_iw = importance_weighted_log_marginal(
        model,
        mu,
        logvar,
        decoder_input_ids,
        labels,
        decoder_attention_mask,
        num_samples=sampling.num_importance_samples,
        samples_per_call=sampling.importance_batch_size,
        generator=sampling.generator,
        latent_dtype=latent_dtype,
    )
    totals.nll -= float(log_px_iw.sum())
    if totals.decoder_alone and hasattr(model, "decoder_log_likelihood"):
        alone = model.decoder_log_likelihood(decoder_input_ids, labels, decoder_attention_mask=decoder_attention_mask)
        totals.decoder_nll -= float(alone.float().sum())
    else:
        totals.decoder_alone = False


def _reconstruct(
    model: Any,
    batch: Mapping[str, Any],
    inputs: Mapping[str, torch.Tensor],
    decoder_tokenizer: Any,
    max_new_tokens: int | None,
    decodings: Mapping[str, Mapping[str, Any]],
    totals: _Totals,
) -> None:
    """BLEU's material: reconstructions from the posterior mean under each decoding, and the sentences they should
    reproduce."""
    labels = inputs["labels"]
    new_tokens = max_new_tokens if max_new_tokens is not None else labels.shape[1] + 8
    for name, decoding in decodings.items():
        generated = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=new_tokens,
            **decoding,
        )
        totals.predictions.setdefault(name, []).extend(
            text.strip() for text in decoder_tokenizer.batch_decode(generated, skip_special_tokens=True)
        )
    totals.references.extend(_references(batch, labels, decoder_tokenizer))


def _averages(totals: _Totals) -> dict[str, float]:
    """The per-sentence averages of the summed terms, the token perplexity and the counts."""
    num_examples, num_tokens = totals.num_examples, totals.num_tokens
    baseline = {}
    if totals.decoder_alone:
        # The VAE against the decoder it wraps, on the same tokens: a text VAE is at least as good a language model
        # as its decoder alone when z is worth its KL; latent_gain > 0 says it is.
        baseline = {
            "decoder_nll": totals.decoder_nll / num_examples,
            "latent_gain": (totals.decoder_nll - totals.nll) / num_examples,
        }
    return {
        "nll": totals.nll / num_examples,
        **baseline,
        "ppl": _exp(totals.nll / num_tokens) if num_tokens > 0 else float("nan"),
        "kl": totals.kl / num_examples,
        "reconstruction": totals.reconstruction / num_examples,
        "elbo": -(totals.reconstruction + totals.kl) / num_examples,
        "mi_bound": sum(totals.bounds) / len(totals.bounds) if totals.bounds else float("nan"),
        "num_examples": float(num_examples),
        "num_tokens": float(num_tokens),
    }


def _latent_statistics(totals: _Totals, mi_num_samples: int, threshold: float, seed: int | None) -> dict[str, float]:
    """MI and active units over the whole set's posteriors (both need every sentence at once, not batch by batch)."""
    if totals.num_examples < 2:
        # stacklevel 3: the warning points at evaluate_vae's caller.
        warnings.warn("evaluate_vae: MI and active units need at least 2 examples; reporting NaN.", stacklevel=3)
        return {"mi": float("nan"), "mi_ceiling": float("nan"), "au": float("nan")}
    mu, logvar = torch.cat(totals.mu), torch.cat(totals.logvar)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return {
        "mi": mutual_information(mu, logvar, num_samples=mi_num_samples, generator=generator),
        # The aggregate-posterior estimate over N posteriors cannot exceed log N: near it, MI is saturated, not
        # measured (every z is told apart from the other N - 1, whatever more it carries).
        "mi_ceiling": math.log(totals.num_examples),
        "au": float(active_units(mu, threshold=threshold).count),
    }


def _word_perplexity(totals: _Totals, word_counts: Sequence[int] | int | None) -> dict[str, float]:
    """`ppl_word` and `num_words`, from `word_counts` or else the batches' own counts (when every batch had them)."""
    num_words = _total_words(word_counts, totals.num_examples)
    if num_words is None and totals.every_batch_counted_words:
        num_words = totals.batch_num_words
    if num_words is None or num_words <= 0:
        return {}
    return {"ppl_word": _exp(totals.nll / num_words), "num_words": float(num_words)}


def _is_fsdp2_module(model: Any) -> bool:
    """Whether `model` was sharded with FSDP2 (`fully_shard`)."""
    if not torch.distributed.is_available():  # builds without distributed support have no FSDP
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _exp(value: float) -> float:
    """``math.exp`` that saturates to ``inf`` (an untrained model's perplexity can overflow)."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _total_words(word_counts: Sequence[int] | int | None, num_examples: int) -> int | None:
    if word_counts is None:
        return None
    if isinstance(word_counts, int):
        return word_counts
    counts = list(word_counts)
    if len(counts) < num_examples:
        raise ValueError(
            f"word_counts has {len(counts)} entries but the dataloader yielded {num_examples} examples; "
            "pass one count per example (in dataloader order) or the total as an int."
        )
    # More counts than examples only happens with max_batches: the first ones were evaluated.
    return int(sum(counts[:num_examples]))


def _references(batch: Mapping[str, Any], labels: torch.Tensor, decoder_tokenizer: Any) -> list[str]:
    """The input sentences for BLEU: ``batch["texts"]`` when the collator keeps them, else the labels decoded."""
    texts = batch.get("texts") if hasattr(batch, "get") else None
    if isinstance(texts, (list, tuple)) and len(texts) == labels.shape[0] and all(isinstance(t, str) for t in texts):
        return [t.strip() for t in texts]
    ids = [row[row != -100].tolist() for row in labels.cpu()]
    return [text.strip() for text in decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)]


__all__ = [
    "ActiveUnits",
    "active_units",
    "count_words",
    "evaluate_vae",
    "gaussian_log_density",
    "importance_weighted_log_likelihood",
    "importance_weighted_log_marginal",
    "kl_per_dimension",
    "mutual_information",
    "budgeted_samples_per_call",
    "describe_mi",
    "standard_normal_log_density",
]
