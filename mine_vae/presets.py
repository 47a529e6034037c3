"""Named presets for the `mine-vae` command line: a model, its tokenizers, training defaults and data settings.

A preset is a starting point, not a cage: every value it sets is only a default that a flag or a config file
overrides (`mine-vae train --preset small --latent_size 64 --max_steps 5000`).

* ``minilm-smollm2`` (the default): the pretrained pair shipped in PyPI packages (all-MiniLM-L6-v2 encoder,
  SmolLM2-135M decoder, see ``mine_vae.assets``), both frozen while z's heads and the critic train: ``mine-vae train``
  with no other argument finishes on 2 CPU cores in about 15-17 minutes, installs, final evaluation and samples
  included. On a GPU, raise the steps and unfreeze the decoder.
* ``small``: a word-level BERT encoder + GPT-2 decoder trained from scratch on the Penn Treebank in about a quarter
  of an hour on 2 CPU cores (no asset packages needed).
* ``tiny``: the same recipe shrunk until training takes seconds (tests, smoke runs).

Imports flow one way: this module uses ``data``, ``assets``, the model and the processor, never the CLI.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .configuration_mine_vae import MineVaeConfig
from .modeling_mine_vae import MineVaeModel
from .processing_mine_vae import MineVaeProcessor, processor_lengths

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "minilm-smollm2"


def _frozen(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Preset:
    """
    A named recipe. Every mapping below holds defaults that the CLI's flags and config files override.

    Args:
        name: what `--preset` takes.
        description: one line for `--help` and error messages.
        model: `MineVaeConfig` keyword arguments (latent size, ξ, β and λ peaks, free bits, pooling, ...).
        training: `MineVaeTrainingArguments` keyword arguments (steps, batch size, schedules, critic warm-up, ...).
        data: the CLI's data settings (`max_length`, `overlength`, `vocab_size`, `max_eval_examples`, ...).
        encoder_config, decoder_config: for a model trained from scratch, `BertConfig` / `GPT2Config` keyword
            arguments (the vocabulary size comes from the word tokenizers built on the training text).
        encoder, decoder: for a pretrained pair, a folder or Hub id, or a function returning one (so that optional
            packages are only imported when the preset is used).
    """

    name: str
    description: str
    model: Mapping[str, Any] = field(default_factory=_frozen)
    training: Mapping[str, Any] = field(default_factory=_frozen)
    data: Mapping[str, Any] = field(default_factory=_frozen)
    encoder_config: Mapping[str, Any] | None = None
    decoder_config: Mapping[str, Any] | None = None
    encoder: str | Callable[[], str] | None = None
    decoder: str | Callable[[], str] | None = None

    @property
    def from_scratch(self) -> bool:
        """True when the preset builds word-level tokenizers and random models instead of loading a pair."""
        return self.encoder is None and self.decoder is None

    def defaults(self) -> dict[str, Any]:
        """All of the preset's defaults as one flat dict of CLI field names (model, training and data settings)."""
        return {**self.model, **self.training, **self.data}

    def encoder_path(self) -> str:
        return _resolve(self.encoder, self.name, "encoder")

    def decoder_path(self) -> str:
        return _resolve(self.decoder, self.name, "decoder")


def _resolve(source: str | Callable[[], str] | None, preset: str, side: str) -> str:
    if source is None:
        raise ValueError(f"Preset {preset!r} trains its {side} from scratch; it has no pretrained {side} path.")
    return source() if callable(source) else source


def _minilm() -> str:
    from .assets import minilm_path

    return minilm_path()


def _smollm2() -> str:
    from .assets import smollm2_path

    return smollm2_path()


# Training settings shared by every preset: the CLI owns progress display and the final save.
_COMMON_TRAINING = {
    "report_to": "none",
    "logging_first_step": True,
    "train_sampling_strategy": "group_by_length",  # similar lengths per batch: less padding, faster CPU steps
    "length_column_name": "length",  # written by data.tokenize_corpus
    "eval_strategy": "no",  # the CLI evaluates once at the end (evaluation on CPU costs minutes)
    "save_strategy": "steps",
    "save_total_limit": 1,
    "seed": 0,
}

PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        description="word-level BERT 2x128 encoder + GPT-2 3x256 decoder from scratch on PTB; ~15 min on 2 CPU cores",
        model={
            "latent_size": 32,
            "pooling": "mean",
            "latent_injection": "both",
            "critic_hidden_size": 256,
            # Donsker-Varadhan: its log-mean-exp keeps the critic's step bounded. With the NWJ bound (xi=1) the
            # e^f of marginal pairs blew up after ~1,000 steps of this preset (bound -265 nats, critic loss 5e3).
            "xi": "dv",
            "kl_weight": 1.0,
            "mi_weight": 2.0,
            # 0.25 nats per dimension (8 nats over z): the KL has no reason to collapse below it, and the critic's
            # bound (lambda above) rewards spending it on what tells sentences apart. A decoder trained for minutes
            # cannot use much more: at 0.4 the KL rose to 11 nats and the NLL by 5.
            "free_bits": 0.25,
        },
        training={
            **_COMMON_TRAINING,
            "output_dir": "mine-vae-small",
            "max_steps": 1200,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 100,
            "weight_decay": 0.01,
            "logging_steps": 50,
            "save_steps": 400,
            "critic_learning_rate": 1e-3,
            "critic_warmup_steps": 100,
            "mi_warmup_steps": 200,
            "kl_warmup_ratio": 0.5,
            "eval_importance_samples": 10,
        },
        data={
            "max_length": 40,
            "overlength": "drop",
            "vocab_size": None,
            "min_frequency": 1,
            "max_eval_examples": 500,  # 500 sentences x 11 decoder passes: about 2 minutes of the budget
        },
        # No dropout: in less than one epoch nothing overfits, and an encoder with dropout shows the critic other
        # features in training than in evaluation (the bound then reads negative at evaluation).
        encoder_config={
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 512,
            "max_position_embeddings": 64,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        decoder_config={
            "n_embd": 256,
            "n_layer": 3,
            "n_head": 4,
            "n_inner": 1024,
            "n_positions": 64,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        },
    ),
    "tiny": Preset(
        name="tiny",
        description="a toy model for tests and smoke runs (seconds); not meant to produce good text",
        model={"latent_size": 8, "critic_hidden_size": 16, "xi": 1.0, "kl_weight": 1.0, "mi_weight": 1.0},
        training={
            **_COMMON_TRAINING,
            "output_dir": "mine-vae-tiny",
            "max_steps": 8,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "learning_rate": 3e-3,
            "logging_steps": 2,
            "save_steps": 4,
            "critic_warmup_steps": 2,
            "eval_importance_samples": 2,
            "disable_tqdm": True,
        },
        data={"max_length": 24, "overlength": "drop", "vocab_size": 2000, "min_frequency": 1, "max_eval_examples": 32},
        encoder_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
        },
        decoder_config={"n_embd": 32, "n_layer": 1, "n_head": 2, "n_inner": 64, "n_positions": 32},
    ),
    "minilm-smollm2": Preset(
        name="minilm-smollm2",
        description="pretrained all-MiniLM-L6-v2 encoder + SmolLM2-135M decoder, both frozen, on PTB; ~17 min on 2 CPU "
        "cores",
        model={
            "latent_size": 64,
            "pooling": "mean",
            # z as key/value positions in every decoder layer. z's gradient reaches the heads through every layer
            # either way (the injection starts at layer 0); adding z to the input embeddings as well ("both", at 5e-3)
            # made the frozen decoder's reconstructions worse after 3.5 minutes.
            "latent_injection": "memory",
            # Eight positions instead of one, at the same speed: IW-NLL 164.5 instead of 190.0 nats and KL 72 instead
            # of 97 after the same 700 steps (the frozen decoder reads more of z per layer); reconstruction BLEU did
            # not move (6.1).
            "latent_memory_positions": 8,
            # z also biases the next-token logits directly: in two pairs of runs IW-NLL fell by 5.7 and 3.2 nats and
            # BLEU rose by 0.9 and 0.7 (docs/benchmarks.md), for 15 % slower steps.
            "latent_vocab_bias": True,
            "critic_hidden_size": 256,
            # Scores c tanh(f / c), c = 5: the estimate stays below 10 nats (PTB's training set bounds I(x; z) by
            # log N = 10.5). Unbounded, it ran away past 100 nats by step 600 and IW-NLL ended at 166.6; bounded,
            # 142.3, next to 141.1 without the critic (docs/benchmarks.md).
            "critic_score_bound": 5.0,
            "xi": "dv",  # as in `small`: the NWJ bound's e^f diverged in long runs
            "kl_weight": 1.0,
            "mi_weight": 3.0,
            # 2 nats per dimension (128 over z): what the autoencoder warm start wrote into z is not taken back when
            # the KL enters (Li et al. 2019). With 1,200 steps instead of 0.5 and 700, reconstruction BLEU rose from 5.6
            # to 8.1, reconstructions kept their input's topic and 5 of 5 prior samples read as PTB sentences, for
            # IW-NLL 148.5 -> 167.7 (KL 55 -> 89). 3 nats and 1,400 steps: BLEU 7.9, IW-NLL 214.8 (docs/benchmarks.md).
            "free_bits": 2.0,
            # MiniLM's mean-pooled states are small, so the initial posterior means are ~0.1: at unit variance the
            # frozen decoder sees noise and learns to ignore z. Starting at a standard deviation of 0.05 lets z
            # carry x from the first step (reconstruction BLEU after 3.5 minutes: 2.4 instead of 0.1).
            "posterior_logvar_init": -6.0,
        },
        training={
            **_COMMON_TRAINING,
            "output_dir": "mine-vae-minilm-smollm2",
            # 2 CPU cores: ~0.55 s a step (bf16, both sides frozen, batches of 8 sentences of <= 40 tokens). On a GPU,
            # train longer and unfreeze the decoder (or add LoRA adapters; see docs/scaling.md).
            "max_steps": 1200,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32,
            # Only the heads train (posterior, z's key/value projections, critic): they take a high rate. 1e-3 reached
            # BLEU 2.4 in 200 steps, 3e-3 4.3.
            "learning_rate": 3e-3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 20,
            "weight_decay": 0.0,
            "logging_steps": 25,
            "save_steps": 400,
            "bf16": True,  # the frozen decoder's matrix products in bf16: several times faster on CPUs with AMX/AVX512
            "freeze_encoder": True,  # MiniLM's sentence features as they are: fine-tuning them at this rate wrecks them
            "freeze_decoder": True,  # SmolLM2 keeps its fluency; z steers it through the key/value heads
            # The autoencoder warm start (Li et al. 2019): beta = 0 for the first 40% of the steps, then rising to 1
            # over 10% and held there, with the free bits above.
            "kl_schedule": "cyclical",
            "kl_cycles": 1,
            "kl_zero_ratio": 0.4,
            "kl_increase_ratio": 0.1,
            # The rate cut: over the last quarter of the steps the free bits fall from 2 to 0.5 nats per dimension.
            # 2 nats let the posteriors be far more precise than the decoder reads (KL 89 nats for the 11-13 that
            # depend on the sentence), which made the VAE a worse language model than SmolLM2 alone (IW-NLL 170.4
            # against 151.7). 300 more steps at 0.5 on that model: KL 48.5, IW-NLL 131.9, BLEU 7.2 against 7.4
            # (docs/benchmarks.md, "The rate cut"). In the main job: IW-NLL 137.6 against 151.7, BLEU 10.4 with the
            # report's decoding (7.1 greedy; the previous recipe's main-job model reads 10.1 under the same decoding).
            # 1,600 steps with the cut over the last 20% took 21.8 min with the installs and gave BLEU 7.2 greedy,
            # IW-NLL 139.2.
            "final_free_bits": 0.5,
            "final_free_bits_ratio": 0.25,
            "critic_learning_rate": 1e-3,
            "critic_warmup_steps": 50,
            "mi_warmup_steps": 100,
            # Free bits let the posteriors drift off N(0, I); at the end, fold their aggregate's mean and spread into
            # the model so prior samples land where the decoder was trained (docs/method.md): on the main job's model,
            # IW-NLL 178.0 -> 171.3 and 0 -> 3 of 5 prior samples in PTB's register, reconstructions unchanged.
            "standardize_latent_examples": 2048,
            "eval_importance_samples": 5,
            "eval_bleu": True,
        },
        # 40 SmolLM2 tokens keep 85% of PTB's training sentences (its <unk> alone is three tokens).
        data={"max_length": 40, "overlength": "drop", "max_eval_examples": 200},
        encoder=_minilm,
        decoder=_smollm2,
    ),
}

