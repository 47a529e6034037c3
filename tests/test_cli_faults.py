"""The `mine-vae` command line under faults: bad input, a failing run, a full or read-only disk, Ctrl-C.

The contract checked here: an error is one line on stderr naming the problem and the fix, with exit code 2 (130 for
Ctrl-C), never a traceback; and nothing the user had is lost or changed (`--overwrite` replaces a previous run only
once the new model is saved, and only what `mine-vae train` wrote).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import tiny
import torch

from mine_vae import MineVaeModel
from mine_vae.cli import main
from mine_vae.cli.output import LOCK_FILE
from mine_vae.trainer import MineVaeTrainer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TINY = ["--preset", "tiny"]
# A short run with a short final report: these tests are about what happens around the training.
QUICK = ["--max_steps", "2", "--num_samples", "0", "--num_reconstructions", "0", "--interpolation_steps", "0"]


def run(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line(code: int, err: str, expected_code: int, *fragments: str) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mine-vae ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    return assert_one_line(code, err, 2, *fragments)


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every file (its SHA-256) and folder under `folder`: equal snapshots mean nothing was added, removed or
    changed."""
    entries: dict[str, str | None] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        entries[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return entries


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("run") / "model"
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK])
    assert code == 0, err
    return output_dir


@pytest.fixture
def previous_run(trained, tmp_path) -> Path:
    """A trained model folder that also holds the user's own files, among them a `checkpoint-best/`."""
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    (folder / "checkpoint-best").mkdir()
    (folder / "checkpoint-best" / "weights.bin").write_bytes(b"the user's best model")
    (folder / "notes.txt").write_text("lr 1e-3 looked best\n")
    _an_hour_old(folder / "checkpoint-best")
    return folder


def _an_hour_old(path: Path) -> None:
    """The Trainer's checkpoint rotation orders checkpoint-* folders by modification time (by step number when their
    times are less than a second apart): an old folder is the first it would delete."""
    an_hour_ago = path.stat().st_mtime - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


# --------------------------------------------------------------------------------------------------------------------
# --overwrite: replace on success
# --------------------------------------------------------------------------------------------------------------------
def test_overwrite_with_a_mistyped_file_keeps_the_previous_model(previous_run, tmp_path):
    before = snapshot(previous_run)
    typo = str(tmp_path / "goood.txt")
    code, _, err = run(["train", *TINY, "--train_file", typo, "--output_dir", str(previous_run), "--overwrite"])
    assert_one_line_error(code, err, "goood.txt", "does not exist")
    assert snapshot(previous_run) == before


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--learning_rate", "-1"], "learning_rate=-1.0 is not allowed: it must be a number >= 0"),
        (["--pooling", "bogus"], "pooling"),  # the model fails to build
    ],
)
def test_overwrite_that_fails_before_training_keeps_the_previous_model(previous_run, corpus, flags, fragment):
    before = snapshot(previous_run)
    code, _, err = run(
        ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(previous_run), "--overwrite", *QUICK, *flags]
    )
    assert_one_line_error(code, err, fragment)
    assert snapshot(previous_run) == before


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["training_step", "save_model"])
def test_overwrite_that_fails_later_keeps_the_previous_model(previous_run, corpus, monkeypatch, failing):
    # The disk fills up during training, or at the final save: the old model must still be there, untouched, and
    # nothing of the failed run left behind.
    before = snapshot(previous_run)
    monkeypatch.setattr(MineVaeTrainer, failing, _disk_full)
    code, _, err = run(
        ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(previous_run), "--overwrite", *QUICK]
    )
    lines = [line for line in err.strip().splitlines() if line.startswith("mine-vae")]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "could not save" in lines[0] and "the disk is full" in lines[0], err
    assert snapshot(previous_run) == before


def test_overwrite_replaces_only_what_train_wrote(previous_run, corpus):
    user_files = {k: v for k, v in snapshot(previous_run).items() if k.startswith(("checkpoint-best", "notes.txt"))}
    assert (previous_run / "checkpoint-2").is_dir()
    code, _, err = run(
        [
            "train",
            *TINY,
            *tiny.cli_data_flags(corpus),
            "--output_dir",
            str(previous_run),
            "--overwrite",
            *QUICK,
            "--max_steps",
            "3",
            "--latent_size",
            "4",
        ]
    )
    assert code == 0, err
    after = snapshot(previous_run)
    assert {k: v for k, v in after.items() if k in user_files} == user_files  # the user's files, unchanged
    assert (previous_run / "checkpoint-3").is_dir() and not (previous_run / "checkpoint-2").exists()
    assert MineVaeModel.from_pretrained(previous_run).config.latent_size == 4
    assert json.loads((previous_run / "mine_vae_results.json").read_text())["global_step"] == 3
    # Neither the staging folder of the new run nor the set-aside previous run is left behind.
    assert sorted(p.name for p in previous_run.iterdir() if p.name.startswith("mine-vae-")) == []


