"""Sharing MINE-VAE models on the Hugging Face Hub: pushes that upload a whole model in one commit, the checks that
come first, and the Trainer's card and `mine-vae push` built on them.

A MINE-VAE repo holds everything needed to use the model: `model.safetensors` (never a pickle), `config.json` with
`auto_map`, the modelling code that `trust_remote_code=True` runs (`modeling_mine_vae.py` and its siblings, copied by
`save_pretrained`), both tokenizers (`encoder_tokenizer/`, `decoder_tokenizer/`, `mine_vae_processor.json`) and a
`README.md` model card. [`push_to_hub`] uploads all of it as one commit, so a revision is always complete. The card's
text comes from `mine_vae.modelcard` ([`model_card`], also importable from here).

Imports flow one way: the trainer and the CLI use this module; it uses the model, the processor and
`mine_vae.modelcard`, never the trainer.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi
from transformers.dynamic_module_utils import get_relative_imports

from .modelcard import DEFAULT_LICENSE, model_card
from .modeling_mine_vae import MineVaeModel
from .processing_mine_vae import PROCESSOR_CONFIG_NAME, MineVaeProcessor, has_processor_config

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

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
    if has_processor_config(folder):
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
    pending = list(code)
    while pending:  # the modelling files import their siblings (and those theirs), which must travel with them
        module = pending.pop()
        if (folder / module).is_file():
            imported = {f"{name}.py" for name in get_relative_imports(str(folder / module))} - code
            code |= imported
            pending += imported
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


__all__ = [
    "check_model_folder",
    "folder_metrics",
    "latest_eval_metrics",
    "model_card",
    "push_folder",
    "push_to_hub",
    "write_trainer_model_card",
]
