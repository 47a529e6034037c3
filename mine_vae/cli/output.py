"""Writing results without losing what was there: probes of an output folder (writable, room for a checkpoint) before
any work is spent, replace-on-success for `train --overwrite`, and an output file that replaces an existing one only
once it is complete (`generate --output_file`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from shutil import disk_usage  # a name of this module, so that tests can fake a full disk for these checks alone
from tempfile import mkdtemp, mkstemp
from typing import IO

from .commands import CliError

# What `mine-vae train` writes into an output folder: --overwrite replaces exactly this and nothing else.
RESULTS_FILE = "mine_vae_results.json"
OWN_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    # The model's code, shipped with it for trust_remote_code, and the sentence-transformers module list.
    "configuration_mine_vae.py",
    "modeling_mine_vae.py",
    "pretrained_mine_vae.py",
    "generation_mine_vae.py",
    "latent_path.py",
    "critic.py",
    "pipeline_mine_vae.py",
    "sentence_mine_vae.py",
    "modules.json",
    # The processor, and the decoder tokenizer's copy at the top of the folder (for AutoTokenizer).
    "mine_vae_processor.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "processor_config.json",
    "training_args.bin",
    "training_args.json",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    RESULTS_FILE,
)
OWN_FOLDERS = ("encoder_tokenizer", "decoder_tokenizer")
# The Trainer names its checkpoints checkpoint-<step>; a user's checkpoint-best/ or checkpoint-old/ is not ours.
TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")
# `train --overwrite` (and a run into a folder holding the user's own checkpoint-* folders) trains into
# <output_dir>/<STAGING_PREFIX>XXXX and moves the result in only once it is saved; the previous run waits in
# <BACKUP_PREFIX>XXXX for the moment of the swap.
STAGING_PREFIX = "mine-vae-replacement-"
BACKUP_PREFIX = "mine-vae-previous-"
# Held by the `mine-vae train` that writes into an output folder (its PID inside); `_`: left out of Hub pushes.
LOCK_FILE = "_mine-vae-train.lock"
# A rough size of one checkpoint per parameter: fp32 weights plus AdamW's two moments, and the final model's weights.
CHECKPOINT_BYTES_PER_PARAMETER = 4 * 3 + 4

_ERRNO_WORDS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "it is on a read-only file system",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
}


def describe_os_error(error: OSError) -> str:
    """The reason of a failed write in words, without the errno noise of `str(error)`."""
    if error.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[error.errno]
    return error.strerror or str(error)


def nearest_existing_folder(path: Path) -> Path:
    """`path` itself when it exists, else its closest existing ancestor: where a folder not yet made would go."""
    candidate = path.absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def check_writable(path: Path, flag: str) -> None:
    """Fail now, not after the training it cost, if nothing can be written at `path` (a folder that may not exist
    yet). A real file is created and removed: permission bits say nothing about read-only mounts, ACLs or quotas."""
    folder = nearest_existing_folder(path)
    if not folder.is_dir():
        raise CliError(f"{flag} {str(path)!r} lies inside {str(folder)!r}, which is a file; choose another {flag}.")
    try:
        handle, probe = mkstemp(dir=folder, prefix=".mine-vae-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CliError(
            f"{flag} {str(path)!r} is not writable ({describe_os_error(error)} in {str(folder)!r}); fix its "
            f"permissions or choose another {flag}."
        ) from error


def check_free_space(path: Path, needed_bytes: int, flag: str, what: str) -> None:
    """Fail now if the file system of `path` has clearly less room than `needed_bytes` (a rough estimate)."""
    folder = nearest_existing_folder(path)
    try:
        free = disk_usage(folder).free
    except OSError:
        return  # cannot tell (e.g. a network file system without statvfs): the saves will say so if it is full
    if free < needed_bytes:
        raise CliError(
            f"{flag} {str(path)!r} has {_megabytes(free)} free but {what} needs about {_megabytes(needed_bytes)}; "
            f"free some space or choose another {flag}."
        )


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def trainer_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-<step> folders the Trainer wrote in `folder` (never a user's checkpoint-best/ and the like)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and TRAINER_CHECKPOINT.fullmatch(p.name))


def foreign_checkpoint_folders(folder: Path) -> list[Path]:
    """Folders named checkpoint-* that the Trainer did not write (checkpoint-best/, checkpoint-old/, ...). The
    Trainer's checkpoint rotation (`save_total_limit`, transformers 5.24) sorts every checkpoint-* folder of the folder
    it trains in by modification time and deletes the older ones, these included."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob("checkpoint-*") if p.is_dir() and not TRAINER_CHECKPOINT.fullmatch(p.name)
    )


