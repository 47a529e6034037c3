"""Checkpoint folders and the pickle-free state files in them: both optimizers' and schedulers' states and the RNG
states as safetensors + JSON, which `MineVaeTrainer` writes in place of the Trainer's pickled .pt/.pth files."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.trainer_pt_utils import set_rng_state_for_device
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    is_torch_hpu_available,
    is_torch_mlu_available,
    is_torch_musa_available,
    is_torch_npu_available,
    is_torch_xla_available,
)


class _StateFiles(NamedTuple):
    """Where one optimizer's and its scheduler's state go: tensors in safetensors, everything else in JSON."""

    tensors: str
    meta: str


CRITIC_STATE = _StateFiles("critic_optimizer.safetensors", "critic_state.json")
OPTIMIZER_STATE = _StateFiles("optimizer.safetensors", "optimizer_state.json")
# Under DeepSpeed ZeRO-3 only: the critic's weights, which ZeRO-3's own checkpoint restores only for the parameters of
# the optimizer it wraps (the VAE's).
CRITIC_WEIGHTS = "critic_weights.safetensors"
TRAINING_ARGS_JSON = "training_args.json"
# The pickle the Trainer's `_save` writes the arguments to; MineVaeTrainer removes it once the JSON is written.
PICKLED_TRAINING_ARGS = "training_args.bin"


def step_checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders in `output_dir`, oldest first (other `checkpoint-*` names are the user's)."""
    if not os.path.isdir(output_dir):
        return []
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.rpartition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(step))
    return [os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}") for step in sorted(steps)]


def rotate_step_checkpoints(output_dir: str, limit: int | None, best: str | None = None) -> None:
    """Delete the oldest `checkpoint-<step>` folders beyond `limit`, never the newest nor `best`."""
    if not limit or limit <= 0:
        return
    folders = step_checkpoints(output_dir)
    protected = {folders[-1]} if folders else set()
    if best is not None:
        protected.add(os.path.join(output_dir, os.path.basename(os.path.normpath(best))))
    for folder in folders[: max(len(folders) - max(limit, len(protected)), 0)]:
        if folder not in protected:
            shutil.rmtree(folder, ignore_errors=True)


def is_complete_checkpoint(folder: str) -> bool:
    """True when `folder` holds everything a resume needs: the Trainer writes `trainer_state.json` last."""
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.isfile(os.path.join(folder, CRITIC_STATE.meta))