def _fake_run(folder: Path, step: int, weights: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / f"checkpoint-{step}").mkdir()
    (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(weights)


def test_the_swap_puts_everything_back_when_a_rename_fails(tmp_path, monkeypatch):
    from mine_vae.cli import output
    from mine_vae.cli.commands import CliError

    output_dir = tmp_path / "model"
    _fake_run(output_dir, 2, b"old")
    (output_dir / "checkpoint-best").mkdir()
    (output_dir / "notes.txt").write_text("mine")
    staging = output.make_staging_folder(output_dir)
    _fake_run(staging, 3, b"new")
    before, incoming = snapshot(output_dir), snapshot(staging)
    real_replace, calls = os.replace, []

    def failing_at_the_fourth_rename(source, target):
        calls.append(source)
        if len(calls) == 4:  # the previous run is set aside, the new one half moved in
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, target)

    monkeypatch.setattr(output.os, "replace", failing_at_the_fourth_rename)
    with pytest.raises(CliError, match="the previous model is still there"):
        output.replace_previous_run(output_dir, staging)
    assert snapshot(output_dir) == before and snapshot(staging) == incoming
    monkeypatch.setattr(output.os, "replace", real_replace)

    output.replace_previous_run(output_dir, staging)
    names = sorted(p.name for p in output_dir.iterdir())
    assert names == ["checkpoint-3", "checkpoint-best", "config.json", "model.safetensors", "notes.txt"]
    assert (output_dir / "model.safetensors").read_bytes() == b"new"


def test_a_users_checkpoint_folder_is_neither_an_unfinished_run_nor_rotated_away(corpus, tmp_path):
    # Not a reason to refuse the folder, and out of reach of the Trainer's rotation of checkpoint-* folders.
    output_dir = tmp_path / "model"
    (output_dir / "checkpoint-best").mkdir(parents=True)
    (output_dir / "checkpoint-best" / "weights.bin").write_bytes(b"mine")
    _an_hour_old(output_dir / "checkpoint-best")
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK])
    assert code == 0, err
    assert (output_dir / "checkpoint-best" / "weights.bin").read_bytes() == b"mine"
    assert (output_dir / "checkpoint-2").is_dir() and (output_dir / "model.safetensors").is_file()
    assert not [p for p in output_dir.iterdir() if p.name.startswith("mine-vae-")]


def test_ctrl_c_during_an_overwrite_keeps_the_previous_model_and_can_continue(previous_run, corpus, monkeypatch):
    before = snapshot(previous_run)
    original = MineVaeTrainer.training_step

    def interrupted_at_step_2(self, *args, **kwargs):
        if self.state.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    flags = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(previous_run), "--overwrite", *QUICK]
    monkeypatch.setattr(MineVaeTrainer, "training_step", interrupted_at_step_2)
    code, _, err = run([*flags, "--max_steps", "4", "--save_steps", "100"])
    assert code == 130, err
    staging = [p for p in previous_run.iterdir() if p.name.startswith("mine-vae-replacement-")]
    assert len(staging) == 1 and (staging[0] / "checkpoint-2").is_dir()
    assert {k: v for k, v in snapshot(previous_run).items() if not k.startswith(staging[0].name)} == before
    checkpoint = str(staging[0] / "checkpoint-2")
    assert f"--resume_from_checkpoint {checkpoint}" in err and "is as it was" in err
    monkeypatch.setattr(MineVaeTrainer, "training_step", original)

    code, _, err = run([*flags, "--max_steps", "4", "--resume_from_checkpoint", checkpoint])
    assert code == 0, err
    assert json.loads((previous_run / "trainer_state.json").read_text())["global_step"] == 4
    assert not staging[0].exists() and (previous_run / "checkpoint-best" / "weights.bin").is_file()


# A `mine-vae train` in a process of its own whose step 2 waits (up to a minute) for its stop to be requested, after
# announcing itself in a file: the test sends a real signal at that point, with no timing to guess.
_WAITING_TRAIN = """
import os, sys, time
from mine_vae.cli import main
from mine_vae.cli.output import LOCK_FILE
from mine_vae.trainer import MineVaeTrainer

ready, original = sys.argv[1], MineVaeTrainer.training_step

def training_step(self, *args, **kwargs):
    if self.state.global_step == 1 and not os.path.exists(ready):
        open(ready, "w").close()
        for _ in range(1200):
            if any(getattr(callback, "requested", False) for callback in self.callback_handler.callbacks):
                break
            time.sleep(0.05)
    return original(self, *args, **kwargs)

MineVaeTrainer.training_step = training_step
sys.exit(main(sys.argv[2:]))
"""


