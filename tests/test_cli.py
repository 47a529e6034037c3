"""The `mine-vae` command line end to end, offline, on a tiny corpus and the tiny preset.

Commands run in-process through `main([...])`; one test runs the installed `mine-vae` entry point.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny
import torch

from mine_vae import MineVaeModel, MineVaeProcessor, text_latent
from mine_vae.cli import COMMANDS, _ensure_commands, format_table, main
from mine_vae.cli.parsing import parse_command
from mine_vae.evaluation import RECONSTRUCTION_DECODING
from mine_vae.presets import get_preset
from mine_vae.trainer import MineVaeTrainer, last_complete_checkpoint

TINY = ["--preset", "tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def parse_train(argv: list[str]) -> dict[str, object]:
    """`mine-vae train ARGV`'s parsed dataclasses by class name (the commands register on first use)."""
    _ensure_commands()
    return {type(value).__name__: value for value in parse_command(COMMANDS["train"], argv)}


def run(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("run") / "model"
    code, out, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), "--json"])
    assert code == 0, err
    return output_dir, json.loads(out)


# --------------------------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------------------------
def test_train_saves_a_loadable_folder_and_reports(trained):
    output_dir, report = trained
    model = MineVaeModel.from_pretrained(output_dir)
    processor = MineVaeProcessor.from_pretrained(output_dir)
    processor.check_model(model)
    for key in ("nll", "ppl", "ppl_word", "kl", "mi", "au", "mi_bound"):
        assert key in report["metrics"]
    assert report["global_step"] == 8 and report["split"] == "validation"
    assert len(report["samples"]) == 5 and len(report["reconstructions"]) == 5
    assert [step["t"] for step in report["interpolation"]["steps"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert json.loads((output_dir / "mine_vae_results.json").read_text())["metrics"] == report["metrics"]


def test_every_file_train_writes_is_one_overwrite_owns(trained):
    """`--overwrite` replaces what a previous run wrote (output.OWN_FILES, OWN_FOLDERS, trainer checkpoints): every
    top-level entry of a trained folder is among them, the shipped model code included."""
    from mine_vae.cli.output import OWN_FILES, OWN_FOLDERS, TRAINER_CHECKPOINT

    output_dir, _ = trained
    names = {path.name for path in output_dir.iterdir()}
    assert tiny.SHIPPED_CODE <= names
    unowned = {n for n in names if n not in {*OWN_FILES, *OWN_FOLDERS} and not TRAINER_CHECKPOINT.fullmatch(n)}
    assert not unowned


def test_evaluate_prints_a_table_and_json(trained, corpus):
    output_dir, _ = trained
    code, out, err = run(["evaluate", "--model", str(output_dir), "--file", str(corpus["validation"])])
    assert code == 0, err
    assert "Metrics on validation (20 sentences" in out and "active units" in out
    code, out, _ = run(
        [
            "evaluate",
            "--model",
            str(output_dir),
            "--file",
            str(corpus["validation"]),
            "--json",
            "--importance_samples",
            "3",
            "--max_eval_examples",
            "10",
        ]
    )
    assert code == 0
    report = json.loads(out)
    assert report["metrics"]["num_examples"] == 10 and report["importance_samples"] == 3
    # --bleu: the reconstructions' BLEU under the report's decoding, with plain greedy's beside it.
    argv = ["evaluate", "--model", str(output_dir), "--file", str(corpus["validation"]), "--max_eval_examples", "6"]
    code, out, err = run([*argv, "--bleu", "--importance_samples", "1"])
    assert code == 0, err
    assert "beam search over 4, no repeated 4-gram" in out and "plain greedy decoding" in out
    code, out, _ = run([*argv, "--bleu", "--importance_samples", "1", "--json"])
    metrics = json.loads(out)["metrics"]
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["bleu_greedy"] <= 100


def test_evaluate_drops_sentences_longer_than_the_model_takes(trained, corpus, tmp_path):
    # Longer than the processor's own limit: these must be dropped and counted, not silently truncated to fit.
    output_dir, _ = trained
    processor = MineVaeProcessor.from_pretrained(output_dir)
    sentences = corpus["validation"].read_text().splitlines()
    long_sentence = " ".join([sentences[0]] * processor.max_decoder_length)
    file = tmp_path / "with_long.txt"
    file.write_text("\n".join([*sentences, long_sentence, long_sentence]) + "\n")
    argv = ["evaluate", "--model", str(output_dir), "--file", str(file), "--json", "--importance_samples", "2"]
    code, out, err = run([*argv, "--overlength", "drop"])
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["validation/dropped"] == 2
    assert report["metrics"]["num_examples"] == len(sentences)


def test_generate_from_the_prior_and_reconstructs(trained):
    output_dir, _ = trained
    code, out, _ = run(["generate", "--model", str(output_dir), "--num_samples", "3", "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["mode"] == "prior" and len(report["results"]) == 3
    # The library's seeded prior decoding, with the command's defaults (seed 0, greedy, at most 50 new tokens).
    model, processor = MineVaeModel.from_pretrained(output_dir).eval(), MineVaeProcessor.from_pretrained(output_dir)
    expected = text_latent.prior_samples(model, processor, 3, seed=0, max_new_tokens=50, do_sample=False)
    assert [row["output"] for row in report["results"]] == expected
    # A reduced-temperature prior, as train's report draws it.
    argv = ["generate", "--model", str(output_dir), "--num_samples", "3", "--json"]
    code, out, err = run([*argv, "--prior_scale", "0.1"])
    assert code == 0, err
    expected = text_latent.prior_samples(model, processor, 3, 0, 0.1, max_new_tokens=50, do_sample=False)
    assert [row["output"] for row in json.loads(out)["results"]] == expected
    code, out, _ = run(
        [
            "generate",
            "--model",
            str(output_dir),
            "the cat sees the moon",
            "a dog likes an apple",
            "--do_sample",
            "--top_p",
            "0.9",
            "--num_return_sequences",
            "2",
            "--max_new_tokens",
            "8",
        ]
    )
    assert code == 0
    assert "Reconstructions" in out and out.count("the cat sees the moon") == 2
    # train's report decoding, asked for by flags: the library's reconstructions under RECONSTRUCTION_DECODING.
    sentences = ["the cat sees the moon", "a dog likes an apple"]
    argv = ["generate", "--model", str(output_dir), *sentences, "--max_new_tokens", "8", "--json"]
    code, out, err = run([*argv, "--num_beams", "4", "--no_repeat_ngram_size", "4"])
    assert code == 0, err
    expected = text_latent.reconstructions(model, processor, sentences, 0, max_new_tokens=8, **RECONSTRUCTION_DECODING)
    assert [row["output"] for row in json.loads(out)["results"]] == expected


def test_interpolate(trained):
    output_dir, _ = trained
    code, out, _ = run(
        [
            "interpolate",
            "the cat sees the moon",
            "a bird hears the river",
            "--steps",
            "4",
            "--model",
            str(output_dir),
            "--json",
        ]
    )
    assert code == 0
    steps = json.loads(out)["steps"]
    assert [round(s["t"], 3) for s in steps] == [0.0, 0.333, 0.667, 1.0]
    # The library's interpolation (the line, as MineVaeModel.interpolate's), with the command's defaults.
    model, processor = MineVaeModel.from_pretrained(output_dir).eval(), MineVaeProcessor.from_pretrained(output_dir)
    expected = text_latent.interpolation(
        model, processor, "the cat sees the moon", "a bird hears the river", 4, seed=0, max_new_tokens=50
    )
    assert [(s["t"], s["text"]) for s in steps] == expected
    code, out, _ = run(["interpolate", "the cat sees the moon", "a bird hears the river", "--model", str(output_dir)])
    assert code == 0 and "Interpolation from" in out and "1.00" in out


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(corpus, tmp_path, monkeypatch):
    output_dir = tmp_path / "model"
    original = MineVaeTrainer.training_step

    def interrupted_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:  # during the third step: the CLI must finish it, then save
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    flags = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), "--save_steps", "100"]
    monkeypatch.setattr(MineVaeTrainer, "training_step", interrupted_at_step_3)
    code, _, err = run(flags)
    assert code == 130, err
    assert last_complete_checkpoint(str(output_dir)).endswith("checkpoint-3")
    assert "--resume" in err and not (output_dir / "config.json").exists()
    monkeypatch.setattr(MineVaeTrainer, "training_step", original)

    code, _, err = run(flags)  # the unfinished run is not silently restarted
    assert code == 2 and "--resume" in err

    code, out, err = run([*flags, "--resume"])
    assert code == 0, err
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 8
    assert "Metrics on validation" in out and "Samples from the prior" in out and "Interpolation" in out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_lora_run_saves_a_merged_plain_model_and_resumes_exactly_from_its_adapter_checkpoint(
    corpus, tmp_path, monkeypatch
):
    """--lora_r trains adapters on the decoder's attention (its other weights and the encoder's stay as built) and
    saves them merged: a plain MINE-VAE folder. Its checkpoints hold the adapters alone, and a Ctrl-C and --resume
    ends bit for bit where an uninterrupted run ends."""
    flags = ["train", *TINY, *tiny.cli_data_flags(corpus), "--lora_r", "2", "--save_steps", "100", "--num_samples", "1"]
    code, out, err = run([*flags, "--output_dir", str(tmp_path / "straight")])
    assert code == 0, err
    assert "in LoRA adapters on the decoder" in err and "Reconstructions" in out

    original = MineVaeTrainer.training_step

    def interrupted_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(MineVaeTrainer, "training_step", interrupted_at_step_3)
    assert run([*flags, "--output_dir", str(resumed)])[0] == 130
    monkeypatch.setattr(MineVaeTrainer, "training_step", original)
    checkpoint = resumed / "checkpoint-3"
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "model.safetensors").exists()
    # The base is rebuilt from the flags: other settings or other weights than the run's are refused.
    code, _, err = run([*flags, "--output_dir", str(resumed), "--resume", "--kl_weight", "0.5"])
    assert_one_line_error(code, err, "trained on another base model", "kl_weight 1.0 -> 0.5", "flags and data the run")
    code, _, err = run([*flags, "--output_dir", str(resumed), "--resume", "--seed", "7"])
    assert_one_line_error(code, err, "its weights differ from the run's base")
    code, _, err = run([*flags, "--output_dir", str(resumed), "--resume"])
    assert code == 0, err

    built = tmp_path / "as-built"  # no step changes anything at learning rate 0: the weights as the flags build them
    assert run([*flags, "--output_dir", str(built), "--learning_rate", "0", "--max_steps", "1"])[0] == 0
    straight, after_resume, initial = (_weights(tmp_path / name) for name in ("straight", "resumed", "as-built"))
    assert straight.keys() == after_resume.keys() == initial.keys()
    assert not any("lora_" in key or "base_layer" in key or "modules_to_save" in key for key in straight)
    assert not (tmp_path / "straight" / "adapter_config.json").exists()
    for key in straight:
        torch.testing.assert_close(after_resume[key], straight[key], rtol=0, atol=0, msg=key)
    changed = {key for key in straight if not torch.equal(straight[key], initial[key])}
    assert any(".attn.c_attn." in key for key in changed)  # the adapters' updates, merged in
    assert any(key.startswith("posterior") for key in changed)  # the heads train with the adapters
    frozen = [key for key in changed if key.startswith("encoder.") or (key.startswith("decoder.") and ".mlp." in key)]
    assert not frozen, frozen
    MineVaeModel.from_pretrained(tmp_path / "straight")  # strict: every key fits a plain MINE-VAE


def test_lora_flags_that_cannot_work_are_one_line_errors(corpus, tmp_path):
    flags = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(tmp_path / "run")]
    code, _, err = run([*flags, "--lora_r", "2", "--lora_target_modules", "q_proj,nope"])
    assert_one_line_error(code, err, "no modules named q_proj, nope for LoRA", "c_attn")
    code, _, err = run([*flags, "--lora_r", "-1"])
    assert_one_line_error(code, err, "--lora_r must be at least 0")
    code, _, err = run([*flags, "--lora_r", "2", "--lora_dropout", "1"])
    assert_one_line_error(code, err, "--lora_dropout must be in [0, 1)")
    code, _, err = run([*flags, "--lora_r", "2", "--push_to_hub", "--hub_model_id", "me/vae"])
    assert_one_line_error(code, err, "pushes the adapters, not the merged model", "mine-vae push OUTPUT_DIR")
    code, _, err = run([*flags, "--lora_dropout", "0.1"])
    assert_one_line_error(code, err, "shape LoRA adapters; add --lora_r R")
    assert run([*flags, "--max_steps", "2", "--save_steps", "2"])[0] == 0  # a run without adapters
    code, _, err = run([*flags, "--max_steps", "4", "--lora_r", "2", "--resume_from_checkpoint",
                        str(tmp_path / "run" / "checkpoint-2")])  # fmt: skip
    assert_one_line_error(code, err, "a checkpoint of a run without LoRA adapters", "without --lora_r")


