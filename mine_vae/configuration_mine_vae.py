"""Configuration of a MINE-VAE: a pretrained encoder and causal decoder around a Gaussian latent, plus an MI critic."""

from __future__ import annotations

import math
import warnings
from functools import partial

import transformers
from packaging.version import Version
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The transformers releases this package is tested on: setup.cfg declares the same range and CI tests both ends of it.
# The floor is 5.24, where the decoder cache became `cache` (in `forward` and in model outputs); the ceiling is the
# first release not yet tested. This file and the modelling files also ship as remote code, which runs under whatever
# transformers the downloading user has, months later: below the floor the model cannot work, so the import stops with
# one line; above the ceiling it most likely still does (a shared model must keep loading when its users upgrade), so
# the import goes on after one warning that names the tested range.
SUPPORTED_TRANSFORMERS = (Version("5.24.0"), Version("5.26.0"))


class UntestedTransformersWarning(UserWarning):
    """transformers is newer than the releases this MINE-VAE code was tested with."""


def check_transformers_version(version: str = transformers.__version__) -> None:
    """Raise an `ImportError` when transformers is older than the supported floor; warn (once per process, Python's
    default filter) when it is at or above the tested ceiling."""
    low, high = SUPPORTED_TRANSFORMERS
    if Version(version) < low:
        raise ImportError(
            f"MINE-VAE needs transformers>={low}; transformers {version} is installed. "
            f'Install a supported release: pip install "transformers>={low},<{high}".'
        )
    if Version(version) >= high:
        warnings.warn(
            f"MINE-VAE was tested with transformers>={low},<{high}; transformers {version} is installed and is used "
            f'as is. If loading or generating fails, install a tested release: pip install "transformers<{high}".',
            UntestedTransformersWarning,
            stacklevel=2,
        )


# transformers loads this file once per folder of remote code it imports (AutoConfig's copy, and another beside the
# modelling file and the files that one imports): the newer-release warning is given by the first copy only, through a
# mark on the transformers module that every copy shares. Too old a release stops every import.
if not getattr(transformers, "_mine_vae_version_checked", False):
    check_transformers_version()
    transformers._mine_vae_version_checked = True

POOLING_MODES = ("pooler", "first", "mean")
# The pipeline every saved config names (`custom_pipelines`, read by `transformers.pipeline`): one entry, so that
# `pipeline(model=folder, trust_remote_code=True)` without a task picks it, and under `feature-extraction`, whose
# standard pipeline would return the decoder's logits for the start token instead of an embedding. The file travels
# with the modelling code (see `MineVaeModel.pipeline`).
CUSTOM_PIPELINES = {"feature-extraction": {"impl": "pipeline_mine_vae.MineVaePipeline", "pt": ["AutoModel"]}}
LATENT_INJECTIONS = ("memory", "embedding", "both")
XI_MODES = ("dv", "ema")


class MineVaeConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MineVaeModel`]: q(z|x) from a pretrained encoder, a Gaussian latent z, p(x|z) from a
    pretrained causal language model, and a critic f(x, z) whose score gives a lower bound on I(x; z).

    Args:
        encoder (`PreTrainedConfig` or `dict`):
            Config of the encoder (any model `AutoModel` can build, BERT family in practice).
        decoder (`PreTrainedConfig` or `dict`):
            Config of the causal decoder (any model `AutoModelForCausalLM` can build: GPT-2, Llama family, ...).
        latent_size (`int`, defaults to 32):
            Dimension of z.
        pooling (`str`, defaults to `"mean"`):
            How the encoder states become the vector the posterior is read from: `"pooler"` (the encoder's own
            pooler output), `"first"` (the first token's state) or `"mean"` (the mean over unmasked tokens).
        latent_injection (`str`, defaults to `"both"`):
            How z reaches the decoder: `"memory"` (z is projected to one extra key/value position in every decoder
            layer, with separate key and value projections), `"embedding"` (z is projected and added to every input
            embedding, generated tokens included) or `"both"`. With `"embedding"` alone the projection starts at zero,
            so that the decoder starts as it was: a random shift of every input embedding is noise a pretrained
            decoder cannot read past (SmolLM2's first-step NLL rises from 144 to 364 nats per sentence), and z's
            only path would start as damage to undo rather than as a signal. With `"both"` it starts random, as the
            key/value heads do.
        latent_memory_positions (`int`, defaults to 1):
            How many key/value positions z takes in every decoder layer with `"memory"` or `"both"` injection (each
            position has its own slice of the key and value projections). A frozen decoder reads z only through
            them: with one position each layer can add one value vector, with several it can attend to different
            parts of z for different words.
        latent_vocab_bias (`bool`, defaults to `False`):
            Whether z also adds a bias over the decoder's vocabulary to every next-token distribution (one linear map
            from z to one logit per token, starting at zero, so that the decoder starts as it was): a path from z to
            the words that does not go through a frozen decoder's attention layers.
        latent_residual_layers (`list[int]`, *optional*):
            Decoder layers (0-based) whose output z also shifts at every position: one linear map of z per listed
            layer, starting at zero, added to that layer's hidden states (a steering vector made from z). A frozen
            decoder reproduces a sentence from one vector added to its middle layers' residual stream, where key/value
            positions alone leave most of the sentence unread. None or empty: no residual injection.
        latent_residual_scale (`float`, defaults to 1.0):
            Factor on those shifts. The decoder's hidden states are large next to z (SmolLM2's middle layers: about
            6 per coordinate), so the maps must grow far from zero; a factor above 1 lets them get there in fewer
            steps (the same as a higher learning rate for these maps alone).
        critic_hidden_size (`int`, defaults to 256):
            Width of the critic's hidden layers.
        critic_num_layers (`int`, defaults to 2):
            Number of hidden layers of the critic.
        critic_score_bound (`float`, *optional*):
            Bounds the critic's scores to (-c, c) with c tanh(f / c). A minibatch estimate of the bound is unbounded
            above: once z tells the batch's sentences apart, the critic can raise joint scores and lower marginal
            ones without limit, and the VAE step, which maximises λ times that estimate, follows it (a runaway that
            reaches hundreds of nats while I(x; z) over a corpus of N sentences is at most log N). Bounded scores cap
            the estimate at 2c and stop the gradient once the critic saturates. None: unbounded (the paper's critic).
        xi (`float` or `str`, defaults to `"dv"`):
            The ξ of the bound E_joint[f] - ξ E_marginal[e^f] + log ξ + 1. A positive number is used as is (1.0 is
            the NWJ bound); `"dv"` sets ξ = 1 / E_marginal[e^f] (Donsker-Varadhan, MINE); `"ema"` uses a moving
            average of E_marginal[e^f] instead (MINE's bias-corrected gradient).
        ema_decay (`float`, defaults to 0.99):
            Decay of that moving average (only used with `xi="ema"`).
        kl_weight (`float`, defaults to 1.0):
            β, the weight of the KL term.
        mi_weight (`float`, defaults to 3.0):
            λ, the weight of the MI lower bound (subtracted from the loss). The Penn Treebank study
            (docs/benchmarks.md) found λ = 1 too weak to keep the latent alive against β = 1, and λ = 3 enough.
        free_bits (`float`, defaults to 0.0):
            Free-bits threshold per latent dimension, in nats: a dimension's batch-mean KL below it costs nothing.
        bow_weight (`float`, defaults to 0.0):
            Weight of a bag-of-words loss (Zhao et al. 2017): a linear head from z to the decoder's vocabulary
            (`bow_head`, built only when the weight is above 0) predicts every target token of the sentence at once,
            without word order, and the loss adds bow_weight × −Σ_tokens log softmax(bow_head(z))[token] per
            sentence. The head sees only z, so z must carry the sentence's words whatever the decoder learns to do
            without it: a remedy for posterior collapse. 0: no head, no term.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the initialisation of the heads this model adds (posterior, injection, critic).
        posterior_logvar_init (`float`, defaults to 0.0):
            The log-variance q(z|x) starts at (the bias of the posterior's log-variance half). 0.0 starts at the
            prior's width. A pretrained encoder's pooled features are small, so the initial posterior means are
            too (about 0.1): at unit variance the decoder sees noise and learns to ignore z before the encoder can
            speak. A negative value (-6: a standard deviation of 0.05) lets z carry x from the first step.
        use_cache (`bool`, defaults to `True`):
            Whether `forward` returns the decoder cache when the call does not say (as a causal LM's config does).
    """

    model_type = "mine_vae"
    keys_to_ignore_at_inference = [
        "cache",
        "hidden_states",
        "attentions",
        "mu",
        "logvar",
        "z",
        "pooler_output",
        "kl_per_dimension",
    ]
    sub_configs_defaults = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "decoder": SubConfigSpec(config_class=AutoConfig, model_type="gpt2"),
    }

    encoder: PreTrainedConfig | dict | None = None
    decoder: PreTrainedConfig | dict | None = None
    latent_size: int = 32
    pooling: str = "mean"
    latent_injection: str = "both"
    latent_memory_positions: int = 1
    latent_vocab_bias: bool = False
    latent_residual_layers: list[int] | None = None
    latent_residual_scale: float = 1.0
    critic_hidden_size: int = 256
    critic_num_layers: int = 2
    critic_score_bound: float | None = None
    # DV rather than the fixed-ξ (NWJ) bound: NWJ's e^f of marginal pairs exploded in long runs and with strong critics.
    xi: float | str = "dv"
    ema_decay: float = 0.99
    kl_weight: float = 1.0
    mi_weight: float = 3.0
    free_bits: float = 0.0
    bow_weight: float = 0.0
    initializer_range: float = 0.02
    posterior_logvar_init: float = 0.0
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        # The decoder's special tokens drive generation; inherit them unless given explicitly.
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(self.decoder, name, None))
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id if self.bos_token_id is not None else self.eos_token_id
        if not getattr(self, "custom_pipelines", None):
            self.custom_pipelines = {task: dict(info) for task, info in CUSTOM_PIPELINES.items()}
        self._check_fields()

    def _check_fields(self) -> None:
        """Raise a `ValueError` naming the field and what is allowed when the config contradicts itself."""
        _require(
            _is_int(self.latent_size) and self.latent_size > 0, "latent_size", self.latent_size, "a positive integer"
        )
        _require(self.pooling in POOLING_MODES, "pooling", self.pooling, f"one of {POOLING_MODES}")
        _require(
            self.latent_injection in LATENT_INJECTIONS,
            "latent_injection",
            self.latent_injection,
            f"one of {LATENT_INJECTIONS}",
        )
        _require(
            _is_int(self.latent_memory_positions) and self.latent_memory_positions > 0,
            "latent_memory_positions",
            self.latent_memory_positions,
            "a positive integer",
        )
        _require(isinstance(self.latent_vocab_bias, bool), "latent_vocab_bias", self.latent_vocab_bias, "true or false")
        layers = self.latent_residual_layers
        if isinstance(layers, tuple):
            self.latent_residual_layers = layers = list(layers)
        _require(
            layers is None
            or (
                isinstance(layers, list)
                and all(_is_int(i) and i >= 0 for i in layers)
                and len(set(layers)) == len(layers)
            ),
            "latent_residual_layers",
            layers,
            "None or a list of distinct decoder layer indices >= 0",
        )
        num_layers = getattr(self.decoder, "num_hidden_layers", None)
        _require(
            not layers or num_layers is None or max(layers) < num_layers,
            "latent_residual_layers",
            layers,
            f"indices of the decoder's {num_layers} layers (0 to {num_layers - 1 if num_layers else 0})",
        )
        _require(
            _is_number(self.latent_residual_scale)
            and math.isfinite(self.latent_residual_scale)
            and self.latent_residual_scale > 0,
            "latent_residual_scale",
            self.latent_residual_scale,
            "a positive number",
        )
        _require(
            _is_int(self.critic_hidden_size) and self.critic_hidden_size > 0,
            "critic_hidden_size",
            self.critic_hidden_size,
            "a positive integer",
        )
        _require(
            _is_int(self.critic_num_layers) and self.critic_num_layers > 0,
            "critic_num_layers",
            self.critic_num_layers,
            "a positive integer",
        )
        _require(
            self.critic_score_bound is None
            or (
                _is_number(self.critic_score_bound)
                and math.isfinite(self.critic_score_bound)
                and self.critic_score_bound > 0
            ),
            "critic_score_bound",
            self.critic_score_bound,
            "a positive number or None",
        )
        _require(
            self.xi in XI_MODES or (_is_number(self.xi) and math.isfinite(self.xi) and self.xi > 0),
            "xi",
            self.xi,
            f"a positive number or one of {XI_MODES}",
        )
        _require(
            _is_number(self.ema_decay) and 0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in (0, 1)"
        )
        for name in ("kl_weight", "mi_weight", "free_bits", "bow_weight"):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        _require(
            _is_number(self.posterior_logvar_init) and math.isfinite(self.posterior_logvar_init),
            "posterior_logvar_init",
            self.posterior_logvar_init,
            "a finite number",
        )
        if self.pooling == "pooler" and getattr(self.encoder, "add_pooling_layer", True) is False:
            raise ValueError("pooling='pooler' needs an encoder with a pooler; use pooling='first' or 'mean'.")

    @property
    def injects_memory(self) -> bool:
        return self.latent_injection in ("memory", "both")

    @property
    def injects_embedding(self) -> bool:
        return self.latent_injection in ("embedding", "both")

    @property
    def num_latent_positions(self) -> int:
        """Decoder positions z takes ahead of the tokens (0 without memory injection)."""
        return self.latent_memory_positions if self.injects_memory else 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_setting(owner: str, condition: bool, field: str, value: object, allowed: str) -> None:
    """Refuse `owner.field=value` unless `condition`, saying what it must be: `MineVaeConfig` and
    `MineVaeTrainingArguments` word every refused setting alike."""
    if not condition:
        raise ValueError(f"{owner}.{field}={value!r} is not allowed: it must be {allowed}.")


_require = partial(require_setting, "MineVaeConfig")


__all__ = ["MineVaeConfig"]
