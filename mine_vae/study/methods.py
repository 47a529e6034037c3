"""The methods of the posterior-collapse study, their `NAME@key=value,...` variants, and the budgets runs get.

Every method trains the same model from the same initial weights per seed; a method only sets `MineVaeConfig` fields
(`model`: the β and λ peaks, ξ, free bits) and `MineVaeTrainingArguments` fields (`training`: the β and λ
schedules, the critic's warm-up). A `Budget` says how long each run trains and how it is evaluated; a `StudyPreset`
pairs a model preset of `mine_vae.presets` with the budgets of its full and quick study.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedConfig, TrainingArguments

from ..configuration_mine_vae import MineVaeConfig
from ..training_args import MineVaeTrainingArguments

DEFAULT_PRESET = "small"
EVAL_SPLIT = "test"  # the split of the final metrics
PROBE_SPLIT = "validation"  # the split whose posteriors give the active-unit and MI curves during training


# --------------------------------------------------------------------------------------------------------------------
# The settings a method may change, read from the dataclasses that define them
# --------------------------------------------------------------------------------------------------------------------
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# Every `MineVaeConfig` field but the two sub-configs: what a variant may override.
CONFIG_SETTINGS: tuple[str, ...] = tuple(
    name for name in _field_names(MineVaeConfig) if name not in ("encoder", "decoder")
)
# The fields `MineVaeConfig` adds to `PreTrainedConfig`: what a run records of the model it trained.
MODEL_SETTINGS: tuple[str, ...] = tuple(
    name for name in CONFIG_SETTINGS if name not in set(_field_names(PreTrainedConfig))
)
# The fields `MineVaeTrainingArguments` adds to `TrainingArguments`: the β and λ schedules and the critic settings.
MINE_TRAINING_SETTINGS: tuple[str, ...] = tuple(
    name for name in _field_names(MineVaeTrainingArguments) if name not in set(_field_names(TrainingArguments))
)
TRAINING_SETTINGS: tuple[str, ...] = _field_names(MineVaeTrainingArguments)

# Settings given as fractions of the run's steps, turned into step counts once the budget is known.
RATIO_SETTINGS: Mapping[str, str] = {
    "critic_warmup_ratio": "critic_warmup_steps",
    "mi_warmup_ratio": "mi_warmup_steps",
}


def checked_fields(cls: type, names: Iterable[str]) -> tuple[str, ...]:
    """`names`, each checked to be a field of the dataclass `cls`: a field renamed there fails on import here, not as a
    KeyError in the report of a study that has trained for hours."""
    names = tuple(names)
    unknown = [name for name in names if name not in set(_field_names(cls))]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}.")
    return names


# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
# MINE settings of the study (see docs/benchmarks.md, "Choosing the MINE settings", for the pilots behind them).
MINE_BETA1 = {"mi_weight": 3.0}  # λ with β = 1 throughout: the MI term must outweigh the KL's pull on z
MINE_ANNEAL = {"mi_weight": 3.0}  # λ on top of β-annealing (λ = 1 collapsed in the pilots)
CRITIC = {"critic_learning_rate": 1e-3, "critic_steps": 1}  # every method, baselines included
CRITIC_WARMUP_RATIO = 0.05  # the critic learns alone for the first 5% of the steps, then λ enters at full weight
KL_WARMUP_RATIO = 0.5  # β-annealing: β rises linearly from 0 to 1 over the first half of the steps
# Li et al. 2020 (Fu et al. 2019 cycles): cyclical β (a schedule) with free bits (part of the objective, the config's)
OPTIMUS = {"kl_schedule": "cyclical", "kl_cycles": 4}
OPTIMUS_FREE_BITS = {"free_bits": 0.5}
# Li et al. 2019: train as an autoencoder (β = 0) for the first half, then β rises to 1 over a tenth of the steps
# and stays there, with free bits keeping what the warm start wrote into z: one cycle of the cyclical schedule.
AE_WARM = {"kl_schedule": "cyclical", "kl_cycles": 1, "kl_zero_ratio": 0.5, "kl_increase_ratio": 0.1}
AE_WARM_FREE_BITS = {"free_bits": 0.5}
# Zhao et al. 2017: the VAE's objective plus a bag-of-words loss, a head predicting the sentence's words from z alone.
# Weight 1: Zhao et al. add the term to the ELBO unweighted, and both it and the reconstruction are sums over the same
# tokens (nats per sentence), so 1 weighs them alike.
BOW = {"bow_weight": 1.0}
_NO_FREE_BITS = {"free_bits": 0.0}  # every other method: the preset's free bits would blur the comparison
_CONSTANT_BETA = {"kl_schedule": "constant"}
_ANNEALED_BETA = {"kl_schedule": "linear", "kl_warmup_ratio": KL_WARMUP_RATIO}
_WATCHING = {"mi_weight": 0.0, "xi": "dv"}  # λ = 0: the critic only measures, with the DV bound (stable, tightest)
_MINE_SCHEDULE = {"critic_warmup_ratio": CRITIC_WARMUP_RATIO, "mi_warmup_ratio": 0.0, "mi_schedule": "linear"}
checked_fields(MineVaeTrainingArguments, [*CRITIC, *RATIO_SETTINGS.values()])  # set outside any method's table


@dataclass(frozen=True)
class Method:
    """One line of the table: `model` overrides `MineVaeConfig`, `training` the `MineVaeTrainingArguments`."""

    name: str
    label: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    role: str  # "baseline", "mine" or "reference"

    def __post_init__(self) -> None:
        checked_fields(MineVaeConfig, self.model)
        unknown = set(self.training) - set(TRAINING_SETTINGS) - set(RATIO_SETTINGS)
        misplaced = sorted(unknown & set(CONFIG_SETTINGS))  # e.g. free_bits, which shapes the objective like β
        if misplaced:
            raise TypeError(
                f"Method {self.name!r}: {', '.join(misplaced)} are MineVaeConfig settings; give them in `model`."
            )
        if unknown:
            raise TypeError(f"Method {self.name!r}: {', '.join(sorted(unknown))} are not training settings.")


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("vae", "VAE (β = 1)", {"kl_weight": 1.0, **_WATCHING, **_NO_FREE_BITS}, _CONSTANT_BETA, "baseline"),
        Method(
            "beta-anneal", "β-annealing", {"kl_weight": 1.0, **_WATCHING, **_NO_FREE_BITS}, _ANNEALED_BETA, "baseline"
        ),
        Method(
            "optimus",
            "Optimus: cyclical β + free bits",
            {"kl_weight": 1.0, **_WATCHING, **OPTIMUS_FREE_BITS},
            OPTIMUS,
            "baseline",
        ),
        Method(
            "bow",
            "VAE + bag-of-words loss",
            {"kl_weight": 1.0, **_WATCHING, **_NO_FREE_BITS, **BOW},
            _CONSTANT_BETA,
            "baseline",
        ),
        Method(
            "mine-xi1",
            "MINE-VAE ξ = 1",
            {"kl_weight": 1.0, "xi": 1.0, **MINE_BETA1, **_NO_FREE_BITS},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-dv",
            'MINE-VAE ξ = "dv"',
            {"kl_weight": 1.0, "xi": "dv", **MINE_BETA1, **_NO_FREE_BITS},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-ema",
            'MINE-VAE ξ = "ema"',
            {"kl_weight": 1.0, "xi": "ema", **MINE_BETA1, **_NO_FREE_BITS},
            {**_CONSTANT_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "mine-anneal",
            "MINE-VAE ξ = 1 + β-annealing",
            {"kl_weight": 1.0, "xi": 1.0, **MINE_ANNEAL, **_NO_FREE_BITS},
            {**_ANNEALED_BETA, **_MINE_SCHEDULE},
            "mine",
        ),
        Method(
            "ae-warm",
            "autoencoder warm start + free bits",
            {"kl_weight": 1.0, **_WATCHING, **AE_WARM_FREE_BITS},
            AE_WARM,
            "baseline",
        ),
        Method(
            "ae",
            "autoencoder-like (β = 0)",
            {"kl_weight": 0.0, **_WATCHING, **_NO_FREE_BITS},
            _CONSTANT_BETA,
            "reference",
        ),
    )
}


def _parse_value(text: str) -> Any:
    """A variant's value as JSON where it is JSON (`5`, `0.1`, `true`), else as the text itself (`dv`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_method(spec: str) -> Method:
    """`NAME` or `NAME@key=value,...`: a method of `METHODS`, with settings overridden for a variant (any
    `MineVaeConfig` or `MineVaeTrainingArguments` field, or `critic_warmup_ratio` / `mi_warmup_ratio` as fractions of
    the steps). A `ValueError` names what is wrong with `spec`."""
    name, _, overrides = spec.partition("@")
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; use one of {', '.join(METHODS)} (optionally NAME@key=value,...).")
    base = METHODS[name]
    if not overrides:
        return base
    model, training = dict(base.model), dict(base.training)
    training_fields = set(TRAINING_SETTINGS) | set(RATIO_SETTINGS)
    for item in overrides.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Method variant {spec!r}: {item!r} is not key=value.")
        if key in training_fields:
            training[key] = _parse_value(value)
        elif key in CONFIG_SETTINGS:
            model[key] = _parse_value(value)
        else:
            raise ValueError(f"Method variant {spec!r}: {key!r} is neither a MineVaeConfig nor a training setting.")
    return Method(spec, f"{base.label} [{overrides}]", model, training, base.role)