def _start_waiting_train(argv: list[str], ready: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", _WAITING_TRAIN, str(ready), *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until the child creates `path` (it then waits for the test's signal): no guess of how long it takes."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the process ended before it created {path.name}: {process.communicate()[1]}")
        assert time.monotonic() < deadline, f"the process never created {path.name}"
        time.sleep(0.1)


def test_sigterm_during_training_saves_a_checkpoint_like_ctrl_c(corpus, tmp_path):
    # SIGTERM is what SLURM, Kubernetes and `timeout` send: the step finishes, a checkpoint is saved, one line says
    # where and how to continue, exit code 143; --resume then finishes the run.
    output_dir, ready = tmp_path / "model", tmp_path / "at-step-2"
    base = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK]
    argv = [*base, "--max_steps", "6", "--save_steps", "100", "--num_threads", "1", "--disable_tqdm", "true"]
    process = _start_waiting_train(argv, ready)
    _wait_for(ready, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("SIGTERM: stopped at step 2 of 6; checkpoint saved in ") and "--resume" in last, err
    assert sum("SIGTERM" in line for line in err.splitlines()) == 1, err
    assert (output_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (output_dir / "model.safetensors").exists()

    code, _, err = run([*base, "--max_steps", "6", "--resume"])
    assert code == 0, err
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 6


# --------------------------------------------------------------------------------------------------------------------
# One run at a time in an output folder; a resumed run continues the model it began with
# --------------------------------------------------------------------------------------------------------------------
def test_a_second_run_into_the_same_output_dir_is_refused_and_a_dead_runs_lock_is_taken_over(corpus, tmp_path):
    output_dir, ready = tmp_path / "model", tmp_path / "at-step-2"
    argv = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK]
    first = _start_waiting_train([*argv, "--max_steps", "4", "--num_threads", "1", "--disable_tqdm", "true"], ready)
    try:
        _wait_for(ready, first)
        code, _, err = run(argv)
        assert_one_line_error(code, err, str(output_dir), "in use by another `mine-vae train`", f"PID {first.pid}")
        assert not (output_dir / "model.safetensors").exists()
    finally:
        first.kill()  # SIGKILL: no handler runs, its lock file stays behind
        first.communicate(timeout=60)
    assert (output_dir / LOCK_FILE).read_text().strip() == str(first.pid)

    code, _, err = run(argv)
    assert code == 0, err
    assert (output_dir / "model.safetensors").is_file() and not (output_dir / LOCK_FILE).exists()


@pytest.fixture
def interrupted_run(trained, tmp_path) -> Path:
    """A copy of a finished 2-step run reduced to its checkpoint: a run to --resume."""
    folder = tmp_path / "model"
    shutil.copytree(trained / "checkpoint-2", folder / "checkpoint-2")
    return folder


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--latent_size", "4"], ("--latent_size 4 differs from the checkpoint's 8", "resume with --latent_size 8")),
        (["--critic_num_layers", "3"], ("--critic_num_layers 3 differs",)),
        (["--preset", "small"], ("--preset small differs from the run's preset tiny", "resume with --preset tiny")),
    ],
)
def test_resume_with_another_architecture_or_preset_is_refused(interrupted_run, corpus, monkeypatch, flags, fragments):
    before = snapshot(interrupted_run)
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("resumed with another model"))
    argv = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(interrupted_run), *QUICK]
    code, _, err = run([*argv, "--max_steps", "4", "--resume", *flags])
    assert_one_line_error(code, err, *fragments)
    assert snapshot(interrupted_run) == before


