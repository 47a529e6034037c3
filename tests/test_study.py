"""The study machinery of bench/study_ptb.py on the tiny preset: 2 methods x 1 seed x a few steps, in seconds.

Checks that each finished run writes its results, that a rerun skips finished runs, that a run stopped mid-way
resumes from its checkpoint, and that the page section (table, claims) and the plots are produced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tiny
from datasets import Dataset, DatasetDict
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import study_ptb  # noqa: E402

METHODS = ["vae", "mine-xi1"]
BUDGET = study_ptb.Budget(
    steps=4, eval_examples=16, importance_samples=2, bleu_examples=8, probe_examples=16, log_points=2, saves=2
)


class StopAt(TrainerCallback):
    """Stops training after `step` (after that step's checkpoint is saved), as an interruption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def data() -> study_ptb.StudyData:
    corpus = DatasetDict(
        {
            name: Dataset.from_dict({"text": tiny.sentences(count, seed=seed)})
            for name, count, seed in (("train", 64, 0), ("validation", 24, 1), ("test", 24, 2))
        }
    )
    return study_ptb.prepare_data("tiny", corpus)


@pytest.fixture(scope="module")
def study(data, tmp_path_factory) -> study_ptb.StudyPaths:
    folder = tmp_path_factory.mktemp("study")
    paths = study_ptb.StudyPaths(out=folder / "results", work=folder / "work")
    ran = study_ptb.run_study(METHODS, [0], BUDGET, paths, data=data, preset_name="tiny")
    assert ran == [(method, 0) for method in METHODS]
    return paths


def test_each_run_writes_its_results(study):
    for method in METHODS:
        result = json.loads(study.result(method, 0).read_text())
        assert result["method"] == method and result["seed"] == 0 and result["steps"] == BUDGET.steps
        for key in ("nll", "ppl", "kl", "mi", "au", "bleu", "mi_bound"):
            assert key in result["metrics"]
        assert result["curves"]["step"] == [1.0, 2.0, 4.0]  # logging_first_step, then every 2 steps
        assert len(result["curves"]["probe_au"]) == 3 and len(result["curves"]["mi_bound"]) == 3
        assert not study.run_dir(method, 0).exists()  # checkpoints removed once the results are written
    vae, mine = (json.loads(study.result(m, 0).read_text()) for m in METHODS)
    assert vae["model"]["mi_weight"] == 0 and mine["model"]["mi_weight"] > 0
    assert mine["training"]["critic_warmup_steps"] == round(study_ptb.CRITIC_WARMUP_RATIO * BUDGET.steps)


def test_rerun_skips_finished_runs(study, data):
    before = {m: study.result(m, 0).stat().st_mtime_ns for m in METHODS}
    assert study_ptb.run_study(METHODS, [0], BUDGET, study, data=data, preset_name="tiny") == []
    assert {m: study.result(m, 0).stat().st_mtime_ns for m in METHODS} == before


def test_interrupted_run_resumes_from_its_checkpoint(data, tmp_path):
    paths = study_ptb.StudyPaths(out=tmp_path / "results", work=tmp_path / "work")
    stopped = study_ptb.run_one("beta-anneal", 0, BUDGET, paths, data, "tiny", callbacks=[StopAt(2)])
    assert stopped is None and not paths.result("beta-anneal", 0).exists()
    assert (paths.run_dir("beta-anneal", 0) / "checkpoint-2").is_dir()
    result = study_ptb.run_one("beta-anneal", 0, BUDGET, paths, data, "tiny")
    assert result is not None and result["resumed_from"] == "checkpoint-2" and result["steps"] == BUDGET.steps
    assert result["curves"]["step"] == [1.0, 2.0, 4.0]  # the log history before the interruption is kept
    assert json.loads(paths.result("beta-anneal", 0).read_text())["resumed_from"] == "checkpoint-2"


def test_variant_overrides_settings():
    method = study_ptb.resolve_method("mine-dv@mi_weight=5,critic_steps=2,critic_warmup_ratio=0.1")
    assert method.model["mi_weight"] == 5 and method.model["xi"] == "dv"
    assert method.training["critic_steps"] == 2 and method.training["critic_warmup_ratio"] == 0.1
    with pytest.raises(ValueError, match="neither"):
        study_ptb.resolve_method("vae@no_such_setting=1")
    with pytest.raises(ValueError, match="Unknown method"):
        study_ptb.resolve_method("no-such-method")


def test_report_writes_table_claims_and_plots(study, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nCommentary kept.\n\n<!-- BEGIN other -->\nold\n<!-- END other -->\n")
    text = study_ptb.report(study.out, METHODS, doc, {"command": "python bench/study_ptb.py --test"})
    page = doc.read_text()
    assert text is not None and "Commentary kept." in page and "<!-- BEGIN other -->\nold" in page
    assert page.count("<!-- BEGIN results -->") == 1 and page.count("<!-- BEGIN ") == 2  # a new section, appended
    for label in ("VAE (β = 1)", "MINE-VAE ξ = 1", "IW-NLL", "AU", "--test", "The claim"):
        assert label in text
    for name in ("curves.png", "active_units.png"):
        assert (study.out / name).read_bytes().startswith(b"\x89PNG")
        assert f"results/{name})" in text  # linked relative to the page
    # Rewriting replaces the section instead of appending another.
    study_ptb.report(study.out, METHODS, doc, {"command": "python bench/study_ptb.py --test"})
    assert doc.read_text().count("<!-- BEGIN ") == 2
    summary = json.loads((study.out / "summary.json").read_text())
    assert set(summary) == set(METHODS)
