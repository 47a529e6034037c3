"""Latent-space operations (mine_vae.latent) and `mine-vae embed`, on tiny untrained models: shapes, exact endpoints,
the identities of the algebra, and the command's output and errors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from mine_vae import MineVaeModel, MineVaeProcessor, latent
from mine_vae.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

LATENT_SIZE = 8  # tiny.model's


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny.model().eval(), tiny.processor()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return tiny.saved_model(tmp_path_factory.mktemp("saved") / "model")


def random_latents(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------------
# Encoding and decoding
# ----------------------------------------------------------------------------------------------------------------------
def test_encode_texts_gives_posterior_means_in_batches_without_gradients(model_and_processor):
    model, processor = model_and_processor
    texts = tiny.sentences(7)
    model.train()  # encode_texts switches dropout off for the call and restores the mode
    mu, logvar = latent.encode_texts(model, processor, texts, batch_size=3, return_logvar=True)
    assert model.training
    model.eval()
    assert mu.shape == logvar.shape == (7, LATENT_SIZE)
    assert not mu.requires_grad and mu.device.type == "cpu"
    batch = processor(texts)
    with torch.no_grad():
        posterior = model.encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(mu, posterior.mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logvar, posterior.logvar, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latent.encode_texts(model, processor, texts, batch_size=64), mu, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("texts", [[], ["the cat", "  "]])
def test_encode_texts_refuses_empty_input(model_and_processor, texts):
    with pytest.raises(ValueError):
        latent.encode_texts(*model_and_processor, texts)


def test_decode_is_greedy_generation_from_the_latents(model_and_processor):
    model, processor = model_and_processor
    latents = random_latents(3)
    texts = latent.decode(model, processor, latents, batch_size=2, max_new_tokens=6)
    ids = model.generate(latent=latents, max_new_tokens=6, do_sample=False)
    assert texts == latent.texts_from_ids(processor, ids)
    assert latent.decode(model, processor, latents[0], max_new_tokens=6) == texts[:1]  # one latent of shape (d,)


# ----------------------------------------------------------------------------------------------------------------------
# The algebra
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [latent.lerp, latent.slerp])
def test_interpolation_endpoints_are_the_inputs(path):
    a, b = random_latents(2)
    steps = path(a, b, 7)
    assert steps.shape == (7, LATENT_SIZE)
    assert torch.equal(steps[0], a) and torch.equal(steps[-1], b)
    assert torch.equal(path(a.unsqueeze(0), b.unsqueeze(0), 2), torch.stack([a, b]))
    with pytest.raises(ValueError, match="at least 2"):
        path(a, b, 1)


def test_slerp_keeps_to_the_arc_and_falls_back_to_lerp_for_parallel_vectors():
    a = torch.tensor([1.0, 0.0] + [0.0] * (LATENT_SIZE - 2))
    b = torch.tensor([0.0, 1.0] + [0.0] * (LATENT_SIZE - 2))
    torch.testing.assert_close(latent.slerp(a, b, 5).norm(dim=1), torch.ones(5))  # unit vectors stay unit
    assert latent.lerp(a, b, 5)[2].norm() < 0.8  # the chord dips inside
    for parallel in (2 * a, a, torch.zeros_like(a)):
        torch.testing.assert_close(latent.slerp(a, parallel, 4), latent.lerp(a, parallel, 4))


def test_analogy_of_a_sentence_with_itself_returns_c():
    a, c = random_latents(2)
    result = latent.analogy(a, a, c)
    assert result.shape == (1, LATENT_SIZE)
    assert torch.equal(result[0], c)
    torch.testing.assert_close(latent.analogy(a, c, a), c.unsqueeze(0))  # a : c :: a : c
    assert latent.analogy(random_latents(4), random_latents(4, 1), random_latents(4, 2)).shape == (4, LATENT_SIZE)


@pytest.mark.parametrize("method", ["mean", "probe"])
def test_attribute_vector_at_strength_zero_changes_nothing(method):
    shift = torch.zeros(LATENT_SIZE)
    shift[3] = 4.0
    positive, negative = random_latents(20, 1) + shift, random_latents(20, 2)
    vector = latent.attribute_vector(positive, negative, method=method)
    assert vector.shape == (LATENT_SIZE,)
    latents = random_latents(5, 3)
    assert torch.equal(latent.apply_attribute(latents, vector, 0.0), latents)
    moved = latent.apply_attribute(latents, vector, 1.0)
    assert moved.shape == (5, LATENT_SIZE)
    # Both find the one dimension the groups differ in.
    assert vector.abs().argmax() == 3
    assert 2.5 < vector[3] < 5.5


def test_the_probe_vector_is_scaled_to_the_mean_differences_projection():
    shift = torch.zeros(LATENT_SIZE)
    shift[0] = 3.0
    positive, negative = random_latents(30, 1) + shift, random_latents(30, 2)
    probe = latent.attribute_vector(positive, negative, method="probe")
    mean = latent.attribute_vector(positive, negative, method="mean")
    direction = probe / probe.norm()
    torch.testing.assert_close(probe.norm(), mean @ direction)
    with pytest.raises(ValueError, match="'mean' or 'probe'"):
        latent.attribute_vector(positive, negative, method="median")


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_label_region_samples_around_the_fitted_mean(covariance):
    points = random_latents(50) * 0.5 + 2.0
    region = latent.fit_label_region(points, covariance=covariance)
    torch.testing.assert_close(region.mean, points.mean(dim=0))
    assert region.covariance.shape == ((LATENT_SIZE,) if covariance == "diagonal" else (LATENT_SIZE, LATENT_SIZE))
    draws = region.sample(4000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4000, LATENT_SIZE)
    assert (draws.mean(dim=0) - region.mean).abs().max() < 0.05
    assert torch.equal(draws, region.sample(4000, generator=torch.Generator().manual_seed(0)))  # seeded


def test_a_label_region_of_one_example_is_a_proper_gaussian():
    region = latent.fit_label_region(random_latents(1), covariance="full")
    assert torch.isfinite(region.sample(3)).all()


def test_traverse_changes_only_one_dimension():
    z = random_latents(1)[0]
    values = [-2.0, 0.0, 2.0]
    path = latent.traverse(z, 5, values)
    assert path.shape == (3, LATENT_SIZE)
    assert torch.equal(path[:, 5], torch.tensor(values))
    others = [d for d in range(LATENT_SIZE) if d != 5]
    assert torch.equal(path[:, others], z[others].expand(3, -1))
    with pytest.raises(ValueError, match="out of range"):
        latent.traverse(z, LATENT_SIZE, values)


def test_the_operations_feed_generate(model_and_processor):
    model, processor = model_and_processor
    means = latent.encode_texts(model, processor, tiny.sentences(4))
    vector = latent.attribute_vector(means[:2], means[2:])
    region = latent.fit_label_region(means)
    for latents in (
        latent.slerp(means[0], means[1], 3),
        latent.analogy(means[0], means[1], means[2]),
        latent.apply_attribute(means, vector, 1.5),
        region.sample(2),
        latent.traverse(means[0], 0, [0.0, 1.0]),
    ):
        assert len(latent.decode(model, processor, latents, max_new_tokens=3)) == latents.shape[0]


# ----------------------------------------------------------------------------------------------------------------------
# mine-vae embed
# ----------------------------------------------------------------------------------------------------------------------
def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "sentences.txt"
    path.write_text("\n".join(tiny.sentences(9, seed=4)) + "\n\n", encoding="utf-8")  # a trailing blank line
    return path


def expected(saved: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    model = MineVaeModel.from_pretrained(saved).eval()
    return latent.encode_texts(model, MineVaeProcessor.from_pretrained(saved), texts, batch_size=4, return_logvar=True)


def test_embed_npy_equals_encode_texts(saved, text_file, tmp_path):
    texts = tiny.sentences(9, seed=4)
    mu, logvar = expected(saved, texts)
    output = tmp_path / "means.npy"
    output.write_bytes(b"an older file")  # replaced
    code, out, err = run(["embed", str(saved), str(text_file), "--output", str(output), "--batch_size", "4"])
    assert code == 0, err
    assert "Wrote 9 embeddings" in err and out == ""
    array = np.load(output)
    assert array.shape == (9, LATENT_SIZE) and array.dtype == np.float32
    np.testing.assert_allclose(array, mu.numpy(), atol=1e-6)
    code, _, err = run(
        ["embed", str(saved), str(text_file), "--output", str(output), "--batch_size", "4", "--with_logvar"]
    )
    assert code == 0, err
    means, logvars = np.load(output)
    np.testing.assert_allclose(means, mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(logvars, logvar.numpy(), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["means.npy"]  # no temporary file left beside it


def test_embed_parquet_holds_texts_and_means(saved, text_file, tmp_path):
    import datasets

    texts = tiny.sentences(9, seed=4)
    mu, logvar = expected(saved, texts)
    output = tmp_path / "means.parquet"
    code, _, err = run(
        ["embed", str(saved), str(text_file), "--output", str(output), "--batch_size", "4", "--with_logvar"]
    )
    assert code == 0, err
    table = datasets.Dataset.from_parquet(str(output)).with_format("numpy")
    assert table.column_names == ["text", "mu", "logvar"]
    assert list(table["text"]) == texts
    np.testing.assert_allclose(np.stack(table["mu"]), mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.stack(table["logvar"]), logvar.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "does not exist"),
        ("empty", "holds no sentences"),
        ("extension", "unknown extension"),
        ("folder", "does not exist; create it"),
        ("no_output", "--output"),
        ("batch", "--batch_size must be at least 1"),
        ("model", "no model at"),
    ],
)
def test_embed_errors_are_one_line_with_exit_code_2(saved, text_file, tmp_path, case, fragment):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    argv = {
        "missing": [str(saved), str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npy")],
        "empty": [str(saved), str(empty), "--output", str(tmp_path / "o.npy")],
        "extension": [str(saved), str(text_file), "--output", str(tmp_path / "o.csv")],
        "folder": [str(saved), str(text_file), "--output", str(tmp_path / "no" / "o.npy")],
        "no_output": [str(saved), str(text_file)],
        "batch": [str(saved), str(text_file), "--output", str(tmp_path / "o.npy"), "--batch_size", "0"],
        "model": [str(tmp_path / "no-model"), str(text_file), "--output", str(tmp_path / "o.npy")],
    }[case]
    code, out, err = run(["embed", *argv])
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mine-vae embed: error:"), err
    assert fragment in lines[0]
    assert not (tmp_path / "o.npy").exists()