@contextlib.contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir` for one `mine-vae train` at a time: a second run into it is refused in one line naming the
    first's PID (two runs into one folder would both report success, one of them lost). The lock is an OS file lock
    on `LOCK_FILE`, which the OS drops when its process dies however it ends: a lock file left by a killed run is
    taken over. The folder is created if needed, and removed again if the run left nothing in it."""
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(
            f"--output_dir {str(output_dir)!r} cannot be created ({describe_os_error(error)}); choose another "
            "--output_dir."
        ) from error
    path = output_dir / LOCK_FILE
    handle = _locked_file(path, output_dir)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a run that opens the name next gets a new file, not this one
        os.close(handle)
        if created:
            with contextlib.suppress(OSError):
                output_dir.rmdir()  # only if empty


def _locked_file(path: Path, output_dir: Path) -> int:
    """An open descriptor of `path` holding its exclusive lock (retried when another run removed the file between
    the open and the lock: the lock must be on the file the name points to)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the folder goes unlocked there
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise CliError(
                f"--output_dir {str(output_dir)!r} is in use by another `mine-vae train` (PID {holder}); wait for it "
                "to end, or choose another --output_dir."
            ) from None
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                return handle
        os.close(handle)


def holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "model.safetensors").is_file()


def make_staging_folder(output_dir: Path) -> Path:
    """A fresh folder inside `output_dir` for a run that replaces the one there: inside, not beside, so that it is on
    the same file system (the swap is a rename) and needs no write permission outside the folder the user gave."""
    return Path(mkdtemp(dir=output_dir, prefix=STAGING_PREFIX))


def staging_folder_of(checkpoint: str | None, output_dir: Path) -> Path | None:
    """The staging folder of an interrupted `--overwrite` run that `checkpoint` lies in, if it does."""
    if checkpoint is None:
        return None
    parent = Path(checkpoint).absolute().parent
    if parent.parent == output_dir.absolute() and parent.name.startswith(STAGING_PREFIX):
        return parent
    return None


def _previous_run(output_dir: Path, staging: Path, incoming: list[str]) -> list[Path]:
    """What the new run replaces: the files and checkpoints a previous `mine-vae train` wrote, and anything named like
    what the new run brings (it would be overwritten in place otherwise, without a way back)."""
    names = {*OWN_FILES, *OWN_FOLDERS, *incoming}
    entries = [output_dir / name for name in sorted(names) if (output_dir / name).exists()]
    # Checkpoints of the previous run, and staging folders of replacing runs that were stopped and never continued.
    leftovers = [*trainer_checkpoints(output_dir), *sorted(output_dir.glob(f"{STAGING_PREFIX}*"))]
    return entries + [p for p in leftovers if p.name not in names and p.name != staging.name]


def replace_previous_run(output_dir: Path, staging: Path) -> None:
    """Move the new run from `staging` into `output_dir` in place of the previous one. Every step is a rename on one
    file system; if one fails, the renames done so far are undone, so `output_dir` holds either the previous run or
    the new one, never a mix. The previous run is deleted last, once the new one is in place."""
    incoming = sorted(p.name for p in staging.iterdir())
    backup = Path(mkdtemp(dir=output_dir, prefix=BACKUP_PREFIX))
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in _previous_run(output_dir, staging, incoming):
            os.replace(entry, backup / entry.name)
            moved_aside.append(entry.name)
        for name in incoming:
            os.replace(staging / name, output_dir / name)
            moved_in.append(name)
    except BaseException as error:  # a failed rename, or Ctrl-C in the middle: put everything back
        with contextlib.suppress(OSError):
            for name in reversed(moved_in):
                os.replace(output_dir / name, staging / name)
            for name in reversed(moved_aside):
                os.replace(backup / name, output_dir / name)
            backup.rmdir()
        if not isinstance(error, OSError):
            raise
        raise CliError(
            f"could not move the new model into {str(output_dir)!r} ({describe_os_error(error)}); the previous model "
            f"is still there and the new one is in {str(staging)!r}."
        ) from error
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def replace_on_success(path: Path, flag: str) -> Iterator[IO[str]]:
    """A text file written beside `path` and moved over it when the block ends without error: a file already at
    `path` is replaced only by a complete one. The partial file can be watched as it grows; it is kept on Ctrl-C,
    with what was written so far, and removed on any other failure."""
    target = path.expanduser()
    if target.is_dir():
        raise CliError(f"{flag} {str(path)!r} is a folder; give a file name.")
    if not target.parent.absolute().is_dir():
        raise CliError(f"{flag} {str(path)!r}: the folder {str(target.parent)!r} does not exist; create it first.")
    try:
        handle, partial_name = mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".partial")
    except OSError as error:
        raise CliError(
            f"{flag} {str(path)!r} cannot be written ({describe_os_error(error)}); choose another {flag}."
        ) from error
    with contextlib.suppress(OSError):  # mkstemp's file is private (0600); give it the mode open() would have
        os.chmod(partial_name, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
    partial = Path(partial_name)
    stream = os.fdopen(handle, "w", encoding="utf-8")
    try:
        yield stream
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            stream.close()
        raise KeyboardInterrupt(f"what was written so far is in {partial}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            stream.close()
        partial.unlink(missing_ok=True)
        raise
    try:
        stream.close()  # the last buffered write: a full disk can show here
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CliError(f"could not write {flag} {str(path)!r} ({describe_os_error(error)}).") from error


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def stdout_stream() -> contextlib.AbstractContextManager[IO[str]]:
    """`sys.stdout` in the shape of `replace_on_success`, for commands whose output file is optional."""
    return contextlib.nullcontext(sys.stdout)
