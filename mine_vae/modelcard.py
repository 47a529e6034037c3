"""The model card (`README.md`) of a MINE-VAE: YAML front matter for the Hub (license, tags, base models, datasets,
evaluation results), then Markdown on the model, its training, its evaluation, its use and the repo's files.

[`model_card`] only builds the text; `mine_vae.hub` writes it next to the model and uploads it ([`push_to_hub`],
[`push_folder`], and the Trainer's `create_model_card`), and re-exports it as `mine_vae.hub.model_card`.

Imports flow one way: `mine_vae.hub` uses this module; it reads the model and processor it is given (importing
neither at run time), and reads the names of the training arguments' fields from `MineVaeTrainingArguments`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCardData
from transformers import PreTrainedConfig, TrainingArguments

from .evaluation import describe_mi
from .training_args import MineVaeTrainingArguments

if TYPE_CHECKING:
    from .modeling_mine_vae import MineVaeModel
    from .processing_mine_vae import MineVaeProcessor

TAGS = ("mine-vae", "text-vae", "vae")
DEFAULT_LICENSE = "apache-2.0"
# Local folders of the pretrained presets (see `mine_vae.assets`) and the Hub models they hold.
KNOWN_BASE_MODELS = {
    "all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
# The keys `mine_vae.evaluation.evaluate_vae` returns, with what they mean.
METRIC_NAMES = {
    "nll": "NLL (importance-weighted, nats per sentence, lower is better)",
    "decoder_nll": "NLL of the decoder alone, without z, on the same sentences (nats per sentence)",
    "latent_gain": "Decoder alone minus the VAE's NLL: what z is worth after its KL (nats; > 0: the VAE is better)",
    "ppl": "Perplexity per token",
    "ppl_word": "Perplexity per word",
    "kl": "KL(q(z|x) || p(z)) (nats per sentence)",
    "mi": "Mutual information I_q(x; z) (nats; at most log N over N sentences)",
    "mi_ceiling": "log N, the most the MI estimate over N sentences can read",
    "au": "Active units",
    "mi_bound": "Critic's lower bound on I(x; z) (nats)",
    "reconstruction": "Reconstruction -log p(x|z) (nats per sentence)",
    "elbo": "ELBO (nats per sentence, higher is better)",
    "bleu": "Reconstruction BLEU (beam search over 4, no repeated 4-gram)",
    "bleu_greedy": "Reconstruction BLEU, plain greedy decoding",
    "loss": "Training objective",
}
COUNT_METRICS = ("num_examples", "num_tokens", "num_words")
# What qualifies another metric rather than measuring the model: in the card's table, not in its model index.
CONTEXT_METRICS = (*COUNT_METRICS, "mi_ceiling")
# MineVaeTrainingArguments worth a line in the card: the Trainer's core knobs, then the MINE-VAE ones.
CORE_ARGUMENTS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "seed",
)
# Every field MineVaeTrainingArguments adds to the Trainer's: a new one gets its line without editing the card.
MINE_VAE_ARGUMENTS: tuple[str, ...] = tuple(
    spec.name
    for spec in dataclasses.fields(MineVaeTrainingArguments)
    if spec.name not in {base.name for base in dataclasses.fields(TrainingArguments)}
)
# What the model-settings table says of the MineVaeConfig fields it knows; it lists every field of the config's own
# (see `model_settings`), a new one with its value alone.
SETTING_MEANINGS = {
    "latent_size": "dimension of z",
    "pooling": "how the encoder states become the posterior's input",
    "latent_vocab_bias": "whether z also adds a bias over the vocabulary to every next-token distribution",
    "critic_hidden_size": "width of the critic f(x, z)'s hidden layers",
    "critic_num_layers": "hidden layers of the critic f(x, z)",
    "critic_score_bound": "c of the critic's bounded scores c tanh(f / c), which cap the bound's estimate at 2c "
    "(None: unbounded)",
    "ema_decay": 'decay of the moving average of E_marginal[e^f] (used with xi = "ema")',
    "kl_weight": "β, the weight of the KL term",
    "mi_weight": "λ, the weight of the MI lower bound (subtracted from the loss)",
    "free_bits": "KL per latent dimension (nats) that costs nothing",
    "initializer_range": "standard deviation of the initial weights of the heads this model adds",
}
# Fields of MineVaeConfig that say nothing of the VAE itself: its decoding plumbing and transformers' generic switches.
_NOT_MODEL_SETTINGS = {"use_cache", "tie_word_embeddings"}


CITATION = (
    "@inproceedings{qian-cheung-2019-enhancing,\n"
    '    title = "Enhancing Variational Autoencoders with Mutual Information Neural Estimation for Text Generation",\n'
    '    author = "Qian, Dong and Cheung, William K.",\n'
    '    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing and the '
    '9th International Joint Conference on Natural Language Processing (EMNLP-IJCNLP)",\n'
    "    month = nov,\n"
    '    year = "2019",\n'
    '    address = "Hong Kong, China",\n'
    '    publisher = "Association for Computational Linguistics",\n'
    '    url = "https://aclanthology.org/D19-1416",\n'
    '    doi = "10.18653/v1/D19-1416",\n'
    '    pages = "4047--4057",\n'
    "}"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


# ------------------------------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------------------------------
def model_card(
    model: MineVaeModel,
    processor: MineVaeProcessor | None = None,
    training_args: TrainingArguments | Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset_name: str | Sequence[str] | None = None,
    base_models: str | Sequence[str] | None = None,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str = DEFAULT_LICENSE,
    language: str | Sequence[str] | None = None,
    tags: str | Sequence[str] | None = None,
    trained_steps: int | None = None,
) -> str:
    """
    The model card (`README.md`) of a MINE-VAE: YAML front matter for the Hub, then Markdown.

    Args:
        model: the [`MineVaeModel`] (sizes and settings are read from it).
        processor: its [`MineVaeProcessor`], to describe the tokenizers.
        training_args: the [`MineVaeTrainingArguments`] (or a dict of them) it was trained with.
        metrics: evaluation results, e.g. from `evaluate_vae` or `trainer.evaluate()` (`eval_` prefixes are dropped).
        dataset_name: the training corpus (a Hub dataset id is also listed in the metadata).
        base_models: Hub ids of the encoder and decoder; default: their `name_or_path` when it is a Hub id (or a
            known local folder of `mine_vae.assets`).
        repo_id: the repo the card is for, used in the usage snippet.
        model_name: the title (default: the repo's name).
        license: the weights' license; Apache-2.0 like mine-vae and both pretrained presets' models: change it when
            your encoder, decoder or data say otherwise.
        language, tags: extra metadata.
        trained_steps: optimizer steps taken, when known.
    """
    repo_id = repo_id or "your-name/your-mine-vae"
    model_name = model_name or repo_id.split("/")[-1]
    datasets = _as_list(dataset_name)
    metrics = _normalise_metrics(metrics or {})
    if base_models is None:
        base_models = [hub_id for side in ("encoder", "decoder") if (hub_id := _base_model_id(model, side))]
    base_models = _as_list(base_models)
    args = _arguments(training_args)

    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name="Text VAE",
            dataset_type=datasets[0] if datasets else "custom",
            dataset_name=datasets[0] if datasets else "evaluation set",
            metric_type=name,
            metric_value=round(value, 4),
            metric_name=METRIC_NAMES.get(name, name),
        )
        for name, value in metrics.items()
        if name not in CONTEXT_METRICS and math.isfinite(value)
    ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        language=_as_list(language) or None,
        tags=list(dict.fromkeys([*TAGS, *_as_list(tags)])),
        base_model=base_models or None,
        datasets=[d for d in datasets if _HUB_ID.fullmatch(d)] or None,
        # What `transformers.pipeline(model=repo, trust_remote_code=True)` serves: the MINE-VAE pipeline, registered
        # under feature-extraction (posterior means by default; reconstruct, sample, interpolate by `mode=`).
        pipeline_tag="feature-extraction",
        model_name=model_name,
        eval_results=eval_results or None,
    )
    sections = [
        _about(model, model_name),
        _architecture(model, processor),
        _training(args, datasets, trained_steps),
        _evaluation(metrics),
        _usage(repo_id),
        _files(processor is not None),
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    body = "\n\n".join(section for section in sections if section)
    return f"---\n{card_data.to_yaml()}\n---\n\n{body}\n"


def _about(model: MineVaeModel, model_name: str) -> str:
    config = model.config
    return (
        f"# {model_name}\n\n"
        "A **MINE-VAE** text variational autoencoder (Qian & Cheung, 2019), built and trained with the `mine-vae` "
        "library on Hugging Face transformers. An encoder maps a sentence to a Gaussian posterior over a latent z "
        f"({config.latent_size} dimensions) and a causal language model decodes text from z. During training a critic "
        "network f(x, z) gives a lower bound on the mutual information I(x; z), which the objective rewards: it keeps "
        "z informative and counters posterior collapse. Use it to reconstruct or paraphrase sentences, sample new ones "
        "from the prior, and interpolate "
        "between sentences in the latent space."
    )


def _architecture(model: MineVaeModel, processor: MineVaeProcessor | None) -> str:
    config = model.config
    total = _num_parameters(model)
    encoder, decoder = _num_parameters(model.encoder), _num_parameters(model.decoder)
    heads = "Posterior, latent injection, " + ("vocabulary bias, " if config.latent_vocab_bias else "") + "critic"
    rows = [
        _row("Part", "Built from", "Class", "Size"),
        _row("---", "---", "---", "---"),
        _row(
            "Encoder q(z|x)", _source(model, "encoder"), type(model.encoder).__name__, _shape(config.encoder, encoder)
        ),
        _row(
            "Decoder p(x|z)", _source(model, "decoder"), type(model.decoder).__name__, _shape(config.decoder, decoder)
        ),
        _row(heads, "new", "", f"{_millions(total - encoder - decoder)} parameters"),
        _row("Total", "", type(model).__name__, f"{_millions(total)} parameters"),
    ]
    positions = config.latent_memory_positions
    memory = "one extra key/value position" if positions == 1 else f"{positions} extra key/value positions"
    memory += " in every decoder layer"
    injection = {
        "memory": memory,
        "embedding": "a vector added to every decoder input embedding",
        "both": f"{memory} and a vector added to every input embedding",
    }[config.latent_injection]
    meanings = {
        **SETTING_MEANINGS,
        "latent_injection": f"z enters the decoder as {injection}",
        "xi": _xi_meaning(config),
    }
    settings = [_row("Setting", "Value", "Meaning"), _row("---", "---", "---")]
    settings += [_row(f"`{name}`", getattr(config, name), meanings.get(name, "")) for name in model_settings(config)]
    text = "## Model\n\n" + "\n".join(rows) + "\n\n" + "\n".join(settings)
    if processor is not None:
        text += (
            "\n\nTokenizers (both in this repo, loaded together by `MineVaeProcessor.from_pretrained`): encoder "
            f"{_tokenizer(processor.encoder_tokenizer, processor.max_encoder_length)}; decoder "
            f"{_tokenizer(processor.decoder_tokenizer, processor.max_decoder_length)}."
        )
    return text


def _training(args: dict[str, Any], datasets: list[str], trained_steps: int | None) -> str:
    lines = [f"Data: {', '.join(f'`{d}`' for d in datasets) if datasets else 'not recorded'}."]
    if trained_steps is not None:
        lines.append(f"Optimizer steps taken: {trained_steps}.")
    if args:
        lines.append(
            "Trained with `MineVaeTrainer`: each step takes `critic_steps` critic updates on (x, z) with z detached, "
            "then one VAE update on reconstruction + β KL - λ bound, β and λ following the schedules below."
        )
        table = [_row("Argument", "Value"), _row("---", "---")]
        table += [_row(f"`{name}`", args[name]) for name in (*CORE_ARGUMENTS, *MINE_VAE_ARGUMENTS) if name in args]
        lines.append("\n".join(table))
    return "## Training\n\n" + "\n\n".join(lines)


def _evaluation(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    table = [_row("Metric", "Value", "Meaning"), _row("---", "---", "---")]
    for name, value in metrics.items():
        shown = int(value) if name in COUNT_METRICS or name == "au" else f"{value:.4g}"
        if name == "mi" and "mi_ceiling" in metrics:
            shown = describe_mi(value, metrics["mi_ceiling"])
        table.append(_row(f"`{name}`", shown, METRIC_NAMES.get(name, "")))
    return (
        "## Evaluation\n\n"
        + "\n".join(table)
        + "\n\nDefinitions: see `mine_vae.evaluation` (importance-weighted NLL as in Burda et al. 2016; MI under the "
        "aggregate posterior and active units as in He et al. 2019)."
    )


def _usage(repo_id: str) -> str:
    return f"""## Usage

With the `mine-vae` package installed:

```python
import mine_vae  # registers MINE-VAE with transformers' Auto classes
from mine_vae import MineVaeModel, MineVaeProcessor

model = MineVaeModel.from_pretrained("{repo_id}").eval()
processor = MineVaeProcessor.from_pretrained("{repo_id}")  # both tokenizers, one call

# Reconstruct: encode each sentence, decode from the posterior mean.
batch = processor(["the cat sat on the mat", "a dog ran in the park"])
ids = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=30)
print(processor.batch_decode(ids))

# Sample new sentences from the prior N(0, I).
print(processor.batch_decode(model.generate(latent=model.sample_prior(3), do_sample=True, max_new_tokens=30)))

# Interpolate between the two sentences in the latent space.
posterior = model.encode(batch["input_ids"], batch["attention_mask"])
path = model.interpolate(posterior.mu[0], posterior.mu[1], num_steps=5)
print(processor.batch_decode(model.generate(latent=path, max_new_tokens=30)))
```

Pin a revision (a commit sha, branch or tag) to get exactly this version later:
`MineVaeModel.from_pretrained("{repo_id}", revision="<sha>")`, and the same `revision=` for the processor.

Without installing mine-vae, transformers runs the modelling code stored in this repo (read it first, and pin a
`revision` so that it cannot change under you):

```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
encoder_tokenizer = AutoTokenizer.from_pretrained("{repo_id}", subfolder="encoder_tokenizer")
decoder_tokenizer = AutoTokenizer.from_pretrained("{repo_id}", subfolder="decoder_tokenizer")
```

Or as a pipeline (embeddings by default; `mode="reconstruct"`, `"sample"`, `"interpolate"` generate, with any option of
`generate`):

```python
from transformers import pipeline

pipe = pipeline(model="{repo_id}", trust_remote_code=True)
embeddings = pipe(["the cat sat on the mat"])                     # posterior means
print(pipe(mode="sample", num_samples=3, do_sample=True, top_p=0.9))
```"""


def _files(with_tokenizers: bool) -> str:
    lines = [
        "## Files",
        "",
        "- `model.safetensors`: the weights (encoder, decoder, posterior and injection heads, critic). MINE-VAE loads "
        "safetensors only and refuses pickled weights (`.bin`, `.pt`), which can run code when loaded.",
        "- `config.json` (with `auto_map`), `generation_config.json`, and the modelling code "
        "(`configuration_mine_vae.py`, `modeling_mine_vae.py` with `pretrained_mine_vae.py`, `latent_path.py`, "
        "`generation_mine_vae.py` and `critic.py`, `pipeline_mine_vae.py`, `sentence_mine_vae.py` with "
        "`modules.json` for sentence-transformers) that `trust_remote_code=True` runs.",
    ]
    if with_tokenizers:
        lines.append(
            "- `encoder_tokenizer/`, `decoder_tokenizer/`, `mine_vae_processor.json`: the two tokenizers and the "
            "processor's length limits."
        )
    return "\n".join(lines)


def model_settings(config: Any) -> list[str]:
    """The fields the config's class adds to `PreTrainedConfig`, in their order, but the encoder and decoder configs,
    the token ids and transformers' generic switches: what the card's model-settings table lists."""
    inherited = {spec.name for spec in dataclasses.fields(PreTrainedConfig)}
    sub_configs = set(getattr(config, "sub_configs", None) or ()) | {"encoder", "decoder"}
    return [
        spec.name
        for spec in dataclasses.fields(type(config))
        if spec.name not in inherited | sub_configs | _NOT_MODEL_SETTINGS and not spec.name.endswith("_token_id")
    ]


def _xi_meaning(config: Any) -> str:
    if config.xi == "dv":
        return "ξ = 1 / E_marginal[e^f]: the Donsker-Varadhan bound (MINE)"
    if config.xi == "ema":
        return f"ξ from a moving average of E_marginal[e^f] (MINE's bias-corrected gradient, decay {config.ema_decay})"
    if float(config.xi) == 1.0:
        return "ξ = 1: the NWJ bound E_joint[f] - E_marginal[e^(f-1)]"
    return "fixed ξ in the bound E_joint[f] - ξ E_marginal[e^f] + log ξ + 1"


def _base_model_id(model: MineVaeModel, side: str) -> str | None:
    """The Hub id an encoder/decoder was loaded from, or None (built from a config, or an unknown local folder)."""
    name = str(getattr(getattr(model.config, side), "_name_or_path", "") or "")
    if not name:
        return None
    local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.path.exists(name)
    if not local:
        return name if _HUB_ID.fullmatch(name) else None
    lowered = name.lower()
    return next((hub_id for marker, hub_id in KNOWN_BASE_MODELS.items() if marker in lowered), None)


def _source(model: MineVaeModel, side: str) -> str:
    hub_id = _base_model_id(model, side)
    if hub_id is not None:
        return f"[{hub_id}](https://huggingface.co/{hub_id})"
    name = str(getattr(getattr(model.config, side), "_name_or_path", "") or "")
    return f"local folder `{Path(name).name}`" if name else "a config (trained from scratch)"


def _shape(config: Any, num_parameters: int) -> str:
    parts = [f"{_millions(num_parameters)} parameters"]
    for attribute, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden"), ("vocab_size", "vocabulary")):
        value = getattr(config, attribute, None)
        if value is not None:
            parts.append(f"{value} {label}")
    return ", ".join(parts)


def _tokenizer(tokenizer: Any, max_length: int) -> str:
    return f"{type(tokenizer).__name__} ({len(tokenizer)} tokens, up to {max_length} tokens a sentence)"


def _num_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count:,}"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _normalise_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only, `eval_`/`test_` prefixes dropped (the Trainer adds them), known metrics first."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[re.sub(r"^(eval|test)_", "", key)] = float(value)
    order = [*METRIC_NAMES, *COUNT_METRICS]
    return dict(sorted(out.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def _arguments(training_args: TrainingArguments | Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments worth showing, without the ones a chosen schedule ignores."""
    if training_args is None:
        return {}
    args = dict(training_args) if isinstance(training_args, Mapping) else training_args.to_dict()
    if args.get("max_steps", -1) > 0:
        args.pop("num_train_epochs", None)
    else:
        args.pop("max_steps", None)
    if args.get("kl_schedule") != "cyclical":
        for name in ("kl_cycles", "kl_zero_ratio", "kl_increase_ratio"):
            args.pop(name, None)
    if args.get("kl_schedule") != "linear":
        args.pop("kl_warmup_ratio", None)
        args.pop("kl_warmup_steps", None)
    elif args.get("kl_warmup_steps"):
        args.pop("kl_warmup_ratio", None)  # the steps override the ratio
    else:
        args.pop("kl_warmup_steps", None)
    if args.get("mi_schedule") != "linear":
        args.pop("mi_warmup_steps", None)
    return {name: value for name, value in args.items() if value is not None}


__all__ = ["model_card"]
