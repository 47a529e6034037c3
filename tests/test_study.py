"""The posterior-collapse study (`mine_vae.study`, `mine-vae study`) on the tiny preset: 2 methods x 1 seed x a few
steps, in seconds.

Checks that each finished run writes its results, that a rerun skips finished runs, that a run stopped mid-way
resumes from its checkpoint, that the page section (table, claims) and the plots are produced, that the command runs
end to end on a user's corpus, and that `--report_only` rebuilds the committed section of docs/benchmarks.md from the
committed results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import tiny
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from mine_vae import MineVaeConfig
from mine_vae.cli import main
from mine_vae.study import (
    CRITIC_WARMUP_RATIO,
    Budget,
    Method,
    StudyData,
    StudyPaths,
    prepare_data,
    read_section,
    report,
    resolve_method,
    run_one,
    run_study,
)
from mine_vae.study.methods import MINE_TRAINING_SETTINGS, MODEL_SETTINGS
from mine_vae.study.report import free_bits
from mine_vae.study.runner import REPORTED_ARGS

REPO = Path(__file__).resolve().parent.parent
METHODS = ["vae", "mine-xi1"]
BUDGET = Budget(
    steps=4,
    eval_examples=16,
    importance_samples=2,
    bleu_examples=8,
    probe_examples=16,
    probe_bleu_examples=3,
    log_points=2,
    saves=2,
)
BUDGET_FLAGS = ["--steps", "4", "--importance_samples", "2", "--log_points", "2", "--saves", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`mine-vae` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data() -> StudyData:
    corpus = DatasetDict(
        {
            name: Dataset.from_dict({"text": tiny.sentences(count, seed=seed)})
            for name, count, seed in (("train", 64, 0), ("validation", 24, 1), ("test", 24, 2))
        }
    )
    return prepare_data("tiny", corpus)


@pytest.fixture(scope="module")
def study(data, tmp_path_factory) -> StudyPaths:
    folder = tmp_path_factory.mktemp("study")
    paths = StudyPaths(out=folder / "results", work=folder / "work")
    ran = run_study(METHODS, [0], BUDGET, paths, data=data, preset_name="tiny")
    assert ran == [(method, 0) for method in METHODS]
    return paths


# --------------------------------------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------------------------------------
def test_each_run_writes_its_results(study):
    for method in METHODS:
        result = json.loads(study.result(method, 0).read_text())
        assert result["method"] == method and result["seed"] == 0 and result["steps"] == BUDGET.steps
        for key in ("nll", "ppl", "kl", "mi", "au", "bleu", "mi_bound"):
            assert key in result["metrics"]
        assert result["curves"]["step"] == [1.0, 2.0, 4.0]  # logging_first_step, then every 2 steps
        assert len(result["curves"]["probe_au"]) == 3 and len(result["curves"]["mi_bound"]) == 3
        bleu = result["curves"]["probe_bleu"]  # greedy reconstructions of 3 probe sentences at every log line
        assert len(bleu) == 3 and all(0.0 <= value <= 100.0 for value in bleu)
        assert not study.run_dir(method, 0).exists()  # checkpoints removed once the results are written
    vae, mine = (json.loads(study.result(m, 0).read_text()) for m in METHODS)
    assert vae["model"]["mi_weight"] == 0 and mine["model"]["mi_weight"] > 0
    assert vae["model"]["free_bits"] == vae["architecture"]["free_bits"] == 0.0  # not the tiny preset's
    assert mine["training"]["critic_warmup_steps"] == round(CRITIC_WARMUP_RATIO * BUDGET.steps)


def test_recorded_settings_are_the_dataclass_fields(study):
    """A run records every field MINE-VAE adds to the config and to the training arguments, read from the
    dataclasses, so that a field added there is recorded without touching the study."""
    config_fields = {f.name for f in dataclasses.fields(MineVaeConfig)}
    assert {"latent_size", "xi", "kl_weight", "mi_weight", "free_bits"} <= set(MODEL_SETTINGS) <= config_fields
    assert {"kl_schedule", "critic_steps", "mi_warmup_steps"} <= set(MINE_TRAINING_SETTINGS)
    assert "free_bits" not in MINE_TRAINING_SETTINGS  # the config's alone, like β and λ
    assert not set(MINE_TRAINING_SETTINGS) & {f.name for f in dataclasses.fields(TrainingArguments)}
    result = json.loads(study.result("mine-xi1", 0).read_text())
    assert set(result["architecture"]) == {*MODEL_SETTINGS, "encoder", "decoder", "parameters"}
    assert set(result["training"]) == set(REPORTED_ARGS)


def test_rerun_skips_finished_runs(study, data):
    before = {m: study.result(m, 0).stat().st_mtime_ns for m in METHODS}
    assert run_study(METHODS, [0], BUDGET, study, data=data, preset_name="tiny") == []
    assert {m: study.result(m, 0).stat().st_mtime_ns for m in METHODS} == before


def test_interrupted_run_resumes_from_its_checkpoint(data, tmp_path):
    paths = StudyPaths(out=tmp_path / "results", work=tmp_path / "work")
    stopped = run_one("beta-anneal", 0, BUDGET, paths, data, "tiny", callbacks=[tiny.StopAt(2)])
    assert stopped is None and not paths.result("beta-anneal", 0).exists()
    assert (paths.run_dir("beta-anneal", 0) / "checkpoint-2").is_dir()
    result = run_one("beta-anneal", 0, BUDGET, paths, data, "tiny")
    assert result is not None and result["resumed_from"] == "checkpoint-2" and result["steps"] == BUDGET.steps
    assert result["curves"]["step"] == [1.0, 2.0, 4.0]  # the log history before the interruption is kept
    assert json.loads(paths.result("beta-anneal", 0).read_text())["resumed_from"] == "checkpoint-2"


def test_variant_overrides_settings():
    method = resolve_method("mine-dv@mi_weight=5,critic_steps=2,critic_warmup_ratio=0.1")
    assert method.model["mi_weight"] == 5 and method.model["xi"] == "dv"
    assert method.training["critic_steps"] == 2 and method.training["critic_warmup_ratio"] == 0.1
    with pytest.raises(ValueError, match="neither"):
        resolve_method("vae@no_such_setting=1")
    with pytest.raises(ValueError, match="Unknown method"):
        resolve_method("no-such-method")


def test_free_bits_are_read_from_new_and_old_results():
    """Runs record free bits with the method's model settings; results written while free bits were a training
    argument hold them among the training settings, and still report them."""
    assert resolve_method("optimus").model["free_bits"] == 0.5 and "free_bits" not in resolve_method("optimus").training
    assert resolve_method("vae@free_bits=0.3").model["free_bits"] == 0.3
    with pytest.raises(TypeError, match="free_bits are MineVaeConfig settings; give them in `model`"):
        Method("mine", "MINE", {}, {"free_bits": 0.5}, "mine")
    assert free_bits({"model": {"free_bits": 0.5}, "training": {}}) == 0.5
    assert free_bits({"model": {"kl_weight": 1.0}, "training": {"free_bits": 0.25}}) == 0.25
    old = json.loads((REPO / "bench/results/study-quick/finished/optimus-seed0.json").read_text())
    assert "free_bits" not in old["model"] and free_bits(old) == old["training"]["free_bits"] == 0.5


def test_report_writes_table_claims_and_plots(study, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nCommentary kept.\n\n<!-- BEGIN other -->\nold\n<!-- END other -->\n")
    text = report(study.out, METHODS, doc, {"command": "mine-vae study --test"})
    page = doc.read_text()
    assert text is not None and "Commentary kept." in page and "<!-- BEGIN other -->\nold" in page
    assert page.count("<!-- BEGIN results -->") == 1 and page.count("<!-- BEGIN ") == 2  # a new section, appended
    for label in ("VAE (β = 1)", "MINE-VAE ξ = 1", "IW-NLL", "AU", "--test", "The claim"):
        assert label in text
    for name in ("curves.png", "active_units.png"):
        assert (study.out / name).read_bytes().startswith(b"\x89PNG")
        assert f"results/{name})" in text  # linked relative to the page
    # Rewriting replaces the section instead of appending another.
    report(study.out, METHODS, doc, {"command": "mine-vae study --test"})
    assert doc.read_text().count("<!-- BEGIN ") == 2
    summary = json.loads((study.out / "summary.json").read_text())
    assert set(summary) == set(METHODS)


def test_curves_show_the_probes_mi_under_its_ceiling(study, tmp_path, monkeypatch):
    """The curves have a panel per logged quantity (KL, bound, MI, AU, BLEU where logged), and the MI panel draws its
    ceiling log N of the probe's N sentences."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to read them back
    report(study.out, METHODS, tmp_path / "benchmarks.md", {"command": "mine-vae study --test"})
    titles = [axis.get_title() for axis in figures[0].axes]
    mi_axis = next(axis for axis in figures[0].axes if axis.get_title().startswith("MI, aggregate posterior"))
    probe = json.loads(next((study.out / "finished").glob("*.json")).read_text())["budget"]["probe_examples"]
    ceilings = [line.get_ydata()[0] for line in mi_axis.get_lines() if line.get_linestyle() == ":"]
    assert titles[:3] == [titles[0], titles[1], mi_axis.get_title()] and "KL" in titles[0]
    assert ceilings == [pytest.approx(math.log(probe))]
    assert len(mi_axis.get_lines()) == len(METHODS) + 1