def test_config_file_and_overwrite(trained, corpus, tmp_path):
    output_dir = tmp_path / "copy"
    shutil.copytree(trained[0], output_dir)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"preset: tiny\ntrain_file: {corpus['train']}\nvalidation-file: {corpus['validation']}\n"
        f"output_dir: {output_dir}\nmax_steps: 2\nnum_samples: 1\nlatent_size: 4\n"
    )
    code, _, err = run(["train", str(config), "--max_steps", "3", "--overwrite"])  # the flag wins over the file
    assert code == 0, err
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
    assert MineVaeModel.from_pretrained(output_dir).config.latent_size == 4
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"num_samples": 2}))
    code, out, _ = run(["generate", "--config", str(json_config), "--model", str(output_dir), "--json"])
    assert code == 0 and len(json.loads(out)["results"]) == 2


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the fix, exit code 2, no traceback
# --------------------------------------------------------------------------------------------------------------------
def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mine-vae ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(tmp_path):
    code, _, err = run(
        ["train", *TINY, "--train_file", str(tmp_path / "nope.txt"), "--output_dir", str(tmp_path / "o")]
    )
    assert_one_line_error(code, err, "does not exist", "Check the path")


@pytest.mark.parametrize("content", ["", "\n   \n\n"])
def test_empty_corpus(tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    code, _, err = run(["train", *TINY, "--train_file", str(empty), "--output_dir", str(tmp_path / "o")])
    assert_one_line_error(code, err, "empty")


def test_text_column_that_does_not_exist(tmp_path):
    table = tmp_path / "data.csv"
    table.write_text("sentence,label\nthe cat sees the moon,1\na dog likes an apple,0\n")
    code, _, err = run(["train", *TINY, "--train_file", str(table), "--output_dir", str(tmp_path / "o")])
    assert_one_line_error(code, err, "no column 'text'", "sentence")


def test_unknown_preset(tmp_path):
    code, _, err = run(["train", "--preset", "huge", "--output_dir", str(tmp_path / "o")])
    assert_one_line_error(code, err, "Unknown preset 'huge'", "small", "tiny", "minilm-smollm2")


def test_output_folder_with_another_model_is_not_overwritten(trained, corpus):
    output_dir, _ = trained
    weights = output_dir / "model.safetensors"
    before = weights.read_bytes()
    code, _, err = run(["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir)])
    assert_one_line_error(code, err, "already holds a trained model", "--overwrite")
    assert weights.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["generate", "--model", "no/such/folder"], "no model at"),
        (["evaluate", "--model", "missing-model"], "no model at"),
        (["train", "--max_stepz", "3"], "unrecognized arguments: --max_stepz"),
        (["train", *TINY, "--critic_steps", "0"], "critic_steps=0"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["train", *TINY, "--resume", "--overwrite"], "pass only one"),
        (["train", "--config", "missing.yaml"], "does not exist"),
    ],
)
def test_other_bad_input(argv, fragment):
    code, _, err = run(argv)
    assert_one_line_error(code, err, fragment)


