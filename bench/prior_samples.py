"""Prior samples of one trained model at several prior scales, for reading side by side.

For each scale s, the same seeds' draws z ~ N(0, I), scaled to N(0, s² I) (`prior_latents(..., prior_scale=s)`),
are decoded as `mine-vae train`'s report decodes them (`REPORT_SAMPLING`: nucleus sampling, no repeated 4-gram).
Seed 0's five are the ones the main job prints. Whether a sample reads as a sentence is left to the reader: the
counts in docs/benchmarks.md ("Decoding the reconstructions") were read from this script's output.

Usage:
    python bench/prior_samples.py mine-vae-minilm-smollm2                    # scales 1.0 and 0.8, seeds 0-7, 5 each
    python bench/prior_samples.py MODEL_DIR --scales 1.0 0.8 0.6 --seeds 4
"""

from __future__ import annotations

import argparse

import torch

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.cli.train_report import REPORT_SAMPLING
from mine_vae.text_latent import prior_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a folder `mine-vae train` wrote")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.8])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1")
    parser.add_argument("--per_seed", type=int, default=5, help="samples per seed (the report prints 5 of seed 0)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="as the presets train")
    args = parser.parse_args()
    torch.set_num_threads(2)

    model = MineVaeModel.from_pretrained(args.model).eval()
    processor = MineVaeProcessor.from_pretrained(args.model)
    sampling = {"max_new_tokens": processor.max_decoder_length, **REPORT_SAMPLING}
    for scale in args.scales:
        print(f"== z ~ N(0, {scale}² I)", flush=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            for seed in range(args.seeds):
                for text in prior_samples(model, processor, args.per_seed, seed, scale, **sampling):
                    print(f"  seed {seed}: {text}", flush=True)


if __name__ == "__main__":
    main()