class _Planted:
    """Unpickling this runs code: it writes the file named, as an attacker's payload would do anything else."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "the payload ran"))


@pytest.mark.parametrize("names", [("optimizer.pt", "scheduler.pt"), ("rng_state.pth",)])
def test_a_checkpoint_with_legacy_pickles_is_refused_in_one_line(interrupted_run, corpus, tmp_path, names):
    import pickle

    checkpoint = interrupted_run / "checkpoint-2"
    for new_file in ("optimizer.safetensors", "optimizer_state.json", "rng_state.safetensors", "rng_state.json"):
        (checkpoint / new_file).unlink(missing_ok=True)  # as an earlier version's checkpoint: the pickles only
    marker = tmp_path / "payload-ran"
    for name in names:
        (checkpoint / name).write_bytes(pickle.dumps(_Planted(marker)))
    argv = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(interrupted_run), *QUICK, "--resume"]
    code, _, err = run([*argv, "--max_steps", "4"])
    assert_one_line_error(code, err, str(checkpoint), names[0], "pickled training state", "does not load")
    assert not marker.exists()


def test_resume_names_the_training_settings_it_changes(interrupted_run, corpus):
    argv = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(interrupted_run), *QUICK]
    code, _, err = run([*argv, "--max_steps", "3", "--resume"])
    assert code == 0, err
    lines = [line for line in err.splitlines() if "changed training settings" in line]
    assert lines == [f"Resuming {interrupted_run / 'checkpoint-2'} with changed training settings: --max_steps 2 -> 3."]
    assert json.loads((interrupted_run / "trainer_state.json").read_text())["global_step"] == 3


def test_sigterm_outside_training_is_one_line(trained, monkeypatch):
    def not_taken(signum, frame):
        raise AssertionError("SIGTERM was not taken by the command")

    previous = signal.signal(signal.SIGTERM, not_taken)  # the test's own, should the command install none

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, taken by the command's handler
        time.sleep(5)  # the handler raises before this ends
        pytest.fail("SIGTERM was not taken")

    monkeypatch.setattr("mine_vae.cli.generate.load_trained", terminated)
    try:
        code, _, err = run(["generate", "--model", str(trained)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert_one_line(code, err, 143, "mine-vae generate: terminated (SIGTERM)")


# --------------------------------------------------------------------------------------------------------------------
# Config files: the same conversion and checks as the flags
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        ({"overwrite": [False]}, ("'overwrite' takes one value, not a list",)),
        ({"max_steps": 2.5}, ("'max_steps'", "invalid int value: '2.5'")),
        ({"overwrite": "maybe"}, ("'overwrite'", "--overwrite")),
        ({"learning_rate": "fast"}, ("'learning_rate'", "invalid float value")),
        ({"max_steps": None}, ("'max_steps' is empty",)),
    ],
)
def test_config_values_are_checked_like_flags(previous_run, corpus, tmp_path, settings, fragments):
    before = snapshot(previous_run)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "output_dir": str(previous_run), **settings}))
    code, _, err = run(["train", str(config), *tiny.cli_data_flags(corpus)])
    assert_one_line_error(code, err, str(config), *fragments)
    assert snapshot(previous_run) == before


def _alias_bomb() -> str:
    """Each level a list of nine aliases of the one before: a few hundred bytes, 9**levels values once expanded."""
    lines = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        lines.append(f"  a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "lr_scheduler_kwargs:\n" + "\n".join(lines) + "\n"


def _block_nested(levels: int) -> str:
    return (
        "lr_scheduler_kwargs:\n"
        + "".join(f"{' ' * (2 * level)}k{level}:\n" for level in range(1, levels))
        + (f"{' ' * (2 * levels)}k: 1\n")
    )


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("deep.json", '{"lr_scheduler_kwargs": ' + "[" * 200_000 + "]" * 200_000 + "}", ("200001 deep", "at most 32")),
        ("deep.yaml", "lr_scheduler_kwargs: " + "[" * 100_000 + "]" * 100_000 + "\n", ("100000 deep", "at most 32")),
        ("indented.yaml", _block_nested(600), ("too deep to read", "at most 32")),
        ("big.yaml", "# a comment\n" * 100_000, ("is over 1,000,000 bytes",)),
        ("bomb.yaml", _alias_bomb(), ("aliases (*a0) are not allowed",)),
        ("twice.yaml", "max_steps: 2\nmax_steps: 3\n", ("the key 'max_steps' appears twice",)),
        ("twice.json", '{"max_steps": 2, "max_steps": 3}', ("the key 'max_steps' appears twice",)),
        ("twins.yaml", "max-steps: 2\nmax_steps: 3\n", ("sets 'max-steps' and 'max_steps'", "the same setting")),
    ],
)
def test_config_files_that_cannot_be_read_safely_are_one_line(corpus, tmp_path, monkeypatch, name, text, fragments):
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("trained from a bad config file"))
    config = tmp_path / name
    config.write_text(text)
    argv = ["train", str(config), *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(tmp_path / "model")]
    code, _, err = run(argv)
    line = assert_one_line_error(code, err, str(config), *fragments)
    assert len(line) < 1000  # never the expanded value
    assert not (tmp_path / "model").exists()


def test_a_false_overwrite_in_a_config_file_is_false(previous_run, corpus, tmp_path):
    before = snapshot(previous_run)
    config = tmp_path / "run.yaml"
    config.write_text(f"preset: tiny\noutput_dir: {previous_run}\noverwrite: false\nmax_steps: 2\n")
    code, _, err = run(["train", str(config), *tiny.cli_data_flags(corpus)])
    assert_one_line_error(code, err, "already holds a trained model", "--overwrite")
    assert snapshot(previous_run) == before


def test_a_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"output_dir: caf\xe9\n")
    code, _, err = run(["train", str(config)])
    assert_one_line_error(code, err, "not UTF-8", "save it as UTF-8")


# --------------------------------------------------------------------------------------------------------------------
# generate: batches, streamed rows, --output_file
# --------------------------------------------------------------------------------------------------------------------
def test_generate_decodes_in_batches_and_prints_each_batch_when_done(trained, monkeypatch):
    original = MineVaeModel.generate
    calls: list[tuple[int, int]] = []  # (latents in the batch, result rows already printed)

    def recording(self, *args, **kwargs):
        printed = sys.stdout.getvalue().count("\n    {")  # a JSON result row
        calls.append((kwargs["latent"].shape[0], printed))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MineVaeModel, "generate", recording)
    argv = ["generate", "--model", str(trained), "--num_samples", "7", "--batch_size", "3", "--max_new_tokens", "4"]
    code, out, err = run([*argv, "--json"])
    assert code == 0, err
    assert calls == [(3, 0), (3, 3), (1, 6)]
    assert len(json.loads(out)["results"]) == 7


def test_generate_prints_the_table_batch_by_batch(trained):
    argv = ["generate", "--model", str(trained), "--num_samples", "11", "--batch_size", "4", "--max_new_tokens", "3"]
    code, out, err = run(argv)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Samples from the prior" and lines[1].split() == ["#", "sentence"]
    assert [line.split()[0] for line in lines[3:]] == [str(i) for i in range(1, 12)]


def test_generate_reconstructions_in_batches(trained):
    sentences = ["the cat sees the moon", "a dog likes an apple", "my sister calls the river"]
    argv = ["generate", "--model", str(trained), *sentences, "--batch_size", "2", "--max_new_tokens", "4", "--json"]
    code, out, err = run(argv)
    assert code == 0, err
    assert [row["input"] for row in json.loads(out)["results"]] == sentences


def test_generate_output_file_is_replaced_only_when_complete(trained, tmp_path, monkeypatch):
    target = tmp_path / "samples.json"
    target.write_text("the user's earlier samples\n")
    argv = ["generate", "--model", str(trained), "--num_samples", "5", "--batch_size", "2", "--max_new_tokens", "3"]
    original = MineVaeModel.generate
    calls = []

    def failing_at_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("decoding went wrong")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MineVaeModel, "generate", failing_at_the_second_batch)
    code, out, err = run([*argv, "--output_file", str(target), "--json"])
    assert_one_line_error(code, err, "decoding went wrong")
    assert target.read_text() == "the user's earlier samples\n" and sorted(tmp_path.iterdir()) == [target]
    monkeypatch.setattr(MineVaeModel, "generate", original)

    code, out, err = run([*argv, "--output_file", str(target), "--json"])
    assert code == 0 and out == "", err
    assert len(json.loads(target.read_text())["results"]) == 5
    assert sorted(tmp_path.iterdir()) == [target]


def test_generate_output_file_in_a_missing_folder(trained, tmp_path):
    target = tmp_path / "no" / "such" / "out.txt"
    code, _, err = run(["generate", "--model", str(trained), "--output_file", str(target)])
    assert_one_line_error(code, err, "does not exist", "create it first")


# --------------------------------------------------------------------------------------------------------------------
# The output folder: checked before training
# --------------------------------------------------------------------------------------------------------------------
def _refusing(error_number: int):
    def mkstemp(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))

    return mkstemp


@pytest.mark.parametrize(
    ("error_number", "fragment"), [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")]
)
def test_an_output_folder_that_cannot_be_written_fails_before_training(
    corpus, tmp_path, monkeypatch, error_number, fragment
):
    monkeypatch.setattr("mine_vae.cli.output.mkstemp", _refusing(error_number))
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("trained before the check"))
    output_dir = tmp_path / "model"
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK])
    assert_one_line_error(code, err, "--output_dir", "not writable", fragment)
    assert not output_dir.exists()


def test_a_full_disk_fails_before_training(corpus, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("mine_vae.cli.output.disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("trained before the check"))
    output_dir = tmp_path / "model"
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *QUICK])
    assert_one_line_error(code, err, "0.0 MB free", "a checkpoint needs about", "free some space")
    assert not output_dir.exists()


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    from mine_vae.cli.output import check_writable

    check_writable(tmp_path / "not" / "yet" / "made", "--output_dir")  # probes tmp_path, the nearest existing folder
    check_writable(tmp_path, "--output_dir")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Model folders that do not hold together
# --------------------------------------------------------------------------------------------------------------------
def _edit_json(path: Path, edit) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("command", ["generate", "evaluate"])
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda config: config.update(latent_size=16), "shape"),  # tensors of another size
        (lambda config: config["encoder"].update(num_hidden_layers=2), "missing"),  # layers the weights lack
    ],
)
def test_a_config_that_does_not_match_the_weights(trained, corpus, tmp_path, command, edit, fragment):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    _edit_json(folder / "config.json", edit)
    extra = ["--file", str(corpus["validation"])] if command == "evaluate" else []
    code, _, err = run([command, "--model", str(folder), *extra])
    # Either the model's own load check or the CLI's says so; what matters is one line naming both sides.
    line = assert_one_line_error(code, err, "weights", "config")
    assert fragment in line or "differ" in line, line


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_a_tokenizer_larger_than_the_model(trained, corpus, tmp_path, command):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)

    def add_words(tokenizer: dict) -> None:
        vocabulary = tokenizer["model"]["vocab"]
        for index in range(10):
            vocabulary[f"newword{index}"] = len(vocabulary)

    _edit_json(folder / "encoder_tokenizer" / "tokenizer.json", add_words)
    extra = ["--file", str(corpus["validation"])] if command == "evaluate" else ["the cat sees newword3"]
    code, _, err = run([command, "--model", str(folder), *extra])
    assert_one_line_error(code, err, "tokenizers do not fit the model", "encoder tokenizer has")


def _remove(path: Path) -> None:
    path.unlink()


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff")


@pytest.mark.parametrize(
    ("side", "file", "damage", "fragment"),
    [
        ("encoder_tokenizer", "tokenizer.json", _remove, "lacks tokenizer.json"),
        ("decoder_tokenizer", "tokenizer.json", _remove, "lacks tokenizer.json"),
        ("decoder_tokenizer", "tokenizer.json", _garble, "tokenizer.json cannot be read"),
        ("decoder_tokenizer", "tokenizer_config.json", _garble, "tokenizer_config.json cannot be read"),
        ("encoder_tokenizer", "tokenizer_config.json", _remove, "lacks tokenizer_config.json"),
    ],
)
@pytest.mark.parametrize("command", ["embed", "generate"])
def test_damaged_tokenizers_are_refused_naming_the_file(trained, tmp_path, command, side, file, damage, fragment):
    # Never rebuilt in silence: without encoder_tokenizer/tokenizer.json transformers builds a tokenizer of the special
    # tokens alone, and `embed` wrote embeddings of [UNK]s.
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    damage(folder / side / file)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("the cat sees the moon\n")
    output = tmp_path / "means.npy"
    argv = {
        "embed": ["embed", str(folder), str(sentences), "--output", str(output), "--device", "cpu"],
        "generate": ["generate", "--model", str(folder), "the cat sees the moon", "--max_new_tokens", "2"],
    }[command]
    code, out, err = run(argv)
    assert_one_line_error(code, err, str(folder / side), fragment)
    assert out == "" and not output.exists()


def test_the_processor_loads_from_either_of_its_settings_files(trained, tmp_path):
    from mine_vae import MineVaeProcessor

    for kept in ("processor_config.json", "mine_vae_processor.json"):
        folder = tmp_path / kept
        shutil.copytree(trained, folder)
        removed = ({"processor_config.json", "mine_vae_processor.json"} - {kept}).pop()
        (folder / removed).unlink()
        assert MineVaeProcessor.from_pretrained(folder).max_decoder_length > 0
        code, out, err = run(["generate", "--model", str(folder), "the cat sees the moon", "--max_new_tokens", "2"])
        assert code == 0, err
        assert "the cat sees the moon" in out


# --------------------------------------------------------------------------------------------------------------------
# Values out of range: refused before any work, never accepted
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--learning_rate=-1e-3"], "learning_rate=-0.001 is not allowed: it must be a number >= 0"),
        (["--learning_rate", "nan"], "learning_rate=nan is not allowed: it must be a finite number"),
        (["--critic_learning_rate", "inf"], "critic_learning_rate=inf is not allowed: it must be a finite number"),
        (["--max_steps", "0"], "--max_steps must be at least 1"),
        (["--max_steps", "-5"], "--max_steps must be at least 1"),
    ],
)
def test_bad_training_values(corpus, tmp_path, monkeypatch, flags, fragment):
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("trained with a bad value"))
    output_dir = tmp_path / "model"
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), *flags])
    assert_one_line_error(code, err, fragment)
    assert not output_dir.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--num_beams", "0"], "--num_beams must be at least 1"),
        (["--no_repeat_ngram_size", "-1"], "--no_repeat_ngram_size must be 0 (off) or more"),
        (["--prior_scale", "0"], "--prior_scale must be a number > 0"),
        (["--top_p", "2", "--do_sample"], "--top_p must be in (0, 1]"),
        (["--top_p", "2"], "--top_p must be in (0, 1]"),
        (["--num_return_sequences", "0"], "--num_return_sequences must be at least 1"),
        (["--num_return_sequences", "2"], "needs --do_sample"),
        (["--temperature", "0", "--do_sample"], "--temperature must be a number > 0"),
        (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--repetition_penalty", "nan"], "--repetition_penalty"),
    ],
)
def test_bad_decoding_values(trained, flags, fragment):
    code, out, err = run(["generate", "--model", str(trained), *flags])
    assert_one_line_error(code, err, fragment)
    assert out == ""


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--importance_samples", "0"], "--importance_samples must be between 1 and"),
        (["--importance_samples", str(10**30)], "--importance_samples must be between 1 and 100,000"),
        (["--batch_size", "0"], "--batch_size must be between 1 and"),
        (["--batch_size", str(10**30)], "--batch_size must be between 1 and 1,000,000"),
        (["--max_length", "-1"], "--max_length must be at least 1"),
        (["--max_eval_examples", "0"], "--max_eval_examples must be at least 1"),
    ],
)
def test_bad_evaluation_values(trained, corpus, flags, fragment):
    code, out, err = run(["evaluate", "--model", str(trained), "--file", str(corpus["validation"]), *flags])
    assert_one_line_error(code, err, fragment)
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["generate", "--num_return_sequences", "1000000000", "--do_sample"], ("--num_return_sequences", "at most")),
        (["generate", "--num_samples", str(10**13)], ("--num_samples", "does not fit in memory: at most")),
        (["interpolate", "a dog", "a cat", "--steps", str(10**13)], ("--steps", "does not fit in memory: at most")),
        (["interpolate", "a dog", "a cat", "--num_beams", str(10**15)], ("--num_beams", "does not fit in memory")),
        (["generate", "--num_beams", str(10**15)], ("--num_beams", "does not fit in memory")),
        (["generate", "--device", "meta"], ("--device meta holds no data",)),
        (["generate", "--device", "gpu7"], ("--device 'gpu7' is not a device",)),
        (["generate", "--seed", str(2**70)], (f"--seed must be between 0 and {2**32 - 1}",)),
        (["generate", "--seed", "-1"], ("--seed must be between 0",)),
        (["train", "--output_dir", ""], ("--output_dir is empty",)),
        (["train", "--output_dir", "x", "--seed", str(2**40)], ("--seed must be between 0",)),
        (["train", "--output_dir", "x", "--latent_size", str(10**30)], ("--latent_size must be at most 65,536",)),
        (["train", "--output_dir", "x", "--critic_hidden_size", str(10**9)], ("--critic_hidden_size must be at most",)),
        (["train", "--output_dir", "x", "--per_device_train_batch_size", str(10**30)], ("is too large; at most",)),
        (["generate", "--top_k", str(10**30)], ("--top_k 1000000000000000000000000000000 is too large",)),
    ],
)
def test_sizes_devices_and_seeds_that_cannot_work_are_refused_naming_the_flag(trained, argv, fragments, monkeypatch):
    monkeypatch.setattr(MineVaeTrainer, "train", lambda *a, **k: pytest.fail("trained with a bad value"))
    model = [] if argv[0] == "train" else ["--model", str(trained)]
    code, out, err = run([argv[0], *model, *argv[1:]])
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_counts_that_fit_only_in_smaller_batches_are_decoded_in_smaller_batches(trained, monkeypatch):
    from mine_vae.cli import decoding

    model = MineVaeModel.from_pretrained(trained)
    each = decoding.sequence_bytes(model, 4)
    monkeypatch.setattr(decoding, "available_memory", lambda device: each * 28 // 3 + 3)  # 7 sequences fit
    original, calls = MineVaeModel.generate, []

    def recording(self, *args, **kwargs):
        calls.append(kwargs["latent"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MineVaeModel, "generate", recording)
    argv = ["generate", "--model", str(trained), "--num_samples", "7", "--max_new_tokens", "4", "--json"]
    code, out, err = run([*argv, "--num_return_sequences", "3", "--do_sample"])
    assert code == 0, err
    assert calls == [2, 2, 2, 1] and len(json.loads(out)["results"]) == 7 * 3
    assert "Decoding 2 inputs at a time: --batch_size 32 does not fit in memory." in err
    code, out, err = run([*argv, "--num_return_sequences", "8", "--do_sample"])
    assert_one_line_error(code, err, "--num_return_sequences 8", "at most 7")


def test_num_threads_above_the_core_count_is_capped_with_a_note(trained):
    threads = torch.get_num_threads()
    try:
        code, _, err = run(["generate", "--model", str(trained), "--num_threads", "100000", "--max_new_tokens", "2"])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    cores = len(os.sched_getaffinity(0))
    assert used == cores
    assert f"--num_threads 100000 is more than the {cores} CPU core(s) here; using {cores}." in err.splitlines()


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(trained, tmp_path):
    sentences = tmp_path / "sentences.txt"
    sentences.write_bytes(b"\xef\xbb\xbfthe cat sees the moon\na dog\n")  # UTF-8 with a BOM, as Notepad saves it
    code, out, err = run(["generate", "--model", str(trained), "--input_file", str(sentences), "--json"])
    assert code == 0, err
    assert [row["input"] for row in json.loads(out)["results"]] == ["the cat sees the moon", "a dog"]
    config = tmp_path / "run.json"
    config.write_bytes(b"\xef\xbb\xbf" + json.dumps({"max_new_tokens": 2}).encode())
    code, out, err = run(["generate", "--model", str(trained), "--config", str(config), "a dog"])
    assert code == 0, err


def test_an_input_file_that_is_not_utf8(trained, tmp_path):
    latin1 = tmp_path / "sentences.txt"
    latin1.write_bytes("the café is open\n".encode("latin-1"))
    code, _, err = run(["generate", "--model", str(trained), "--input_file", str(latin1)])
    assert_one_line_error(code, err, "not UTF-8", "0xe9", "iconv")


# --------------------------------------------------------------------------------------------------------------------
# Ctrl-C before the work starts
# --------------------------------------------------------------------------------------------------------------------
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_the_commands_load(monkeypatch):
    monkeypatch.setattr("mine_vae.cli._ensure_commands", _interrupt)
    code, out, err = run(["generate"])
    assert_one_line(code, err, 130, "mine-vae generate: interrupted")
    assert out == ""


def test_ctrl_c_while_the_model_loads(trained, monkeypatch):
    monkeypatch.setattr("mine_vae.cli.generate.load_trained", _interrupt)
    code, _, err = run(["generate", "--model", str(trained)])
    assert_one_line(code, err, 130, "interrupted")


def test_ctrl_c_while_an_overwrite_starts_keeps_the_previous_model(previous_run, corpus, monkeypatch):
    before = snapshot(previous_run)
    monkeypatch.setattr("mine_vae.cli.train._make_trainer", _interrupt)  # after the staging folder exists
    code, _, err = run(
        ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(previous_run), "--overwrite", *QUICK]
    )
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "mine-vae train: interrupted."
    assert snapshot(previous_run) == before


def test_ctrl_c_while_writing_an_output_file_keeps_the_rows_done(trained, tmp_path, monkeypatch):
    target = tmp_path / "samples.txt"
    original = MineVaeModel.generate
    calls = []

    def interrupted_at_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MineVaeModel, "generate", interrupted_at_the_second_batch)
    argv = ["generate", "--model", str(trained), "--num_samples", "5", "--batch_size", "2", "--max_new_tokens", "3"]
    code, _, err = run([*argv, "--output_file", str(target)])
    line = assert_one_line(code, err, 130, "interrupted", "what was written so far is in")
    assert not target.exists()
    partial = Path(line.rsplit(" in ", 1)[1].rstrip("."))
    assert partial.parent == tmp_path and len(partial.read_text().splitlines()) == 3 + 2  # title, header, rule, rows


@pytest.mark.parametrize(
    ("sent", "code", "line"),
    [
        (signal.SIGINT, 130, "mine-vae: interrupted while starting."),
        (signal.SIGTERM, 143, "mine-vae: terminated (SIGTERM) while starting."),
    ],
)
def test_ctrl_c_while_the_package_imports_is_one_line(tmp_path, sent, code, line):
    """SIGINT while `mine-vae` is still importing torch and transformers: exit 130 and one line, no traceback.

    No timing is guessed: an import hook in the child marks the moment `import torch` begins (inside the package's
    import) and holds it there until the signal arrives."""
    ready = tmp_path / "importing-torch"
    # A shell that starts a job in the background (`cmd &`, as CI runners may) leaves SIGINT ignored in its children,
    # and Python then installs no KeyboardInterrupt handler: restore the default first, as a terminal has it.
    startup = f"""
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)

class HoldTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)  # the signal's handler raises here, inside the package's import
        return None

sys.meta_path.insert(0, HoldTorchImport())
import _mine_vae_cli
sys.exit(_mine_vae_cli.main())
"""
    command = [sys.executable, "-c", startup, "train", "--help"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ready, process)
    process.send_signal(sent)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert err.strip().splitlines() == [line]
    assert out == ""