def test_table_shows_the_decoder_alone_and_marks_mi_at_its_ceiling():
    """Each row shows the decoder alone next to the IW-NLL, and MI with its ceiling log N: an estimate that sits at
    the ceiling is printed as a lower bound ("≥")."""
    import math

    from mine_vae.study.report import results_table, summarize

    def run(method: str, mi: float) -> dict:
        metrics = {"nll": 90.0, "decoder_nll": 100.0, "mi": mi, "num_examples": 200.0}
        return {"method": method, "label": method, "role": "baseline", "seed": 0, "metrics": metrics}

    table = results_table(summarize([run("measured", 3.0), run("saturated", math.log(200) - 0.01)]))
    header, _, measured, saturated = table.splitlines()
    assert header.index("IW-NLL") < header.index("decoder alone") and "ceiling log N" in header
    assert "| 90.00 | 100.00 |" in measured and "| 3.00 (5.30) |" in measured
    assert "| ≥ 5.29 (5.30) |" in saturated


# --------------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------------
def test_command_runs_the_study_on_a_users_corpus(tmp_path):
    """`mine-vae study` end to end on the tiny preset and a training file (validation and test held out of it)."""
    train = tmp_path / "train.txt"
    train.write_text("\n".join(tiny.sentences(80, seed=0)) + "\n")
    out, doc = tmp_path / "study", tmp_path / "page.md"
    argv = ["study", *METHODS, "--preset", "tiny", "--quick", "--train_file", str(train), *BUDGET_FLAGS]
    argv += ["--out", str(out), "--work_dir", str(tmp_path / "work"), "--doc", str(doc)]
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    assert "No test split: holding out" in stderr and "[mine-xi1 seed 0] step 4/4" in stderr
    for method in METHODS:
        result = json.loads((out / "finished" / f"{method}-seed0.json").read_text())
        assert result["preset"] == "tiny" and result["steps"] == 4 and result["budget"]["importance_samples"] == 2
        assert result["data"]["corpus"] == "train.txt" and result["data"]["held_out"] == ["validation", "test"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith("mine-vae study vae mine-xi1 --preset tiny --quick ")
    assert "--steps 4" in meta["command"] and f"--train_file {train}" in meta["command"]
    assert len(meta["invocations"]) == 1 and meta["invocations"][0]["runs"] == 2
    assert "| VAE (β = 1) | 1 |" in stdout and "test split of train.txt" in stdout
    assert read_section(doc, "study") == stdout.strip()
    # The same command again trains nothing and records no invocation.
    code, stdout_again, stderr = run_cli(argv)
    assert code == 0 and "done already" in stderr and "step 1/4" not in stderr
    assert len(json.loads((out / "meta.json").read_text())["invocations"]) == 1


def test_report_only_rebuilds_the_committed_section(tmp_path):
    """`--report_only` on the committed quick study gives the section docs/benchmarks.md holds, from its results
    alone. The hardware line names the machine and library versions that write the report, so those are masked."""
    page = REPO / "docs" / "benchmarks.md"
    out = tmp_path / "bench" / "results" / "study-quick"  # a copy: the report rewrites summary.json and the plots
    shutil.copytree(REPO / "bench" / "results" / "study-quick", out)
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    shutil.copy(page, doc)
    code, stdout, stderr = run_cli(["study", "--quick", "--report_only", "--out", str(out), "--doc", str(doc)])
    assert code == 0, stderr
    generated, expected = read_section(doc, "study-quick"), read_section(page, "study-quick")
    assert expected is not None and generated == stdout.strip()
    assert _machine_masked(generated) == _machine_masked(expected)


def _machine_masked(section: str) -> str:
    return re.sub(r"- Hardware: .*?; torch threads per run:", "- Hardware: ...; torch threads per run:", section)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-method"], "Unknown method 'no-such-method'"),
        (["vae@mi_weight=-1"], "mi_weight"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--eval_split", "train"], "eval_split must be test or validation"),
        (["--jobs", "0"], "--jobs must be at least 1"),
    ],
)
def test_command_refuses_bad_input_in_one_line(argv, message, tmp_path):
    code, stdout, stderr = run_cli(["study", *argv, "--out", str(tmp_path / "out")])
    assert code == 2 and stdout == ""
    assert stderr.startswith("mine-vae study: error: ") and message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing trained