_PAIR = PRESETS["minilm-smollm2"]
# The default pair's recipe before the rate cut: 2 free nats per dimension to the end (BLEU 7.4-8.1, IW-NLL 17-19 nats
# above SmolLM2 alone). Kept by name: the pilots in docs/benchmarks.md ran on it, and runs made with it can be repeated.
PRESETS["minilm-smollm2-v1"] = dataclasses.replace(
    _PAIR,
    name="minilm-smollm2-v1",
    description="the default pair's recipe before the rate cut (2 free nats per dimension to the end)",
    training={**_PAIR.training, "output_dir": "mine-vae-minilm-smollm2-v1", "final_free_bits": None},
)
# Settings of z's key/value positions and vocabulary bias, paths this preset closes (the pair preset's warm start, a
# schedule of β, is left out below with the other kl_ settings).
_MEMORY_ONLY = ("latent_memory_positions", "latent_vocab_bias")
PRESETS["minilm-smollm2-embed"] = dataclasses.replace(
    _PAIR,
    name="minilm-smollm2-embed",
    description="the same pretrained pair with z through the embeddings only and the decoder's 30 layers learning: "
    "where a plain VAE collapses; 300 steps of ~1.3 s on 2 CPU cores",
    model={
        **{key: value for key, value in _PAIR.model.items() if key not in _MEMORY_ONLY},
        # z added to every input embedding and nowhere else (Optimus' and DELLA's "embed"): a decoder that learns
        # can learn to read past it, which is where posterior collapse happens.
        "latent_injection": "embedding",
        "kl_weight": 1.0,
        "free_bits": 0.0,  # nothing shields the KL: the regime of the collapse, not of its remedies
        "posterior_logvar_init": 0.0,  # the prior's width from the start: no small-variance head start for z
    },
    training={
        **{key: value for key, value in _PAIR.training.items() if not key.startswith(("kl_", "final_free_bits"))},
        "output_dir": "mine-vae-minilm-smollm2-embed",
        "max_steps": 300,
        "save_steps": 100,
        # The posterior and z's embedding head train with the decoder's top layers at one rate. 3e-3 was not better in
        # a 60-step smoke run (16 validation sentences): IW-NLL 190.5 against 181.4, the decoder alone 148.7 against
        # 138.4 (its top layers moved further from SmolLM2's), for KL 2.5 against 0.5.
        "learning_rate": 1e-3,
        "freeze_encoder": True,
        # The decoder learns: full fine-tuning of all its 30 layers (and its final norm), while its embeddings and LM
        # head keep SmolLM2's weights. The more of it learns, the further the plain VAE collapses (300 steps, seed 0,
        # 250 test sentences): top 2 layers KL 1.28 and 9 active units (2 seeds), top 6 KL 0.97 / AU 4, top 12
        # KL 0.91 / AU 3, all 30 KL 0.39 / AU 0, at the same speed.
        "freeze_decoder": True,
        "decoder_trainable_layers": 30,
        "kl_schedule": "constant",  # β = 1 from the first step
        "standardize_latent_examples": 0,
    },
)


