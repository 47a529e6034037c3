"""`bench/gpu_check.py`: the dry run (every part on the CPU, tiny models) writes the JSON and the Markdown it promises,
and without a GPU the real check refuses in one line."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def dry_run(gpu_check, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("gpu-check")
    code = gpu_check.main(["--dry_run", "--out", str(out)])
    return code, out, json.loads((out / gpu_check.JSON_NAME).read_text()), (out / gpu_check.MARKDOWN_NAME).read_text()


def test_the_dry_run_runs_every_part_without_error(dry_run, gpu_check):
    code, _, results, _ = dry_run
    assert code == 0
    assert results["dry_run"] is True
    assert list(results["parts"]) == list(gpu_check.PARTS)
    assert {name: part["error"] for name, part in results["parts"].items()} == dict.fromkeys(gpu_check.PARTS)


def test_the_ratio_rows_are_those_of_the_bench_scripts(dry_run, gpu_check):
    rows = dry_run[2]["parts"]["ratios"]["rows"]
    whats = [row["what"] for row in rows]
    assert {row["source"] for row in rows} == {"bench_model", "bench_trainer"}
    assert any(what.startswith("generate tok/s: MineVae vs decoder") for what in whats)
    assert any(what.startswith("IW-NLL ms") for what in whats)  # the GPU-only target's row
    assert any("VAE (frozen, bf16) vs its decoder fwd+bwd" in what for what in whats)  # the pretrained pair's
    generation = next(row for row in rows if row["what"].startswith("generate tok/s: MineVae vs decoder"))
    assert generation["target"] == f">= {gpu_check.bench_model.GENERATE_TARGET:.2f}"
    for row in rows:
        assert row["value_a"] > 0 and row["value_b"] > 0 and row["ratio"] > 0


def test_memory_rows_double_the_batch_up_to_the_cap(dry_run, gpu_check):
    rows = dry_run[2]["parts"]["memory"]["rows"]
    plan = gpu_check.Plan.make(dry_run=True, budget=1.0)
    assert [row["variant"] for row in rows] == ["frozen decoder", "LoRA r=8 (decoder attention)", "full decoder"]
    expected = [plan.memory_batch * 2**i for i in range(4) if plan.memory_batch * 2**i <= plan.max_batch]
    trainable = [row["trainable_parameters"] for row in rows]
    assert trainable[0] < trainable[1] < trainable[2]  # the adapters, then the whole decoder, train on top
    for row in rows:
        assert [result["batch"] for result in row["results"]] == expected
        assert row["largest_batch"] == expected[-1] and row["stopped"] == f"cap {plan.max_batch} reached"
        assert all(result["peak_mib"] > 0 and result["tokens_per_second"] > 0 for result in row["results"])


def test_the_main_job_ends_with_the_train_report(dry_run):
    job = dry_run[2]["parts"]["main"]["result"]
    assert job["command"].startswith("mine-vae train ")
    report = job["report"]
    assert report["command"] == "train" and report["global_step"] == job["steps"]
    assert {"nll", "kl", "mi", "au"} <= set(report["metrics"])
    assert report["samples"] and report["reconstructions"]
    assert job["printed"].startswith(f"Metrics on {report['split']}")
    assert report["reconstructions"][0]["output"] in job["printed"]


def test_the_main_job_is_sized_by_the_memory_parts_frozen_step(dry_run, gpu_check):
    results = dry_run[2]
    frozen = results["parts"]["memory"]["rows"][0]
    measured = {result["batch"]: result["step_seconds"] for result in frozen["results"]}
    job = results["parts"]["main"]["result"]
    assert job["measured_step_seconds"] == measured[job["batch_size"]]
    assert f"--per_device_train_batch_size {job['batch_size']}" in job["command"]


def test_the_main_job_alone_measures_the_frozen_step_itself(gpu_check, tmp_path, one_thread):
    out = tmp_path / "out"
    assert gpu_check.main(["--dry_run", "--parts", "main", "--out", str(out)]) == 0
    results = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert list(results["parts"]) == ["main"]
    assert results["parts"]["main"]["result"]["measured_step_seconds"] > 0


def test_the_markdown_holds_every_table_and_the_report(dry_run):
    results, text = dry_run[2], dry_run[3]
    for title in ("## Ratios", "## Training step: memory and throughput", "## Main job"):
        assert title in text
    for row in results["parts"]["ratios"]["rows"]:
        assert f"| {row['what']} |" in text
    for row in results["parts"]["memory"]["rows"]:
        assert f"| {row['variant']} | {row['trainable_parameters']:,} |" in text
    assert results["parts"]["main"]["result"]["printed"].strip() in text


def test_without_a_gpu_it_refuses_in_one_line(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "--dry_run" in err
    assert not (tmp_path / "out").exists()  # nothing written, nothing run


@pytest.mark.parametrize("flags", [["--budget", "0"], ["--budget", "nan"]])
def test_a_bad_budget_is_refused_in_one_line(gpu_check, tmp_path, capsys, flags):
    assert gpu_check.main(["--dry_run", "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget" in err


def test_without_the_pretrained_pair_only_the_from_config_ratios_run(gpu_check, tmp_path, one_thread):
    out = tmp_path / "out"
    assert gpu_check.main(["--dry_run", "--no_pretrained", "--out", str(out)]) == 0
    results = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert list(results["parts"]) == ["ratios"]
    whats = [row["what"] for row in results["parts"]["ratios"]["rows"]]
    assert any(what.startswith("IW-NLL ms") for what in whats)
    assert not any("VAE (frozen, bf16)" in what for what in whats)