def test_report_only_without_results_says_so(tmp_path):
    code, _, stderr = run_cli(["study", "--report_only", "--no_plots", "--out", str(tmp_path / "empty")])
    assert code == 2 and "no finished runs in" in stderr and stderr.count("\n") == 1


def test_the_pretrained_study_runs_its_five_methods_on_the_pretrained_pair_without_the_presets_schedules(tmp_path):
    """`--preset minilm-smollm2`: VAE, β-annealing, Optimus, MINE-VAE (DV) and the autoencoder warm start by default;
    each run trains the pair with the method's β schedule, not the preset's own warm start."""
    from mine_vae.study import get_study_preset, training_kwargs
    from mine_vae.study.methods import resolve_method

    preset = get_study_preset("minilm-smollm2")
    assert preset.default_methods() == ["vae", "beta-anneal", "optimus", "mine-dv", "ae-warm"]
    assert preset.seed_count() >= 2
    budget = preset.budget(quick=True)
    optimus = training_kwargs("minilm-smollm2", resolve_method("optimus"), budget, 0, tmp_path)
    assert optimus["kl_schedule"] == "cyclical" and optimus["kl_cycles"] == 4
    assert "kl_zero_ratio" not in optimus  # the preset's 0.4 would have changed Optimus' cycles
    assert "final_free_bits" not in optimus  # nor its rate cut Optimus' own free bits
    assert optimus["freeze_decoder"] and optimus["bf16"] and optimus["max_steps"] == budget.steps
    warm = training_kwargs("minilm-smollm2", resolve_method("ae-warm"), budget, 0, tmp_path)
    assert (warm["kl_cycles"], warm["kl_zero_ratio"]) == (1, 0.5)


