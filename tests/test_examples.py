"""Every script in examples/ runs in its --smoke mode or on a tiny saved model (tiny models, seconds, offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import tiny
import torch
from browser import browser_or_skip

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_every_example_has_a_smoke_test():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {
        "explorer_screenshot",
        "finetune_pretrained_pair",
        "generate_and_interpolate",
        "latent_space",
        "plot_latent_space",
    }


def test_explorer_screenshot_smoke(tmp_path, capsys):
    # The tiny untrained model rarely stops on its own: 6 tokens a sentence keep the page's requests to seconds.
    browser_or_skip()
    model = tiny.saved_model(tmp_path / "model")
    out = tmp_path / "docs" / "explorer.png"  # a folder that is not there yet: the script makes it
    code = load("explorer_screenshot").main(
        ["--model", str(model), "--out", str(out), "--max_new_tokens", "6", "--steps", "3"]
        + ["--sentence", "the cat sees the moon", "--sentence", "a dog likes a red ball"]
        + ["--label_a", "the cat sees the moon", "--label_b", "my sister hears the river"]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)  # last: a library may warn on stdout first
    picture = out.read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["explorer.png"]  # no temporary file left beside it


@pytest.mark.parametrize("missing", ["model", "browser"])
def test_explorer_screenshot_refuses_in_one_line(tmp_path, capsys, monkeypatch, missing):
    script = load("explorer_screenshot")
    model = tmp_path / "no-model"
    if missing == "browser":
        model = tiny.saved_model(tmp_path / "model")
        monkeypatch.setattr(script, "CHROMIUM", str(tmp_path / "no-chromium"))
    capsys.readouterr()  # saving the model's progress bar
    code = script.main(["--model", str(model), "--out", str(tmp_path / "explorer.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert ("no model folder" if missing == "model" else "apt-get install -y chromium chromium-driver") in err[0]
    assert not (tmp_path / "explorer.png").exists()


def test_finetune_pretrained_pair_smoke(capsys):
    metrics = load("finetune_pretrained_pair").main(["--smoke"])
    for key in ("eval_nll", "eval_kl", "eval_mi", "eval_au", "eval_mi_bound"):
        assert key in metrics
    assert capsys.readouterr().out.count("sample:") == 3


def test_generate_and_interpolate_smoke(capsys):
    results = load("generate_and_interpolate").main(
        ["--smoke", "--num_samples", "2", "--steps", "3", "--max_new_tokens", "6"]
    )
    assert len(results["prior, greedy"]) == 2 and len(results["reconstructions"]) == 3
    assert len(results["posterior samples of sentence 1"]) == 2 and len(results["interpolation 1 -> 2"]) == 3
    assert "interpolation 1 -> 2:" in capsys.readouterr().out


def test_latent_space_smoke(tmp_path):
    import csv

    import matplotlib.image

    # A few dozen labelled sentences through --data, cut by --limit: the script's Rotten Tomatoes path is the same.
    data = tmp_path / "snippets.csv"
    rows = load("latent_space").toy_snippets(16)
    with open(data, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("category", "text"), *rows])
    out = tmp_path / "report"
    results = load("latent_space").main(
        [
            "--smoke",
            "--data",
            str(data),
            "--limit",
            "12",
            "--out_dir",
            str(out),
            "--max_new_tokens",
            "5",
            "--examples",
            "2",
        ]
    )
    assert results["snippets"] == 36
    for features in ("posterior_mean", "encoder_mean_pooled"):
        assert len(results["probe"][features]["fold_accuracies"]) == 5
        assert 0 <= results["probe"][features]["accuracy_mean"] <= 1
    strengths = results["transfer"]["strengths"]
    assert [row["strength"] for row in strengths] == [0, 0.5, 1, 1.5, 2, 3]
    assert all(0 <= row["fresh_share"] <= 1 and row["bleu_vs_input"] >= 0 for row in strengths)
    assert len(results["transfer"]["examples"]) == 2
    written = {p.name for p in out.iterdir()}
    assert written == {"latent_space.json", "latent_space.md", "latent_pca.png", "attribute_transfer.png"}
    assert "| strength | judged fresh | BLEU vs input |" in (out / "latent_space.md").read_text()
    for picture in ("latent_pca.png", "attribute_transfer.png"):
        assert matplotlib.image.imread(out / picture)[..., :3].std() > 0.05


def test_plot_latent_space_smoke(tmp_path):
    import matplotlib.image

    written = load("plot_latent_space").main(["--smoke", "--out_dir", str(tmp_path)])
    assert [p.name for p in written] == ["latent_space.png", "training_curves.png"]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_pca_projects_onto_the_directions_of_largest_variance():
    pca_2d = load("plot_latent_space").pca_2d
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(500, 4, generator=generator) * torch.tensor([5.0, 0.1, 2.0, 0.1])
    projected, explained = pca_2d(points)
    assert projected.shape == (500, 2)
    assert explained[0] > explained[1] > 0.1
    assert torch.allclose(projected[:, 0].abs(), points[:, 0].sub(points[:, 0].mean()).abs(), atol=0.3)
