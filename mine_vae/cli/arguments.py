"""The argument dataclasses of the commands: each field is a flag (and a config-file setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..configuration_mine_vae import MineVaeConfig
from ..presets import DEFAULT_PRESET, PRESETS
from .commands import check_seed
from .decoding import generation_limit

NUM_THREADS_HELP = (
    "CPU threads for torch (default: torch's, or fewer when other processes already keep the cores busy: "
    "oversubscribed threads that wait on each other run many times slower)."
)


@dataclass
class ModelArguments:
    """Which model to build (`train`)."""

    _argument_group_name = "model"

    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={"help": f"Recipe of model, tokenizers, training defaults and data settings: {', '.join(PRESETS)}."},
    )
    encoder: str | None = field(
        default=None, metadata={"help": "A pretrained encoder (local folder or Hub id) instead of the preset's."}
    )
    decoder: str | None = field(
        default=None, metadata={"help": "A pretrained causal decoder (local folder or Hub id) instead of the preset's."}
    )
    latent_size: int | None = field(default=None, metadata={"help": "Dimension of z (default: the preset's)."})
    pooling: str | None = field(default=None, metadata={"help": "Encoder pooling: pooler, first or mean."})
    latent_injection: str | None = field(
        default=None, metadata={"help": "How z reaches the decoder: memory, embedding or both."}
    )
    latent_memory_positions: int | None = field(
        default=None, metadata={"help": "Key/value positions z takes in every decoder layer (memory injection)."}
    )
    latent_vocab_bias: bool | None = field(
        default=None, metadata={"help": "true: z also adds a bias over the vocabulary to every next-token logit."}
    )
    latent_residual_layers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Decoder layers (0-based) whose output z also shifts at every position, e.g. 8 12 16 "
            "(residual injection; 'none' turns the preset's off)."
        },
    )
    latent_residual_scale: float | None = field(
        default=None, metadata={"help": "Factor on z's residual shifts (--latent_residual_layers)."}
    )
    critic_hidden_size: int | None = field(default=None, metadata={"help": "Width of the critic's hidden layers."})
    critic_num_layers: int | None = field(default=None, metadata={"help": "Number of the critic's hidden layers."})
    critic_score_bound: str | None = field(
        default=None,
        metadata={
            "help": "Bound c of the critic's scores, c tanh(f / c): caps the bound's estimate at 2c ('none': "
            "unbounded scores, as in the paper)."
        },
    )
    xi: str | None = field(default=None, metadata={"help": "xi of the MI bound: a positive number, 'dv' or 'ema'."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "Decay of the moving average of E_marginal[e^f] (with --xi ema)."}
    )
    kl_weight: float | None = field(default=None, metadata={"help": "Peak beta (weight of the KL term)."})
    mi_weight: float | None = field(default=None, metadata={"help": "Peak lambda (weight of the MI lower bound)."})
    free_bits: float | None = field(
        default=None,
        metadata={"help": "Free bits per latent dimension (nats): a dimension's KL below it costs nothing."},
    )
    bow_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the bag-of-words loss: a head predicts the sentence's words from z (0: off)."},
    )
    posterior_logvar_init: float | None = field(
        default=None,
        metadata={"help": "Initial log-variance of q(z|x) (0: the prior's width; the pretrained preset starts at -6)."},
    )
    initializer_range: float | None = field(
        default=None, metadata={"help": "Standard deviation of the initial weights of the added heads."}
    )

    def __post_init__(self) -> None:
        # Sizes far above any model's, checked here: beyond them torch fails while building the model with an
        # allocator or integer-overflow message that names no flag. (Values below 1 are refused by MineVaeConfig.)
        for name, most in MAX_MODEL_SIZES.items():
            value = getattr(self, name)
            _require(value is None or value <= most, f"--{name} must be at most {most:,}, got {value}.")

    def config_kwargs(self) -> dict[str, Any]:
        """The `MineVaeConfig` fields given (flag, config file or preset), with `xi` as a number where it is one."""
        # Every field of this class that MineVaeConfig also has, except those that choose the model: MineVaeConfig's
        # `encoder` and `decoder` are the sub-models' configs, these flags are paths (build_model takes them apart).
        names = [
            spec.name
            for spec in fields(self)
            if spec.name in MineVaeConfig.__dataclass_fields__ and spec.name not in ("encoder", "decoder")
        ]
        kwargs = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if "xi" in kwargs:
            kwargs["xi"] = _parse_xi(kwargs["xi"])
        if "critic_score_bound" in kwargs:
            kwargs["critic_score_bound"] = _parse_score_bound(kwargs["critic_score_bound"])
        if "latent_residual_layers" in kwargs:
            kwargs["latent_residual_layers"] = _parse_layers(kwargs["latent_residual_layers"])
        return kwargs


@dataclass
class DataArguments:
    """Where the text comes from and how it is cut (`train`, `evaluate`)."""

    _argument_group_name = "data"

    train_file: str | None = field(
        default=None, metadata={"help": "Training text: .txt (a sentence a line), .json(l), .csv, .tsv, .parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation text (same formats)."})
    test_file: str | None = field(default=None, metadata={"help": "Test text (same formats)."})
    text_column: str = field(default="text", metadata={"help": "Column of sentences in json/csv/parquet files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id instead of files."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens per sentence, special tokens excluded (default: the preset's, else the model's limit)."
        },
    )
    overlength: str = field(
        default="drop", metadata={"help": "Sentences over --max_length: 'drop' them or 'truncate' them (counted)."}
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "From-scratch presets: most words per vocabulary (default: every word)."}
    )
    min_frequency: int = field(default=1, metadata={"help": "From-scratch presets: least count for a word to be kept."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Train on the first N sentences only."})
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N sentences only (of those that fit --max_length)."}
    )
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Held out of the training text when the corpus has no validation split."}
    )

    def __post_init__(self) -> None:
        for name in ("max_length", "vocab_size", "max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"--{name} must be at least 1 (or left out), got {value}.")
        _require(self.min_frequency >= 1, f"--min_frequency must be at least 1, got {self.min_frequency}.")


@dataclass
class TrainRunArguments:
    """How `train` behaves around the training itself."""

    _argument_group_name = "run"

    config: str | None = field(default=None, metadata={"help": "JSON or YAML file of flag values (flags win)."})
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest complete checkpoint in --output_dir."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace the model and checkpoint-N folders already in --output_dir, once the new model is saved "
            "(until then they stay as they are; files that train did not write are never touched)."
        },
    )
    num_samples: int = field(default=5, metadata={"help": "Prior samples printed after training."})
    num_reconstructions: int = field(default=5, metadata={"help": "Reconstructions printed after training."})
    interpolation_steps: int = field(default=5, metadata={"help": "Steps of the interpolation printed after training."})
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})


@dataclass
class LoraArguments:
    """LoRA adapters on the decoder (`train`)."""

    _argument_group_name = "lora"

    lora_r: int = field(
        default=0,
        metadata={
            "help": "Rank of LoRA adapters on the decoder's attention projections (0: none). The encoder's and "
            "decoder's own weights stay frozen, the adapters train with z's heads and the critic, checkpoints hold "
            "the adapters, and the saved model has them merged in (a plain MINE-VAE). Needs peft: pip install -e "
            "'.[adapters]'."
        },
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA's scale: the update is multiplied by alpha / r (default: 2r)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names of the decoder's linear layers to adapt, e.g. q_proj,v_proj (default: every "
            "projection of its attention)."
        },
    )

    def module_names(self) -> list[str] | None:
        if self.lora_target_modules is None:
            return None
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()] or None


@dataclass
class LoadArguments:
    """Which trained model to use (`evaluate`, `generate`, `interpolate`)."""

    _argument_group_name = "model"

    model: str = field(
        default=PRESETS[DEFAULT_PRESET].training["output_dir"],
        metadata={"help": "Folder written by `mine-vae train` (or a checkpoint-N in it, or a Hub id)."},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    seed: int = field(default=0, metadata={"help": "Seed of the latent draws and of sampling."})
    config: str | None = field(default=None, metadata={"help": "JSON or YAML file of flag values (flags win)."})
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})

    def __post_init__(self) -> None:
        check_seed(self.seed)


@dataclass
class EvaluateArguments:
    """What `evaluate` measures."""

    _argument_group_name = "evaluation"

    split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: validation, else test, else the only split)."}
    )
    file: str | None = field(
        default=None, metadata={"help": "Evaluate on this file instead (same formats as training)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Sentences per batch."})
    importance_samples: int = field(
        default=10, metadata={"help": "Importance samples per sentence for the NLL (papers use 100; slower)."}
    )
    bleu: bool = field(
        default=False,
        metadata={"help": "Also compute reconstruction BLEU (beams of 4, no repeated 4-gram; greedy beside it)."},
    )

    def __post_init__(self) -> None:
        _require(
            1 <= self.batch_size <= MAX_BATCH_SIZE,
            f"--batch_size must be between 1 and {MAX_BATCH_SIZE:,}, got {self.batch_size}.",
        )
        _require(
            1 <= self.importance_samples <= MAX_IMPORTANCE_SAMPLES,
            f"--importance_samples must be between 1 and {MAX_IMPORTANCE_SAMPLES:,}, got {self.importance_samples} "
            "(papers use 100).",
        )


@dataclass
class DecodingArguments:
    """How text is decoded from a latent (`generate`, `interpolate`)."""

    _argument_group_name = "decoding"

    max_new_tokens: int = field(
        default=50, metadata={"help": "Most tokens per generated sentence (capped at what the decoder can hold)."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample tokens instead of greedy / beam decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k likeliest tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling: the smallest set with mass p."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy or sampling)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty on repeated tokens (1: none)."})
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={
            "help": "Never repeat an n-gram of this many tokens (0: off). `train`'s reconstructions use 4, with "
            "--num_beams 4."
        },
    )

    def __post_init__(self) -> None:
        # Checked here, before a model is loaded: out of range, transformers fails deep inside generate() (a
        # ZeroDivisionError for --num_beams 0) or, worse, accepts the value and ignores it (--top_p 2).
        _require(self.max_new_tokens >= 1, f"--max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        _require(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"--temperature must be a number > 0, got {self.temperature} (for greedy decoding, leave out --do_sample).",
        )
        _require(self.top_k is None or self.top_k >= 0, f"--top_k must be 0 (off) or more, got {self.top_k}.")
        _require(self.top_p is None or 0 < self.top_p <= 1, f"--top_p must be in (0, 1], got {self.top_p}; e.g. 0.9.")
        _require(self.num_beams >= 1, f"--num_beams must be at least 1 (1: no beam search), got {self.num_beams}.")
        _require(
            math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
            f"--repetition_penalty must be a number > 0 (1: none), got {self.repetition_penalty}.",
        )
        _require(
            self.no_repeat_ngram_size >= 0,
            f"--no_repeat_ngram_size must be 0 (off) or more, got {self.no_repeat_ngram_size}; e.g. 4.",
        )

    def generate_kwargs(self, model: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": min(self.max_new_tokens, generation_limit(model)),
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        if self.do_sample:  # transformers warns about sampling options given without sampling
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


@dataclass
class GenerateArguments:
    """What `generate` decodes."""

    _argument_group_name = "generation"

    num_samples: int = field(default=5, metadata={"help": "Sentences drawn from the prior when no input is given."})
    prior_scale: float = field(
        default=1.0,
        metadata={
            "help": "Draw prior samples from N(0, s^2 I) (1: the prior itself; below 1, a reduced-temperature prior "
            "whose draws stay nearer the training sentences' latents; train's report uses 0.8)."
        },
    )
    input_file: str | None = field(
        default=None, metadata={"help": "Reconstruct the sentences of this file (one a line)."}
    )
    sample_latent: bool = field(
        default=False, metadata={"help": "Reconstruct from a posterior sample instead of the posterior mean."}
    )
    num_return_sequences: int = field(default=1, metadata={"help": "Outputs per input sentence (or per prior draw)."})
    batch_size: int = field(
        default=32,
        metadata={"help": "Sentences decoded at once; each batch's rows are printed as soon as it is done."},
    )
    output_file: str | None = field(
        default=None,
        metadata={
            "help": "Write the rows (table, or JSON with --json) to this file instead of stdout; an existing file is "
            "replaced once the run is complete."
        },
    )

    def __post_init__(self) -> None:
        _require(self.num_samples >= 0, f"--num_samples must be at least 1, got {self.num_samples}.")
        _require(
            self.num_return_sequences >= 1,
            f"--num_return_sequences must be at least 1, got {self.num_return_sequences}.",
        )
        _require(self.batch_size >= 1, f"--batch_size must be at least 1, got {self.batch_size}.")
        _require(
            math.isfinite(self.prior_scale) and self.prior_scale > 0,
            f"--prior_scale must be a number > 0 (1: the prior itself), got {self.prior_scale}; e.g. 0.8.",
        )


@dataclass
class InterpolateArguments:
    _argument_group_name = "interpolation"

    steps: int = field(default=5, metadata={"help": "Points on the line between the two latents, endpoints included."})


MAX_MODEL_SIZES = {"latent_size": 65_536, "latent_memory_positions": 4_096, "critic_hidden_size": 65_536}
# Far above any useful value, far below what would loop for ever or overflow the samplers.
MAX_BATCH_SIZE = 1_000_000
MAX_IMPORTANCE_SAMPLES = 100_000


def _require(condition: bool, message: str) -> None:
    """A value check of a dataclass: the parser reports the ValueError as the command's one-line error."""
    if not condition:
        raise ValueError(message)


def _parse_xi(value: Any) -> float | str:
    """`--xi 1.0` is a number, `--xi dv` a mode (the flag is a string: HfArgumentParser takes one type per flag)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _parse_score_bound(value: Any) -> float | str | None:
    """`--critic_score_bound 5` is a number and `none` turns the preset's bound off (None would mean "not given");
    anything else is left for MineVaeConfig to refuse by name."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _parse_layers(values: list[Any]) -> list[int | Any]:
    """`--latent_residual_layers 8 12` are layer indices and `none` turns the preset's off (an empty list: None would
    mean "not given"); anything that is not an integer is left for MineVaeConfig to refuse by name."""
    if [str(value).strip().lower() for value in values] == ["none"]:
        return []
    return [int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value for value in values]


def training_arguments_class() -> type:
    from ..training_args import MineVaeTrainingArguments

    return MineVaeTrainingArguments