def get_preset(name: str) -> Preset:
    """The preset called `name`; a `ValueError` listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(f"{key} ({preset.description})" for key, preset in PRESETS.items())
        raise ValueError(f"Unknown preset {name!r}; use one of: {known}.") from None


# --------------------------------------------------------------------------------------------------------------------
# Building a model and its processor
# --------------------------------------------------------------------------------------------------------------------
def build_from_scratch(
    preset: Preset,
    texts: Iterable[str],
    max_length: int,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    **config_kwargs: Any,
) -> tuple[MineVaeModel, MineVaeProcessor]:
    """
    Word-level tokenizers built on `texts`, then a randomly initialised BERT encoder and GPT-2 decoder of the
    preset's sizes around them.

    Args:
        texts: the training sentences (the vocabulary is read from them).
        max_length: most words per sentence, without special tokens.
        vocab_size: most entries per vocabulary, special tokens included (None: every word seen).
        config_kwargs: `MineVaeConfig` keyword arguments, over the preset's.
    """
    from transformers import BertConfig, GPT2Config

    from .data import build_word_tokenizers

    if preset.encoder_config is None or preset.decoder_config is None:
        raise ValueError(f"Preset {preset.name!r} loads a pretrained pair; use build_pretrained.")
    encoder_tokenizer, decoder_tokenizer = build_word_tokenizers(texts, vocab_size, min_frequency)
    # Positions: the encoder's sentence with its special tokens; the decoder's with BOS and z's key/value position.
    max_encoder_length, max_decoder_length = processor_lengths(max_length)
    for side, sizes, key, needed in (
        ("encoder", preset.encoder_config, "max_position_embeddings", max_encoder_length),
        ("decoder", preset.decoder_config, "n_positions", max_decoder_length + 1),
    ):
        if sizes[key] < needed:
            raise ValueError(
                f"max_length={max_length} needs {needed} {side} positions but preset {preset.name!r} has "
                f"{sizes[key]}; use max_length <= {sizes[key] - (needed - max_length)}."
            )
    encoder_config = BertConfig(vocab_size=len(encoder_tokenizer), **preset.encoder_config)
    decoder_config = GPT2Config(
        vocab_size=len(decoder_tokenizer),
        pad_token_id=decoder_tokenizer.pad_token_id,
        bos_token_id=decoder_tokenizer.bos_token_id,
        eos_token_id=decoder_tokenizer.eos_token_id,
        **preset.decoder_config,
    )
    config = MineVaeConfig(encoder=encoder_config, decoder=decoder_config, **{**preset.model, **config_kwargs})
    processor = MineVaeProcessor(encoder_tokenizer, decoder_tokenizer, max_encoder_length, max_decoder_length)
    return MineVaeModel(config), processor


def build_pretrained(
    encoder: str,
    decoder: str,
    max_length: int,
    model_kwargs: Mapping[str, Any] | None = None,
    **config_kwargs: Any,
) -> tuple[MineVaeModel, MineVaeProcessor]:
    """
    A MINE-VAE around a pretrained encoder and causal decoder (local folders or Hub ids) and their tokenizers.

    Args:
        max_length: most tokens per sentence for each tokenizer, without special tokens.
        model_kwargs: `from_encoder_decoder_pretrained` loading options (e.g. `decoder_dtype=torch.bfloat16`).
        config_kwargs: `MineVaeConfig` keyword arguments.
    """
    encoder_tokenizer, decoder_tokenizer = pretrained_tokenizers(encoder, decoder)
    model = MineVaeModel.from_encoder_decoder_pretrained(encoder, decoder, **dict(model_kwargs or {}), **config_kwargs)
    # The tokenizer, not the checkpoint's config, decides which ids start, end and pad sentences.
    start = (
        decoder_tokenizer.bos_token_id if decoder_tokenizer.bos_token_id is not None else decoder_tokenizer.eos_token_id
    )
    for config in (model.config, model.config.decoder, model.generation_config):
        config.pad_token_id = decoder_tokenizer.pad_token_id
        config.eos_token_id = decoder_tokenizer.eos_token_id
        config.bos_token_id = start
    model.config.decoder_start_token_id = model.generation_config.decoder_start_token_id = start
    max_encoder_length, max_decoder_length = processor_lengths(max_length)
    processor = MineVaeProcessor(
        encoder_tokenizer,
        decoder_tokenizer,
        max_encoder_length=_within(max_encoder_length, model.config.encoder, 0),
        max_decoder_length=_within(max_decoder_length, model.config.decoder, model.config.num_latent_positions),
    )
    return model, processor


def pretrained_tokenizers(encoder: str, decoder: str) -> tuple[Any, Any]:
    """The tokenizers of a pretrained pair (local folders or Hub ids), the decoder's given a pad token if it has none:
    what tokenising a corpus for the pair needs, without loading its weights."""
    from transformers import AutoTokenizer

    encoder_tokenizer = AutoTokenizer.from_pretrained(encoder)
    decoder_tokenizer = AutoTokenizer.from_pretrained(decoder)
    _give_pad_token(decoder_tokenizer, decoder)
    return encoder_tokenizer, decoder_tokenizer


def _give_pad_token(tokenizer: Any, name: str) -> None:
    """Decoders such as GPT-2 ship without a pad token. Padding is masked out of the loss by position, so any existing
    token serves; unk is preferred over EOS so that nothing keyed on `pad_token_id` can hide the EOS."""
    if tokenizer.pad_token_id is not None:
        return
    substitute = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else tokenizer.eos_token
    if substitute is None:
        raise ValueError(f"The decoder tokenizer of {name} has neither a pad, an unk nor an EOS token; give it a pad.")
    logger.warning("The decoder tokenizer of %s has no pad token; padding with %s.", name, substitute)
    tokenizer.pad_token = substitute


def _within(length: int, config: Any, prefix: int) -> int:
    """`length` capped at what the model's position embeddings allow."""
    limit = getattr(config, "max_position_embeddings", None)
    return length if limit is None else min(length, limit - prefix)


__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "Preset",
    "build_from_scratch",
    "build_pretrained",
    "get_preset",
    "pretrained_tokenizers",
]
