"""Pilots for a z the decoder reads: short `mine-vae train` runs of the default pair side by side, one table.

Each pilot is `mine-vae train` with the default preset and a few flags changed; its JSON report and the figures of
`bench/latent_use.py` (what a sentence's own z buys) are written under OUTPUT_DIR/<pilot>/ as each run ends, so an
interrupted sweep resumes with the next unfinished pilot. The table prints, per pilot: steps, wall-clock seconds of the
training command, reconstruction BLEU, the IW-NLL next to the decoder alone on the same sentences, KL, and the nats of
the teacher-forced NLL that depend on the sentence's own z.

Usage:
    python bench/latent_pilots.py OUTPUT_DIR --round autoencoder      # beta = 0, no MI term
    python bench/latent_pilots.py OUTPUT_DIR --round objective        # the full objective
    python bench/latent_pilots.py OUTPUT_DIR --round autoencoder --only residual12x10   # one pilot
    python bench/latent_pilots.py OUTPUT_DIR --table                  # the table of what has finished
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every pilot: evaluated on the first 100 validation sentences that fit, 2 importance samples (the table compares
# pilots with one another; the main job's figures use the preset's 200 sentences and 5 samples).
COMMON = ["--max_eval_examples", "100", "--eval_importance_samples", "2", "--num_samples", "2"]
# Flags over the default pair's recipe before the rate cut, which every pilot here started from.
BASE = ["--preset", "minilm-smollm2-v1"]
AUTOENCODER = ["--kl_weight", "0", "--mi_weight", "0", "--max_steps", "400"]
RESIDUAL = ["--latent_residual_layers", "12", "--latent_residual_scale", "10"]

ROUNDS: dict[str, dict[str, list[str]]] = {
    "autoencoder": {
        "preset": AUTOENCODER,
        "residual12x10": AUTOENCODER + RESIDUAL,
        "residual8-16x10": AUTOENCODER + ["--latent_residual_layers", "8", "16", "--latent_residual_scale", "10"],
        "encoder-finetuned-1e-4": AUTOENCODER + ["--freeze_encoder", "false", "--pretrained_learning_rate", "1e-4"],
        # The decoder learns to read z's key/value positions: its 30 layers at 1e-4, embeddings and LM head frozen.
        "decoder-learns-1e-4": AUTOENCODER + ["--decoder_trainable_layers", "30", "--pretrained_learning_rate", "1e-4"],
        # An encoder that keeps the wording: SmolLM2's own first 15 layers (frozen), mean-pooled, instead of MiniLM.
        "encoder-smollm2-15": AUTOENCODER + ["--encoder", "{smollm2_layers_15}"],
        # A wider z: per sentence, a random 64-dimensional subspace of layer 12's residual stream takes SmolLM2's NLL
        # from 147 to 92 nats, a 256-dimensional one to 27 (all 576 dimensions: 14).
        "latent256": AUTOENCODER + ["--latent_size", "256"],
        "latent256-residual12x10": AUTOENCODER + ["--latent_size", "256"] + RESIDUAL,
    },
    "objective": {
        # MiniLM learns to keep the wording (its own rate, 1e-4) under the preset's objective.
        "encoder-finetuned-1e-4": ["--freeze_encoder", "false", "--pretrained_learning_rate", "1e-4"],
        "residual12x10-fb0.5": RESIDUAL + ["--free_bits", "0.5"],
        "residual6layersx10-fb1": [
            *("--latent_residual_layers", "4", "8", "12", "16", "20", "24"),
            *("--latent_residual_scale", "10", "--free_bits", "1"),
        ],
    },
}


def smollm2_layers(output: Path, layers: int) -> str:
    """A folder holding SmolLM2's first `layers` transformer layers as a base model (an encoder), built once."""
    folder = output / "encoders" / f"smollm2-layers-{layers}"
    if not (folder / "config.json").exists():
        from transformers import AutoModel, AutoTokenizer

        from mine_vae.assets import smollm2_path

        AutoModel.from_pretrained(smollm2_path(), num_hidden_layers=layers).save_pretrained(folder)
        AutoTokenizer.from_pretrained(smollm2_path()).save_pretrained(folder)
    return str(folder)


def run_pilot(folder: Path, flags: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.json"
    if not report.exists():
        # The report keeps the placeholder; the command gets the folder it stands for.
        argv = [smollm2_layers(folder.parents[1], 15) if flag == "{smollm2_layers_15}" else flag for flag in flags]
        command = ["mine-vae", "train", *BASE, *argv, *COMMON, "--output_dir", str(folder / "model"), "--json"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        (folder / "train.log").write_text(result.stderr)
        if result.returncode != 0:
            sys.exit(f"{folder.name}: mine-vae train failed (exit {result.returncode}); see {folder / 'train.log'}")
        document = json.loads(result.stdout)
        document["pilot"] = {"flags": flags, "wall_s": wall}
        partial = report.with_suffix(".json.partial")
        partial.write_text(json.dumps(document, indent=2))
        partial.replace(report)
    use = folder / "latent_use.json"
    if not use.exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "latent_use.py"),
                str(folder / "model"),
                "--sentences",
                "100",
                "--json",
                str(use),
            ],
            check=True,
            capture_output=True,
        )


def table(output: Path) -> str:
    rows = [
        "| pilot | flags | steps | wall (s) | BLEU | IW-NLL | decoder alone | gain | KL | own z buys |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for report in sorted(output.glob("*/report.json")):
        document = json.loads(report.read_text())
        metrics = document["metrics"]
        use_file = report.parent / "latent_use.json"
        own = "—"
        if use_file.exists():
            use = json.loads(use_file.read_text())
            own = f"{use['its own z buys']:.1f}"
        flags = " ".join(document["pilot"]["flags"])
        steps = document.get("data", {}).get("steps") or _steps(document["pilot"]["flags"])
        rows.append(
            f"| {report.parent.name} | `{flags}` | {steps} | {document['pilot']['wall_s']:.0f} | "
            f"{nan(metrics, 'bleu')} | {metrics['nll']:.1f} | {nan(metrics, 'decoder_nll')} | "
            f"{nan(metrics, 'latent_gain')} | {metrics['kl']:.1f} | {own} |"
        )
    return "\n".join(rows)


def nan(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.1f}" if key in metrics else "—"


def _steps(flags: list[str]) -> str:
    return flags[flags.index("--max_steps") + 1] if "--max_steps" in flags else "preset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--round", choices=sorted(ROUNDS))
    parser.add_argument("--only", nargs="*", help="run only these pilots of the round")
    parser.add_argument("--table", action="store_true", help="print the table of finished pilots and stop")
    args = parser.parse_args()
    if not args.table:
        if args.round is None:
            parser.error("give --round (or --table)")
        for name, flags in ROUNDS[args.round].items():
            if args.only and name not in args.only:
                continue
            run_pilot(args.output / args.round / name, flags)
            print(f"finished {args.round}/{name}", flush=True)
    for round_dir in sorted(p for p in args.output.iterdir() if p.is_dir()):
        print(f"\n{round_dir.name}\n{table(round_dir)}")


if __name__ == "__main__":
    main()
