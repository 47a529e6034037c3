"""Sharing MINE-VAE models on the Hugging Face Hub: the model card, and pushes that upload a whole model in one commit.

A MINE-VAE repo holds everything needed to use the model: `model.safetensors` (never a pickle), `config.json` with
`auto_map`, the modelling code that `trust_remote_code=True` runs (`modeling_mine_vae.py` and its siblings, copied by
`save_pretrained`), both tokenizers (`encoder_tokenizer/`, `decoder_tokenizer/`, `mine_vae_processor.json`) and a
`README.md` model card. [`push_to_hub`] uploads all of it as one commit, so a revision is always complete.

Imports flow one way: the trainer and the CLI use this module; it uses the model and the processor, never the trainer.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, EvalResult, HfApi, ModelCardData
from transformers.dynamic_module_utils import get_relative_imports

from .modeling_mine_vae import MineVaeModel
from .processing_mine_vae import PROCESSOR_CONFIG_NAME, MineVaeProcessor

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)

TAGS = ("mine-vae", "text-vae", "vae")
DEFAULT_LICENSE = "apache-2.0"
CARD_NAME = "README.md"
CLI_RESULTS_NAME = "mine_vae_results.json"  # written by `mine-vae train`: {"metrics": {...}, ...}
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files that unpickle when loaded (and so can run code). A push never uploads one.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# The Trainer's own pickled state, written next to every save: left out of a push, silently.
TRAINER_PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
# Never part of a model: the Trainer's checkpoints, private files, hidden folders (.git, .cache).
IGNORED_TOP_LEVEL = ("checkpoint-*", "_*", ".*")
# Local folders of the pretrained presets (see `mine_vae.assets`) and the Hub models they hold.
KNOWN_BASE_MODELS = {
    "all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
# The keys `mine_vae.evaluation.evaluate_vae` returns, with what they mean.
METRIC_NAMES = {
    "nll": "NLL (importance-weighted, nats per sentence, lower is better)",
    "ppl": "Perplexity per token",
    "ppl_word": "Perplexity per word",
    "kl": "KL(q(z|x) || p(z)) (nats per sentence)",
    "mi": "Mutual information I_q(x; z) (nats)",
    "au": "Active units",
    "mi_bound": "Critic's lower bound on I(x; z) (nats)",
    "reconstruction": "Reconstruction -log p(x|z) (nats per sentence)",
    "elbo": "ELBO (nats per sentence, higher is better)",
    "bleu": "Reconstruction BLEU",
    "loss": "Training objective",
}
COUNT_METRICS = ("num_examples", "num_tokens", "num_words")
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
MINE_VAE_ARGUMENTS = (
    "critic_learning_rate",
    "critic_steps",
    "critic_warmup_steps",
    "critic_weight_decay",
    "critic_max_grad_norm",
    "critic_lr_scheduler_type",
    "mi_schedule",
    "mi_warmup_steps",
    "kl_schedule",
    "kl_warmup_ratio",
    "kl_warmup_steps",
    "kl_cycles",
    "kl_zero_ratio",
    "kl_increase_ratio",
    "free_bits",
    "eval_importance_samples",
)
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
        if name not in COUNT_METRICS and math.isfinite(value)
    ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        language=_as_list(language) or None,
        tags=list(dict.fromkeys([*TAGS, *_as_list(tags)])),
        base_model=base_models or None,
        datasets=[d for d in datasets if _HUB_ID.fullmatch(d)] or None,
        pipeline_tag="text-generation",
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
    rows = [
        _row("Part", "Built from", "Class", "Size"),
        _row("---", "---", "---", "---"),
        _row(
            "Encoder q(z|x)", _source(model, "encoder"), type(model.encoder).__name__, _shape(config.encoder, encoder)
        ),
        _row(
            "Decoder p(x|z)", _source(model, "decoder"), type(model.decoder).__name__, _shape(config.decoder, decoder)
        ),
        _row("Posterior, latent injection, critic", "new", "", f"{_millions(total - encoder - decoder)} parameters"),
        _row("Total", "", type(model).__name__, f"{_millions(total)} parameters"),
    ]
    injection = {
        "memory": "one extra key/value position in every decoder layer",
        "embedding": "a vector added to every decoder input embedding",
        "both": "one extra key/value position in every decoder layer and a vector added to every input embedding",
    }[config.latent_injection]
    settings = [
        _row("Setting", "Value", "Meaning"),
        _row("---", "---", "---"),
        _row("`latent_size`", config.latent_size, "dimension of z"),
        _row("`pooling`", config.pooling, "how the encoder states become the posterior's input"),
        _row("`latent_injection`", config.latent_injection, f"z enters the decoder as {injection}"),
        _row(
            "`critic`",
            f"{config.critic_num_layers} x {config.critic_hidden_size}",
            "hidden layers x width of the critic f(x, z)",
        ),
        _row("`xi`", config.xi, _xi_meaning(config)),
        _row("`kl_weight` (β)", config.kl_weight, "weight of the KL term"),
        _row("`mi_weight` (λ)", config.mi_weight, "weight of the MI lower bound (subtracted from the loss)"),
        _row("`free_bits`", config.free_bits, "KL per latent dimension (nats) that costs nothing"),
    ]
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
```"""