def test_the_collapse_study_trains_six_methods_with_the_decoders_top_layers_learning(tmp_path):
    """`--preset minilm-smollm2-embed`: z through the embeddings only, all 30 decoder layers trained in every run;
    the bag-of-words method is the VAE's objective plus the head's loss, the others have no head."""
    from mine_vae.presets import get_preset
    from mine_vae.study import get_study_preset, training_kwargs
    from mine_vae.study.methods import resolve_method

    preset = get_study_preset("minilm-smollm2-embed")
    methods = preset.default_methods()
    assert methods == ["vae", "beta-anneal", "optimus", "bow", "mine-dv@mi_weight=10", "mine-ema@mi_weight=10"]
    # λ per estimator, as the quick tier's pilot chose it.
    assert [resolve_method(name).model["mi_weight"] for name in methods[-2:]] == [10, 10]
    assert (preset.seed_count(), preset.seed_count(quick=True)) == (3, 1)
    assert (preset.budget().steps, preset.budget(quick=True).steps) == (300, 150)
    model = get_preset("minilm-smollm2-embed").model
    assert model["latent_injection"] == "embedding" and model["free_bits"] == 0.0
    assert "latent_memory_positions" not in model and "latent_vocab_bias" not in model
    budget = preset.budget(quick=True)
    for name in preset.default_methods():
        kwargs = training_kwargs("minilm-smollm2-embed", resolve_method(name), budget, 0, tmp_path)
        assert kwargs["freeze_encoder"] and kwargs["freeze_decoder"] and kwargs["decoder_trainable_layers"] == 30
        assert kwargs["max_steps"] == 150 and kwargs["standardize_latent_examples"] == 0
    bow = resolve_method("bow")
    assert bow.model["bow_weight"] > 0 and bow.model["mi_weight"] == 0.0 and bow.model["free_bits"] == 0.0
    assert bow.training["kl_schedule"] == "constant"
    assert all("bow_weight" not in resolve_method(name).model for name in preset.default_methods() if name != "bow")
    # The CPU study keeps the nine methods it has run.
    assert "bow" not in get_study_preset("small").default_methods()