# --------------------------------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """What every run gets: optimizer steps, and how each run is evaluated. (Each field is also a flag of
    `mine-vae study`, with this help.)"""

    steps: int = field(metadata={"help": "Optimizer steps per run."})
    eval_examples: int = field(
        metadata={"help": "Sentences of the evaluation split (the first N) for IW-NLL, PPL, KL, MI, AU and the bound."}
    )
    importance_samples: int = field(metadata={"help": "Importance samples K of the IW-NLL."})
    bleu_examples: int = field(metadata={"help": "Evaluation sentences (the first N) reconstructed greedily for BLEU."})
    probe_examples: int = field(
        default=256, metadata={"help": "Validation sentences whose posteriors give AU and MI at every log step."}
    )
    probe_bleu_examples: int = field(
        default=0,
        metadata={"help": "Probe sentences reconstructed greedily for a BLEU curve at every log step (0: none)."},
    )
    log_points: int = field(default=20, metadata={"help": "Log lines (curve points) per run."})
    saves: int = field(default=4, metadata={"help": "Checkpoints per run (the points a run resumes from)."})
    lr_warmup_ratio: float = field(  # the small preset's 100 of 1200 steps
        default=0.08, metadata={"help": "Learning-rate warm-up as a fraction of the steps."}
    )
    eval_split: str = field(
        default=EVAL_SPLIT,
        metadata={
            "help": f"Split of the final metrics: {EVAL_SPLIT}, or {PROBE_SPLIT} for pilots that choose settings (the "
            "test split then stays unseen)."
        },
    )

    def __post_init__(self) -> None:
        for name in ("steps", "eval_examples", "importance_samples", "bleu_examples", "probe_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"The budget's {name} must be at least 1, got {getattr(self, name)}.")
        for name in ("log_points", "saves"):
            if getattr(self, name) < 1:
                raise ValueError(f"The budget's {name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.lr_warmup_ratio < 1:
            raise ValueError(f"The budget's lr_warmup_ratio must be in [0, 1), got {self.lr_warmup_ratio}.")
        if self.eval_split not in (EVAL_SPLIT, PROBE_SPLIT):
            raise ValueError(f"The budget's eval_split must be {EVAL_SPLIT} or {PROBE_SPLIT}, got {self.eval_split!r}.")

    @property
    def logging_steps(self) -> int:
        return max(1, self.steps // self.log_points)

    @property
    def save_steps(self) -> int:
        return max(1, self.steps // self.saves)


QUICK = Budget(steps=320, eval_examples=500, importance_samples=5, bleu_examples=100)
FULL = Budget(steps=640, eval_examples=1000, importance_samples=10, bleu_examples=200)


# The quick tier of both studies of the pretrained pair: 1 seed x 150 steps, evaluated on 100 test sentences.
PAIR_QUICK = Budget(
    steps=150,
    eval_examples=100,
    importance_samples=3,
    bleu_examples=50,
    probe_examples=64,
    probe_bleu_examples=16,
    log_points=6,
    saves=2,
    lr_warmup_ratio=0.1,
)


@dataclass(frozen=True)
class StudyPreset:
    """What `mine-vae study --preset NAME` runs: every method trains the model of the `mine_vae.presets` preset of the
    same name (built from scratch on the corpus), with these budgets and seeds."""

    name: str
    description: str
    full: Budget
    quick: Budget
    seeds: int = 3
    quick_seeds: int = 1
    methods: tuple[str, ...] | None = None  # what runs when no method is named (None: every method of METHODS)

    def __post_init__(self) -> None:
        for spec in self.methods or ():
            resolve_method(spec)

    def budget(self, quick: bool = False, **overrides: Any) -> Budget:
        """The full or quick budget, with the given fields changed (None leaves a field as it is)."""
        base = self.quick if quick else self.full
        return dataclasses.replace(base, **{key: value for key, value in overrides.items() if value is not None})

    def seed_count(self, quick: bool = False) -> int:
        return self.quick_seeds if quick else self.seeds

    def default_methods(self) -> list[str]:
        return list(self.methods or METHODS)


STUDY_PRESETS: dict[str, StudyPreset] = {
    preset.name: preset
    for preset in (
        StudyPreset(
            "small",
            "the CPU study: 3 seeds x 640 steps (quick: 1 seed x 320 steps, ~15 min on 2 idle cores)",
            FULL,
            QUICK,
            # The nine methods this study has run (docs/benchmarks.md); `bow` came later, for the collapse regime.
            methods=(
                "vae",
                "beta-anneal",
                "optimus",
                "mine-xi1",
                "mine-dv",
                "mine-ema",
                "mine-anneal",
                "ae-warm",
                "ae",
            ),
        ),
        StudyPreset(
            "minilm-smollm2",
            "the pretrained regime (MiniLM -> z -> SmolLM2, both frozen): 2 seeds x 5 methods x 700 steps, ~3 h on 2 "
            "idle cores (quick: 1 seed x 150 steps, ~25 min)",
            Budget(
                steps=700,
                eval_examples=500,
                importance_samples=10,
                bleu_examples=200,
                probe_examples=128,
                probe_bleu_examples=24,
                log_points=14,
                saves=2,
                lr_warmup_ratio=0.03,
            ),
            PAIR_QUICK,
            seeds=2,
            # The baselines the pretrained regime is known for, and the ξ that held in the CPU study (the NWJ bound's
            # e^f diverged in long runs of both presets).
            methods=("vae", "beta-anneal", "optimus", "mine-dv", "ae-warm"),
        ),
        StudyPreset(
            "minilm-smollm2-embed",
            "the collapse regime (MiniLM -> z -> SmolLM2's embeddings only, all the decoder's layers learning): 6 "
            "methods x 3 seeds x 300 steps = 18 runs (quick: 6 runs, 1 seed x 150 steps)",
            Budget(
                steps=300,
                eval_examples=250,
                importance_samples=5,
                bleu_examples=100,
                probe_examples=128,
                probe_bleu_examples=8,
                log_points=10,
                saves=2,
                lr_warmup_ratio=0.05,
            ),
            dataclasses.replace(PAIR_QUICK, probe_bleu_examples=8),  # the pair's quick tier, fewer probe decodings
            seeds=3,
            quick_seeds=1,
            # Where the plain VAE collapses: the baselines known against collapse (annealing, Optimus' cyclical β with
            # free bits, the bag-of-words loss) beside MINE-VAE with the two estimators that held in long runs. λ per
            # estimator from the quick tier's pilot (1 seed, 150 steps, docs/benchmarks.md), where the VAE kept no
            # active unit: at λ = 10, DV kept 3 and EMA 4; at λ = 3 neither kept any; NLL within 0.4 %.
            methods=("vae", "beta-anneal", "optimus", "bow", "mine-dv@mi_weight=10", "mine-ema@mi_weight=10"),
        ),
        StudyPreset(
            "tiny",
            "a smoke run of the machinery on the tiny model (seconds per run)",
            Budget(
                steps=16,
                eval_examples=64,
                importance_samples=2,
                bleu_examples=16,
                probe_examples=32,
                probe_bleu_examples=4,
                log_points=4,
            ),
            Budget(steps=8, eval_examples=32, importance_samples=2, bleu_examples=8, probe_examples=16, log_points=2),
        ),
    )
}


def get_study_preset(name: str) -> StudyPreset:
    """The study of preset `name`; a `ValueError` naming the presets that have one otherwise."""
    if name in STUDY_PRESETS:
        return STUDY_PRESETS[name]
    known = ", ".join(f"{key} ({preset.description})" for key, preset in STUDY_PRESETS.items())
    from ..presets import PRESETS

    if name in PRESETS:  # e.g. the pretrained pair: a preset of `mine-vae train`, not (yet) a study
        raise ValueError(f"Preset {name!r} has no study yet; studies exist for: {known}.")
    raise ValueError(f"Unknown preset {name!r}; studies exist for: {known}.")
