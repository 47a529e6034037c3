"""Sample, reconstruct, paraphrase and interpolate with a trained MINE-VAE, from Python.

    mine-vae train                                            # writes ./mine-vae-small
    python examples/generate_and_interpolate.py --model mine-vae-small
    python examples/generate_and_interpolate.py --smoke       # seconds: an untrained tiny model

Every decoding below is plain `transformers` generation (`model.generate` with any of its options, which
`mine_vae.text_latent.decode_latents` passes on); the latent z is what changes: a draw from the prior, a posterior
mean (reconstruction), posterior samples (paraphrases), or points on the arc between two posterior means
(interpolation).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.text_latent import decode_latents, encode_texts, interpolate, prior_latents, texts_from_ids

SENTENCES = [
    "the company said it expects a loss in the fourth quarter",
    "stocks fell sharply in heavy trading",
    "he was named chairman of the board",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mine-vae-small", help="folder written by `mine-vae train`")
    parser.add_argument("--num_samples", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="interpolation points, endpoints included")
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="build and save an untrained tiny model first")
    return parser.parse_args(argv)


def save_untrained_tiny_model(folder: str) -> str:
    from mine_vae.presets import build_from_scratch, get_preset

    model, processor = build_from_scratch(get_preset("tiny"), SENTENCES, max_length=20)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@torch.no_grad()
def demo(model: MineVaeModel, processor: MineVaeProcessor, args: argparse.Namespace) -> dict[str, list[str]]:
    torch.manual_seed(args.seed)  # token sampling below
    length = {"max_new_tokens": args.max_new_tokens}
    results: dict[str, list[str]] = {}

    # 1. From the prior: each z ~ N(0, I) is a sentence; greedy decoding shows what z alone decides.
    z = prior_latents(model.config.latent_size, args.num_samples, seed=args.seed)
    results["prior, greedy"] = decode_latents(model, processor, z, **length)
    results["prior, nucleus sampling"] = decode_latents(
        model, processor, z, do_sample=True, top_p=0.9, temperature=0.8, **length
    )

    # 2. Reconstruction: encode, decode from the posterior mean.
    means = encode_texts(model, processor, SENTENCES)
    results["reconstructions"] = decode_latents(model, processor, means, **length)

    # 3. Paraphrases: several posterior samples around one sentence (plain `model.encode` and `model.generate`).
    one = processor(SENTENCES[:1]).to(model.device)
    posterior = model.encode(one["input_ids"], one["attention_mask"])
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    around = posterior.sample(num_samples=args.num_samples, generator=generator).squeeze(1)
    results["posterior samples of sentence 1"] = texts_from_ids(processor, model.generate(latent=around, **length))

    # 4. Interpolation between the posterior means of two sentences, on the arc (method="lerp": the straight line).
    path = interpolate(means[0], means[1], args.steps, method="slerp")
    results["interpolation 1 -> 2"] = decode_latents(model, processor, path, num_beams=3, **length)
    return results


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        location = save_untrained_tiny_model(scratch) if args.smoke else args.model
        model = MineVaeModel.from_pretrained(location).eval()
        processor = MineVaeProcessor.from_pretrained(location)
        if torch.cuda.is_available():
            model.cuda()
        results = demo(model, processor, args)
    for title, texts in results.items():
        print(f"\n{title}:")
        for text in texts:
            print(f"  {text}")
    return results


if __name__ == "__main__":
    main()