def _files(with_tokenizers: bool) -> str:
    lines = [
        "## Files",
        "",
        "- `model.safetensors`: the weights (encoder, decoder, posterior and injection heads, critic). MINE-VAE loads "
        "safetensors only and refuses pickled weights (`.bin`, `.pt`), which can run code when loaded.",
        "- `config.json` (with `auto_map`), `generation_config.json`, and the modelling code "
        "(`configuration_mine_vae.py`, `modeling_mine_vae.py`, `critic.py`) that `trust_remote_code=True` runs.",
    ]
    if with_tokenizers:
        lines.append(
            "- `encoder_tokenizer/`, `decoder_tokenizer/`, `mine_vae_processor.json`: the two tokenizers and the "
            "processor's length limits."
        )
    return "\n".join(lines)


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


# ------------------------------------------------------------------------------------------------------------------
# Pushes
# ------------------------------------------------------------------------------------------------------------------
def push_to_hub(
    folder_or_model: str | os.PathLike | MineVaeModel,
    repo_id: str,
    processor: MineVaeProcessor | None = None,
    *,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "50GB",
    **card_kwargs: Any,
) -> CommitInfo:
    """
    Upload a MINE-VAE to the Hub in one commit: safetensors weights, config with `auto_map`, the modelling code for
    `trust_remote_code`, both tokenizers (with `processor`) and a model card.

    Args:
        folder_or_model: a [`MineVaeModel`], or a folder written by `save_pretrained` (see [`push_folder`]).
        repo_id: `"user/name"` (or `"name"` in your own namespace); created if missing.
        processor: the model's [`MineVaeProcessor`]; without it the repo holds no tokenizers.
        revision: the branch to commit to (created from `main` if missing); default `main`.
        commit_message, commit_description, private, token, create_pr: as in `HfApi.create_commit`.
        max_shard_size: passed to `save_pretrained`.
        card_kwargs: passed to [`model_card`] (`training_args`, `metrics`, `dataset_name`, `base_models`, `license`,
            ...).

    Returns:
        The `CommitInfo` (a string: the commit's URL; `.oid` is the commit sha to pin as `revision`).
    """
    if isinstance(folder_or_model, (str, os.PathLike)):
        if processor is not None:
            raise ValueError(
                "processor= goes with a model; a folder must already hold the tokenizers "
                "(processor.save_pretrained(folder))."
            )
        return push_folder(
            folder_or_model,
            repo_id,
            revision=revision,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            create_pr=create_pr,
            **card_kwargs,
        )
    model = folder_or_model
    if getattr(getattr(model, "config", None), "model_type", None) != "mine_vae":
        raise TypeError(f"push_to_hub shares a MineVaeModel, got {type(model).__name__}.")
    if processor is not None:
        processor.check_model(model)
    else:
        logger.warning(
            "Pushing without a processor: the repo will hold no tokenizers, so MineVaeProcessor.from_pretrained("
            f"{repo_id!r}) will fail. Pass processor= to include both."
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(folder)
        card = model_card(model, processor, repo_id=repo_id, **card_kwargs)
        Path(folder, CARD_NAME).write_text(card, encoding="utf-8")
        files = check_model_folder(folder)
        return _commit(
            api, Path(folder), files, repo_id, revision, commit_message, commit_description, create_pr=create_pr
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    **card_kwargs: Any,
) -> CommitInfo:
    """
    Upload a saved MINE-VAE folder (`mine-vae push FOLDER REPO_ID`) in one commit.

    The folder is checked first ([`check_model_folder`]) and the model is loaded from it (with its processor, when
    saved), so a folder that would not load is never pushed. A `README.md` already in the folder is kept; otherwise
    a card is generated (with `card_kwargs`, see [`model_card`]; when no `metrics` are given they are read from the
    folder, see [`folder_metrics`]) and uploaded without being written into the folder. The Trainer's pickled state
    (`training_args.bin`, `optimizer.pt`, ...) and `checkpoint-*` folders are left out.
    """
    folder = Path(folder)
    files = check_model_folder(folder)
    model = MineVaeModel.from_pretrained(folder)
    processor = None
    if (folder / PROCESSOR_CONFIG_NAME).is_file():
        processor = MineVaeProcessor.from_pretrained(folder)
        processor.check_model(model)
    else:
        logger.warning(
            f"{folder} holds no tokenizers ({PROCESSOR_CONFIG_NAME}); save them with processor.save_pretrained(folder) "
            "so that MineVaeProcessor.from_pretrained works on the repo."
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    extra: dict[str, bytes] = {}
    if CARD_NAME not in files:
        card_kwargs.setdefault("metrics", folder_metrics(folder))
        card = model_card(model, processor, repo_id=repo_id, **card_kwargs)
        extra[CARD_NAME] = card.encode("utf-8")
    return _commit(api, folder, files, repo_id, revision, commit_message, commit_description, extra, create_pr)


def check_model_folder(folder: str | os.PathLike) -> list[str]:
    """
    Check that `folder` is a shareable MINE-VAE folder and list the files a push uploads (relative POSIX paths).

    Raises a `ValueError` naming the fix when the folder is not a MINE-VAE (`config.json`'s `model_type`), has no
    safetensors weights, lacks the modelling code that `trust_remote_code` needs, or holds pickled files other than the
    Trainer's own state (which is left out).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the folder `save_pretrained` wrote.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: it is not a saved model (use model.save_pretrained(folder)).")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != "mine_vae":
        raise ValueError(
            f"{folder} holds a {config.get('model_type')!r} model, not a MINE-VAE (config.json's model_type must be "
            "'mine_vae')."
        )
    files, pickles = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(relative.split("/")[0], pattern) for pattern in IGNORED_TOP_LEVEL):
            continue
        if path.name.endswith(PICKLE_SUFFIXES):
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in TRAINER_PICKLES):
                pickles.append(relative)
            continue
        files.append(relative)
    if pickles:
        raise ValueError(
            f"{folder} holds pickled files ({', '.join(pickles)}). MINE-VAE never shares pickles: they can run code "
            "when loaded. Save the model with model.save_pretrained(folder) (it writes model.safetensors) and remove "
            "them."
        )
    if SAFE_WEIGHTS_NAME not in files and SAFE_WEIGHTS_INDEX_NAME not in files:
        raise ValueError(f"{folder} has no {SAFE_WEIGHTS_NAME}; save the model with model.save_pretrained(folder).")
    code = {f"{reference.split('.')[0]}.py" for reference in (config.get("auto_map") or {}).values()}
    for module in list(code):  # the modelling files import their siblings, which must travel with them
        if (folder / module).is_file():
            code.update(f"{name}.py" for name in get_relative_imports(str(folder / module)))
    missing = sorted(code - set(files)) if code else ["config.json's auto_map"]
    if missing:
        raise ValueError(
            f"{folder} lacks {', '.join(missing)}, which loading with trust_remote_code=True needs. Re-save it: "
            "`import mine_vae; mine_vae.MineVaeModel.from_pretrained(folder).save_pretrained(folder)`."
        )
    return files


def folder_metrics(folder: str | os.PathLike) -> dict[str, float]:
    """The evaluation metrics saved in `folder`: the final evaluation of `mine-vae train` (`mine_vae_results.json`),
    else the Trainer's (`all_results.json`, `eval_results.json`, or the latest `eval_*` entries of
    `trainer_state.json`'s log history); `{}` when there are none."""
    folder = Path(folder)
    if (folder / CLI_RESULTS_NAME).is_file():
        metrics = json.loads((folder / CLI_RESULTS_NAME).read_text(encoding="utf-8")).get("metrics")
        if isinstance(metrics, dict) and metrics:
            return metrics
    for name in ("all_results.json", "eval_results.json"):
        if (folder / name).is_file():
            results = json.loads((folder / name).read_text(encoding="utf-8"))
            evaluated = {k: v for k, v in results.items() if k.startswith("eval_")}
            if evaluated:
                return evaluated
    if (folder / "trainer_state.json").is_file():
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        return latest_eval_metrics(state.get("log_history", []))
    return {}


def latest_eval_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The newest value of each `eval_*` metric in a Trainer's `state.log_history`."""
    metrics: dict[str, float] = {}
    for entry in log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    return metrics


def _commit(
    api: HfApi,
    folder: Path,
    files: Sequence[str],
    repo_id: str,
    revision: str | None,
    commit_message: str | None,
    commit_description: str | None,
    extra: Mapping[str, bytes] | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """One commit that adds `files` (from `folder`) and `extra` (in memory), and removes the repo's top-level weights
    and pickles that this upload does not replace."""
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in (extra or {}).items()]
    uploaded = {op.path_in_repo for op in operations}
    # An earlier push may have left other weights (a sharded checkpoint, a pickle) that loaders could pick up instead.
    stale = [
        name
        for name in api.list_repo_files(repo_id, revision=revision)
        if "/" not in name and name not in uploaded and _is_weights_or_pickle(name)
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or "Upload MINE-VAE model",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def _is_weights_or_pickle(name: str) -> bool:
    return (
        name.endswith((".safetensors", *PICKLE_SUFFIXES))
        or name == SAFE_WEIGHTS_INDEX_NAME
        or (name.startswith("pytorch_model") and name.endswith(".index.json"))
    )


# ------------------------------------------------------------------------------------------------------------------
# The Trainer's card
# ------------------------------------------------------------------------------------------------------------------
def write_trainer_model_card(trainer: Trainer, **kwargs: Any) -> str | None:
    """
    `create_model_card` for [`MineVaeTrainer`]: write the MINE-VAE card to `output_dir/README.md` instead of the
    Trainer's generic draft, which `Trainer.push_to_hub` then uploads with the model. Takes the Trainer's keyword
    arguments (`model_name`, `license`, `tags`, `language`, `finetuned_from`, `dataset`, `dataset_tags`); metrics are
    the latest `eval_*` values in the log history. Returns the card's path (None on processes other than the first).
    """
    if not trainer.is_world_process_zero():
        return None
    finetuned_from = kwargs.get("finetuned_from")
    card = model_card(
        trainer.accelerator.unwrap_model(trainer.model),
        trainer.processing_class,
        trainer.args,
        latest_eval_metrics(trainer.state.log_history),
        kwargs.get("dataset") or kwargs.get("dataset_tags") or _dataset_name(trainer.train_dataset),
        finetuned_from,
        repo_id=getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id,
        model_name=kwargs.get("model_name"),
        license=kwargs.get("license") or DEFAULT_LICENSE,
        language=kwargs.get("language"),
        tags=kwargs.get("tags"),
        trained_steps=trainer.state.global_step,
    )
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    path = os.path.join(trainer.args.output_dir, CARD_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path


def _dataset_name(dataset: Any) -> str | None:
    """The Hub name a `datasets.Dataset` was loaded under; None for generic file loaders and in-memory data."""
    name = getattr(getattr(dataset, "info", None), "dataset_name", None)
    generic = ("text", "json", "csv", "parquet", "arrow", "pandas", "generator", "webdataset")
    return name if name and name not in generic else None


# ------------------------------------------------------------------------------------------------------------------
# `mine-vae push FOLDER REPO_ID`
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class PushArguments:
    """How `mine-vae push` uploads a folder."""

    _argument_group_name = "push"

    revision: str | None = field(
        default=None, metadata={"help": "Branch to commit to (created from main if missing); default: main."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo private (no effect if it exists)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License in the generated model card."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Training corpus named in the generated card (a Hub dataset id is linked)."}
    )
    base_models: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the encoder and decoder (default: read from config.json)."}
    )
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})


def register_cli_commands() -> None:
    """Add `push` to the `mine-vae` command line (called by `mine_vae.cli` when it builds its commands)."""
    from . import cli

    def positionals(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("folder", help="Folder written by `mine-vae train` or `save_pretrained`.")
        parser.add_argument("repo_id", help="Hub repo, `user/name` (created if missing).")

    def run(options: PushArguments, extra: argparse.Namespace) -> int:
        try:
            commit = push_folder(
                extra.folder,
                extra.repo_id,
                revision=options.revision,
                commit_message=options.commit_message,
                private=options.private or None,
                license=options.license,
                dataset_name=options.dataset_name,
                base_models=options.base_models,
            )
        except (ValueError, OSError) as error:  # OSError covers the client's HTTP errors (auth, missing repo)
            raise cli.CliError(str(error)) from error
        result = {"command": "push", "folder": extra.folder, "repo_id": extra.repo_id, "revision": commit.oid}
        result["url"] = commit.commit_url
        if options.json_output:
            print(json.dumps(result, indent=2))
        else:
            print(f"Pushed {extra.folder} to {extra.repo_id}: commit {commit.oid} ({commit.commit_url}).")
            print(f"Load it with MineVaeModel.from_pretrained({extra.repo_id!r}, revision={commit.oid!r}).")
        return 0

    cli.register_command(
        cli.Command(
            name="push",
            usage="mine-vae push FOLDER REPO_ID [--revision BRANCH] [--private] [--json] [options]",
            summary="Upload a trained model folder (weights, code, both tokenizers, a model card) to the Hub.",
            examples="""examples:
  mine-vae push mine-vae-small me/mine-vae-ptb
  mine-vae push runs/ptb me/mine-vae-ptb --revision experiment-2 --dataset_name ptb_text_only --json""",
            dataclasses=(PushArguments,),
            run=run,
            positionals=positionals,
        )
    )


__all__ = [
    "PushArguments",
    "check_model_folder",
    "folder_metrics",
    "latest_eval_metrics",
    "model_card",
    "push_folder",
    "push_to_hub",
    "register_cli_commands",
    "write_trainer_model_card",
]