def test_unknown_setting_in_a_config_file(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "max_stepz": 3}))
    code, _, err = run(["train", str(config)])
    assert_one_line_error(code, err, "unknown setting(s) max_stepz")


def test_bad_interpolation_steps(trained):
    code, _, err = run(["interpolate", "a", "b", "--steps", "1", "--model", str(trained[0])])
    assert_one_line_error(code, err, "--steps must be at least 2")


# --------------------------------------------------------------------------------------------------------------------
# Help and the real entry point
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train", "evaluate", "generate", "interpolate"])
def test_every_command_has_help_with_examples(name):
    code, out, _ = run([name, "--help"])
    assert code == 0
    assert "examples:" in out and f"mine-vae {name}" in out and "--json" in out


def test_train_help_lists_training_arguments_and_preset_defaults():
    code, out, _ = run(["train", "--preset", "tiny", "--help"])
    assert code == 0
    for flag in (
        "--learning_rate",
        "--critic_warmup_steps",
        "--kl_schedule",
        "--train_file",
        "--resume",
        "--overwrite",
    ):
        assert flag in out
    assert "mine-vae-tiny" in out  # the preset's output_dir is the default shown


def test_help_states_each_default_once():
    _ensure_commands()
    for name in list(COMMANDS):
        code, out, _ = run([name, "--help"])
        assert code == 0, name
        for option in re.split(r"\n(?=  -)", out):
            assert " ".join(option.split()).count("(default") <= 1, option
    code, out, _ = run(["train", "--preset", "tiny", "--help"])
    flat = " ".join(out.split())
    # A default the help explains gets the value in the same parentheses, or stands alone when the value is None.
    assert f"Dimension of z (default: {get_preset('tiny').defaults()['latent_size']}, the preset's)." in flat
    assert "alpha / r (default: 2r)." in flat
    # transformers' own "(default)" marks go: the value shown is the one this command uses.
    assert "Sampler for training: 'random', 'sequential'" in flat


