"""How much of a trained model's reconstruction depends on the sentence's own z, measured side by side in one run.

For the first N validation sentences of the embedded Penn Treebank that fit (as `mine-vae train` keeps them), prints the
decoder's negative log-likelihood (nats per sentence, teacher-forced) three ways:

1. the decoder alone, without z (what the pretrained decoder knows before training);
2. conditioned on another sentence's posterior mean (each batch's means rolled by one): what z teaches the decoder
   about every sentence (the corpus' register, its `<unk>` and `N` tokens);
3. conditioned on the sentence's own posterior mean (what reconstruction from z gets).

(1) − (2) is what any z buys; (2) − (3) is what the sentence's own z buys, the part that can make a reconstruction
carry its input. Active units and MI under the aggregate posterior do not separate the two.

Usage:
    python bench/latent_use.py OUTPUT_DIR                # a folder `mine-vae train` wrote
    python bench/latent_use.py OUTPUT_DIR --sentences 500 --json latent-use.json
"""

from __future__ import annotations

import argparse
import json

import torch
from common import main_job_sentences

from mine_vae import MineVaeModel, MineVaeProcessor


def sentence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(labels) summed over each row's label tokens: shape `(batch_size,)`."""
    keep = labels != -100
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a folder with a saved MINE-VAE and its processor")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="CPU bf16 autocast")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    model = MineVaeModel.from_pretrained(args.model).eval()
    processor = MineVaeProcessor.from_pretrained(args.model)
    rows = main_job_sentences(processor, args.sentences)
    features = [{"input_ids": row["input_ids"], "decoder_token_ids": row["decoder_token_ids"]} for row in rows]

    totals = {"decoder alone": 0.0, "another sentence's z": 0.0, "its own z": 0.0}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for start in range(0, len(features), args.batch_size):
            batch = processor.pad(features[start : start + args.batch_size])
            mu = model.encode(batch["input_ids"], batch["attention_mask"]).mu
            ids, mask, labels = batch["decoder_input_ids"], batch["decoder_attention_mask"], batch["labels"]
            conditioned = {"decoder_input_ids": ids, "decoder_attention_mask": mask}
            totals["decoder alone"] -= model.decoder_log_likelihood(ids, labels, mask).sum().item()
            other = model(latent=mu.roll(1, dims=0), **conditioned).logits
            totals["another sentence's z"] += sentence_nll(other, labels).sum().item()
            own = model(latent=mu, **conditioned).logits
            totals["its own z"] += sentence_nll(own, labels).sum().item()
    figures = {name: total / len(features) for name, total in totals.items()}
    figures["any z buys"] = figures["decoder alone"] - figures["another sentence's z"]
    figures["its own z buys"] = figures["another sentence's z"] - figures["its own z"]
    print(f"{args.model}: {len(features)} validation sentences, nats per sentence (teacher-forced)")
    for name, value in figures.items():
        print(f"  {name:<22} {value:8.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "sentences": len(features), **figures}, handle, indent=2)


if __name__ == "__main__":
    main()