def last_complete_checkpoint(output_dir: str, exclude: str | None = None) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir` that a resume can use, skipping interrupted saves (and
    `exclude`, e.g. a checkpoint found damaged)."""
    excluded = os.path.abspath(exclude) if exclude is not None else None
    complete = [
        folder
        for folder in step_checkpoints(output_dir)
        if os.path.abspath(folder) != excluded and is_complete_checkpoint(folder)
    ]
    return complete[-1] if complete else None


def resume_point(output_dir: str, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint a run resumes from: `True` picks the newest complete one in `output_dir`, a folder must be a
    complete checkpoint, `None` / `False` start afresh. A ValueError names the fix."""
    if resume_from_checkpoint is True:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"No complete checkpoint in {output_dir} to resume from; check the output folder, or start a new "
                "run without resuming."
            )
        return checkpoint
    if isinstance(resume_from_checkpoint, str) and not is_complete_checkpoint(resume_from_checkpoint):
        newest = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
        raise ValueError(
            f"{resume_from_checkpoint} is not a complete checkpoint (an interrupted save, or no checkpoint-N folder "
            f"holding trainer_state.json); resume from {newest or 'an earlier checkpoint'} instead."
        )
    return resume_from_checkpoint or None


# --------------------------------------------------------------------------------------------------------------------
# Pickle-free state files
# --------------------------------------------------------------------------------------------------------------------
# Tensors found inside the JSON part (e.g. a capturable optimizer's lr) go to the safetensors file under this prefix;
# the optimizer's per-parameter tensors keep the `{param}.{name}` keys that earlier versions wrote.
_JSON_TENSOR_PREFIX = "__json__."


def save_state(
    output_dir: str, optimizer_state: dict, scheduler_state: dict, files: _StateFiles = CRITIC_STATE
) -> None:
    """An optimizer's and its scheduler's state: tensors in safetensors, everything else in JSON, no pickle anywhere.
    The JSON is written last, so its presence means the pair is whole."""
    tensors: dict[str, torch.Tensor] = {}
    other_state: dict[str, dict[str, Any]] = {}
    for param, state in optimizer_state["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}.{name}"] = value.detach().cpu().contiguous()
            else:  # e.g. an integer step count kept outside a tensor
                other_state.setdefault(str(param), {})[name] = _to_json(value, tensors)
    meta = {
        "param_groups": _to_json(optimizer_state["param_groups"], tensors),
        "scheduler": _to_json(scheduler_state, tensors),
        "state": other_state,
    }
    save_file(tensors, os.path.join(output_dir, files.tensors))
    with open(os.path.join(output_dir, files.meta), "w", encoding="utf-8") as f:
        json.dump(meta, f)


def load_state(checkpoint: str, files: _StateFiles = CRITIC_STATE) -> tuple[dict, dict]:
    """The optimizer and scheduler state dicts `save_state` wrote; a damaged file is a one-line ValueError."""
    meta_path = os.path.join(checkpoint, files.meta)
    meta = read_checkpoint_file(meta_path, _read_json)
    tensors = read_checkpoint_file(os.path.join(checkpoint, files.tensors), load_file)
    try:
        state: dict[int, dict[str, Any]] = defaultdict(dict)
        for key, value in tensors.items():
            if not key.startswith(_JSON_TENSOR_PREFIX):
                param, name = key.split(".", 1)
                state[int(param)][name] = value
        for param, values in meta.get("state", {}).items():
            for name, value in values.items():
                state[int(param)][name] = _from_json(value, tensors)
        param_groups = _from_json(meta["param_groups"], tensors)
        scheduler_state = _from_json(meta["scheduler"], tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise unreadable(meta_path, error) from None
    return {"state": dict(state), "param_groups": param_groups}, scheduler_state


def restore_state(checkpoint: str, files: _StateFiles, optimizer: Any, scheduler: Any) -> None:
    """Load what `save_state` wrote into `optimizer` and `scheduler`; a state that does not fit is a one-line error."""
    optimizer_state, scheduler_state = load_state(checkpoint, files)
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as error:
        path = os.path.join(checkpoint, files.meta)
        raise unreadable(path, error, "is damaged or does not fit this model's optimizer") from None


def _to_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, with its tensors moved to `tensors` and tuples / non-string keys marked, so `_from_json`
    gives back what the optimizer or scheduler wrote."""
    if isinstance(value, torch.Tensor):
        key = f"{_JSON_TENSOR_PREFIX}{sum(k.startswith(_JSON_TENSOR_PREFIX) for k in tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, tensors) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {k: _to_json(v, tensors) for k, v in value.items()}
        return {"__items__": [[_to_json(k, tensors), _to_json(v, tensors)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"Cannot store a {type(value).__name__} in a checkpoint without pickle: {value!r}")


def _from_json(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_from_json(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_from_json(k, tensors): _from_json(v, tensors) for k, v in value["__items__"]}
        return {k: _from_json(v, tensors) for k, v in value.items()}
    return value


def rng_file(folder: str, args: Any) -> str:
    """This process's RNG file: one per process with several, named as the Trainer names its own
    (`rng_state_{process_index}`)."""
    name = "rng_state" if args.world_size <= 1 else f"rng_state_{args.process_index}"
    return os.path.join(folder, name + ".safetensors")


def save_rng(path: str, distributed: bool) -> None:
    """The generators a resumed run must continue: torch's (CPU, CUDA) as tensors, python's and numpy's as JSON in
    the file's metadata."""
    tensors = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        if distributed:  # as the Trainer: every device's state when distributed, the current one's otherwise
            for index, state in enumerate(torch.cuda.random.get_rng_state_all()):
                tensors[f"cuda.{index}"] = state
        else:
            tensors["cuda"] = torch.cuda.random.get_rng_state()
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(internal), gauss_next]),
        "numpy": json.dumps([kind, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)]),
    }
    save_file(tensors, path, metadata=metadata)


def read_rng(path: str) -> dict[str, Any]:
    """What `save_rng` wrote, in the layout of the Trainer's rng_state.pth (which `set_rng` takes)."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    version, internal, gauss_next = json.loads(metadata["python"])
    kind, keys, position, has_gauss, cached_gaussian = json.loads(metadata["numpy"])
    states: dict[str, Any] = {
        "python": (version, tuple(internal), gauss_next),
        "numpy": (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian),
        "cpu": tensors["cpu"],
    }
    if "cuda" in tensors:
        states["cuda"] = tensors["cuda"]
    elif "cuda.0" in tensors:
        states["cuda"] = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    return states


def set_rng(states: Mapping[str, Any], distributed: bool) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        set_rng_state_for_device("CUDA", torch.cuda, states, distributed)  # logs, as the Trainer, when it cannot


def other_accelerator() -> bool:
    """Devices whose generators only the Trainer's own RNG files cover."""
    return any(
        check()
        for check in (
            is_torch_xla_available,
            is_torch_npu_available,
            is_torch_hpu_available,
            is_torch_mlu_available,
            is_torch_musa_available,
        )
    )


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_checkpoint_file(path: str, reader: Callable[[str], Any]) -> Any:
    try:
        return reader(path)
    except Exception as error:  # whatever the format's reader raises for a damaged file
        raise unreadable(path, error) from None


def unreadable(path: str, error: BaseException, problem: str = "is damaged or incomplete") -> ValueError:
    """One line naming the file and where to resume instead. The reader's own message is left out on purpose: it can
    run over several lines and says nothing of where to go on from."""
    checkpoint = os.path.dirname(os.path.abspath(path))
    other = last_complete_checkpoint(os.path.dirname(checkpoint), exclude=checkpoint)
    where = f"resume from another checkpoint, e.g. {other}" if other else "resume from another checkpoint"
    return ValueError(f"Cannot read {path} ({type(error).__name__}): the file {problem}; {where}.")


__all__ = [
    "CRITIC_STATE",
    "CRITIC_WEIGHTS",
    "OPTIMIZER_STATE",
    "PICKLED_TRAINING_ARGS",
    "TRAINING_ARGS_JSON",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "load_state",
    "other_accelerator",
    "read_checkpoint_file",
    "read_rng",
    "restore_state",
    "resume_point",
    "rng_file",
    "rotate_step_checkpoints",
    "save_rng",
    "save_state",
    "set_rng",
    "step_checkpoints",
    "unreadable",
]