def test_overview_lists_commands():
    code, out, _ = run(["--help"])
    assert code == 0 and all(name in out for name in COMMANDS)
    assert run([])[0] == 2


def test_threads_follow_the_flag_or_the_load(monkeypatch):
    from mine_vae.cli import commands
    from mine_vae.cli.commands import CliError, set_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, expected in ((0.1, 2), (1.2, 1), (2.0, 1)):
        torch.set_num_threads(2)
        monkeypatch.setattr(commands, "busy_cores", lambda load=load: load)
        set_threads(None)
        assert torch.get_num_threads() == expected, load
    set_threads(2)  # an explicit choice wins over the load
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with pytest.raises(CliError, match="at least 1"):
        set_threads(0)


def test_busy_cores_reads_what_the_cores_do_now_not_the_minute_before(monkeypatch):
    """/proc/stat over a short window: a busy loop in another process shows up as about one busy core; the 1-minute
    load average (which a `pip install` just before keeps high for a minute) is not read."""
    import subprocess

    from mine_vae.cli.commands import busy_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(window=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.5 < busy < 9.0


def test_format_table_aligns_columns():
    table = format_table([("kl", 1.5), ("ppl", 123.25)], headers=("metric", "value"))
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"] and lines[2].endswith("1.5") and lines[3].endswith("123.2")


def test_the_installed_entry_point_fails_cleanly(tmp_path):
    script = Path(sys.executable).with_name("mine-vae")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mine_vae.cli"]
    result = subprocess.run(
        [*command, "train", "--train_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "missing.txt" in lines[0] and "does not exist" in lines[0]


def test_the_critics_depth_moving_average_and_free_bits_are_model_flags(tmp_path):
    output_dir = tmp_path / "model"
    code, _, err = run(
        ["train", "--preset", "tiny", "--output_dir", str(output_dir), "--max_steps", "2",
         "--critic_num_layers", "3", "--xi", "ema", "--ema_decay", "0.9", "--free_bits", "0.2",
         "--max_train_examples", "64"]
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((output_dir / "config.json").read_text())
    assert (config["critic_num_layers"], config["xi"], config["ema_decay"]) == (3, "ema", 0.9)
    assert config["free_bits"] == 0.2


def test_bag_of_words_and_a_learning_top_decoder_layer_are_train_flags(tmp_path):
    from safetensors import safe_open

    output_dir = tmp_path / "model"
    code, _, err = run(
        ["train", "--preset", "tiny", "--output_dir", str(output_dir), "--max_steps", "2", "--bow_weight", "0.5",
         "--freeze_decoder", "true", "--decoder_trainable_layers", "1", "--max_train_examples", "64"]
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((output_dir / "config.json").read_text())["bow_weight"] == 0.5
    with safe_open(str(output_dir / "model.safetensors"), "pt") as weights:
        assert "bow_head.weight" in set(weights.keys())
    assert json.loads((output_dir / "training_args.json").read_text())["decoder_trainable_layers"] == 1
    # The tiny preset's decoder has one layer: asking for more is a one-line error naming the limit.
    code, _, err = run(
        ["train", "--preset", "tiny", "--output_dir", str(tmp_path / "other"), "--max_steps", "2",
         "--freeze_decoder", "true", "--decoder_trainable_layers", "2", "--max_train_examples", "64"]
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert "decoder_trainable_layers=2, but the decoder has 1 layers; use at most 1" in err


def test_free_bits_are_a_model_setting_with_the_presets_default():
    """Free bits belong to MineVaeConfig (they change the objective, like β and λ): a preset's value, a flag and a
    config file's setting all reach the config; the training arguments have no such field."""
    parsed = parse_train(["--preset", "small"])
    assert parsed["ModelArguments"].config_kwargs()["free_bits"] == 0.25
    assert not hasattr(parsed["MineVaeTrainingArguments"], "free_bits")
    parsed = parse_train([*TINY, "--free_bits", "0.3"])
    assert parsed["ModelArguments"].config_kwargs()["free_bits"] == 0.3


def test_every_model_setting_of_the_config_is_a_train_flag():
    """A field MineVaeConfig adds (the sub-configs, token ids and generic switches aside) can be set from the command
    line; a new one that is not fails here."""
    from dataclasses import fields

    from transformers import PreTrainedConfig

    from mine_vae import MineVaeConfig
    from mine_vae.cli.arguments import ModelArguments

    # The token ids come from the decoder's tokenizer, the sub-configs from --encoder/--decoder or the preset.
    not_settings = {"encoder", "decoder", "use_cache", "tie_word_embeddings", "decoder_start_token_id"}
    not_settings |= {"bos_token_id", "eos_token_id", "pad_token_id"}
    generic = {spec.name for spec in fields(PreTrainedConfig)} | not_settings
    added = {spec.name for spec in fields(MineVaeConfig)} - generic
    flags = {spec.name for spec in fields(ModelArguments)}
    assert added and added <= flags, sorted(added - flags)


def test_an_optional_boolean_setting_is_a_bare_switch_or_takes_a_value():
    """`--latent_vocab_bias` alone turns it on, as `--NAME` does for plain booleans; `false` still turns it off over
    the preset's true, and leaving it out keeps the preset's."""

    def bias(*argv: str) -> bool | None:
        return parse_train([*TINY, *argv])["ModelArguments"].config_kwargs().get("latent_vocab_bias")

    assert bias("--latent_vocab_bias") is True
    assert bias("--latent_vocab_bias", "--free_bits", "0.3") is True
    assert bias("--latent_vocab_bias", "false") is False
    assert bias("--latent_vocab_bias", "no") is False
    assert bias() is None
    assert parse_train([])["ModelArguments"].config_kwargs()["latent_vocab_bias"] is True


def test_residual_layers_are_indices_or_none_over_the_presets(corpus, tmp_path):
    """`--latent_residual_layers 8 12` gives layer indices, `none` turns the preset's off (an empty list: nothing
    shifted), and a word that is no index is refused by name in one line."""

    def layers(*argv: str) -> object:
        return parse_train([*TINY, *argv])["ModelArguments"].config_kwargs().get("latent_residual_layers")

    assert layers("--latent_residual_layers", "0", "1") == [0, 1]
    assert layers("--latent_residual_layers", "none") == []
    assert layers() is None
    argv = ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(tmp_path / "m")]
    code, _, stderr = run([*argv, "--latent_residual_layers", "middle"])
    assert code == 2 and "latent_residual_layers" in stderr and len(stderr.strip().splitlines()) == 1


def test_the_critic_score_bound_is_a_number_or_none_over_the_presets():
    """The pretrained preset bounds the critic's scores; `--critic_score_bound none` turns that off (leaving the flag
    out keeps the preset's), a number replaces it, and a word that is neither is refused by name."""

    def bound(*argv: str) -> object:
        return parse_train(list(argv))["ModelArguments"].config_kwargs().get("critic_score_bound", "not given")

    assert bound() == 5.0
    assert bound("--critic_score_bound", "none") is None
    assert bound("--critic_score_bound", "2.5") == 2.5
    assert bound(*TINY) == "not given"  # the tiny preset leaves the config's default (unbounded)
    code, _, err = run(["train", *TINY, "--critic_score_bound", "tight", "--output_dir", "unused"])
    assert_one_line_error(code, err, "critic_score_bound", "positive number or None")


def test_pretrained_encoder_and_decoder_folders_replace_the_presets(corpus, tmp_path):
    """`--encoder DIR --decoder DIR` build the model from those folders (each with its tokenizer): the paths choose the
    sub-models and are not passed again as config settings."""
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(0)
    encoder_dir, decoder_dir = tmp_path / "encoder", tmp_path / "decoder"
    AutoModel.from_config(tiny.encoder_config(hidden=24)).save_pretrained(encoder_dir)
    tiny.encoder_tokenizer().save_pretrained(encoder_dir)
    AutoModelForCausalLM.from_config(tiny.decoder_config(hidden=40)).save_pretrained(decoder_dir)
    tiny.decoder_tokenizer().save_pretrained(decoder_dir)
    output_dir = tmp_path / "model"
    code, _, err = run(
        ["train", *TINY, *tiny.cli_data_flags(corpus), "--output_dir", str(output_dir), "--max_steps", "2",
         "--encoder", str(encoder_dir), "--decoder", str(decoder_dir)]
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((output_dir / "config.json").read_text())
    assert config["encoder"]["hidden_size"] == 24 and config["decoder"]["n_embd"] == 40