def test_report_model_line_says_which_decoder_layers_trained():
    from mine_vae.study.report import _architecture_text

    arch = {
        "encoder": {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384, "hidden_dropout_prob": 0.1},
        "decoder": {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152},
        **{"latent_size": 64, "pooling": "mean", "latent_injection": "embedding", "parameters": 1000},
        **{"critic_num_layers": 2, "critic_hidden_size": 256},
    }
    frozen = {"freeze_encoder": True, "freeze_decoder": True, "decoder_trainable_layers": 0}
    assert "trained:" not in _architecture_text(arch, "minilm-smollm2", frozen)
    line = _architecture_text(arch, "minilm-smollm2-embed", {**frozen, "decoder_trainable_layers": 2})
    assert "critic 2×256; trained: the decoder's top 2 layers and final norm (the decoder learns; its lower" in line
    every = _architecture_text(arch, "minilm-smollm2-embed", {**frozen, "decoder_trainable_layers": 30})
    assert "trained: the decoder's 30 layers and final norm (the decoder learns; its embeddings and LM head" in every


def test_report_model_line_names_positions_the_vocabulary_bias_and_the_score_bound_only_when_set():
    """Runs recorded before either setting existed (or with its default) keep the model line they always had."""
    from mine_vae.study.report import _architecture_text

    arch = {
        "encoder": {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 8, "hidden_dropout_prob": 0.1},
        "decoder": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 40},
        **{"latent_size": 8, "pooling": "mean", "latent_injection": "memory", "parameters": 1000},
        **{"critic_num_layers": 2, "critic_hidden_size": 16},
    }
    assert "(mean pooling, injected as memory), critic" in _architecture_text(arch, "tiny")
    settings = {"latent_memory_positions": 1, "latent_vocab_bias": False}
    assert "(mean pooling, injected as memory), critic" in _architecture_text({**arch, **settings}, "tiny")
    settings = {"latent_memory_positions": 8, "latent_vocab_bias": True}
    line = _architecture_text({**arch, **settings}, "tiny")
    assert "injected as memory, 8 key/value positions per layer, plus a bias over the vocabulary), critic" in line
    assert "critic 2×16; 1,000 parameters" in line
    for bound in (None, 5.0):  # an unbounded critic (recorded or not) reads as before; a bound is named
        text = _architecture_text({**arch, "critic_score_bound": bound}, "tiny")
        assert ("critic 2×16, scores bounded to ±5;" in text) == (bound is not None)
        assert ("critic 2×16; 1,000 parameters" in text) == (bound is None)


def test_a_stopped_study_records_the_runs_it_finished(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI raises the same way) during a study: the invocation is still recorded, with
    its wall time, the runs it finished and a mark that it was stopped; the report then has a wall time to print."""
    from mine_vae.study import record
    from mine_vae.study.runner import StudyPaths

    paths = StudyPaths(tmp_path / "out", tmp_path / "work")

    def one_run_then_stopped(specs, seeds, budget, paths, jobs=1, **options):
        paths.result("vae", 0).parent.mkdir(parents=True)
        paths.result("vae", 0).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(record, "run_study", one_run_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        record.run_and_record(["vae", "mine-dv"], [0], None, paths, "mine-vae study vae mine-dv", jobs=2)
    meta = record.read_meta(paths.out)
    assert meta["command"] == "mine-vae study vae mine-dv" and meta["jobs"] == 2
    (invocation,) = meta["invocations"]
    assert invocation["runs"] == 1 and invocation["interrupted"] is True and invocation["wall_seconds"] >= 0
    # A later invocation that finishes adds to the record; one that trains nothing adds nothing.
    monkeypatch.setattr(record, "run_study", lambda *args, **kwargs: ["mine-dv-seed0"])
    record.run_and_record(["vae", "mine-dv"], [0], None, paths, "mine-vae study vae mine-dv", jobs=2)
    monkeypatch.setattr(record, "run_study", lambda *args, **kwargs: [])
    record.run_and_record(["vae", "mine-dv"], [0], None, paths, "mine-vae study vae mine-dv", jobs=2)
    invocations = record.read_meta(paths.out)["invocations"]
    assert [i["runs"] for i in invocations] == [1, 1] and "interrupted" not in invocations[1]


def test_the_report_says_when_an_invocation_was_stopped(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study.out, out)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"command": "mine-vae study --test"}
    stopped = {"wall_seconds": 60.0, "load_start": 1.0, "load_end": 2.0, "runs": 1, "interrupted": True}
    meta["invocations"] = [*meta.get("invocations", []), stopped]
    meta_path.write_text(json.dumps(meta))
    text = report(out, METHODS, tmp_path / "benchmarks.md", meta)
    assert "1 of them stopped before the end" in text
    del meta["invocations"][-1]["interrupted"]
    assert "stopped before the end" not in report(out, METHODS, tmp_path / "benchmarks.md", meta)
