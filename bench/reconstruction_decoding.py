"""Reconstruction BLEU of one trained model under several decodings, side by side in one run, with their seconds.

The sentences are the main job's: the first N PTB validation sentences within the model's length limit. Each is
encoded, decoded from its posterior mean under every decoding, and scored with the package's `reconstruction_bleu`
metric. Printed per decoding: BLEU, the outputs' mean length in words, the seconds taken and one example. The table
in docs/benchmarks.md ("Decoding the reconstructions") comes from this script.

Usage:
    python bench/reconstruction_decoding.py mine-vae-minilm-smollm2
    python bench/reconstruction_decoding.py MODEL_DIR --decodings greedy norep4 beam4-norep4 --sentences 200
"""

from __future__ import annotations

import argparse
import time

import torch
from common import main_job_sentences

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.evaluation import GREEDY_DECODING, RECONSTRUCTION_DECODING
from mine_vae.metrics import load_metric

DECODINGS = {
    "greedy": dict(GREEDY_DECODING),
    "norep3": {"do_sample": False, "no_repeat_ngram_size": 3},
    "norep4": {"do_sample": False, "no_repeat_ngram_size": 4},
    "norep5": {"do_sample": False, "no_repeat_ngram_size": 5},
    "beam4": {"do_sample": False, "num_beams": 4},
    "beam2-norep4": {"do_sample": False, "num_beams": 2, "no_repeat_ngram_size": 4},
    "beam4-norep4": dict(RECONSTRUCTION_DECODING),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a folder `mine-vae train` wrote")
    parser.add_argument("--decodings", nargs="+", choices=sorted(DECODINGS), default=list(DECODINGS))
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="as the presets train")
    args = parser.parse_args()
    torch.set_num_threads(2)

    model = MineVaeModel.from_pretrained(args.model).eval()
    processor = MineVaeProcessor.from_pretrained(args.model)
    texts = list(main_job_sentences(processor, args.sentences)["text"])
    metric = load_metric("reconstruction_bleu")
    print(f"{args.model}: {len(texts)} validation sentences, posterior mean, bf16 {args.bf16}")
    print(f"{'decoding':<14} {'BLEU':>6} {'words':>6} {'seconds':>8}  example (sentence 2)")
    for name in args.decodings:
        start, outputs = time.perf_counter(), []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            for first in range(0, len(texts), args.batch_size):
                batch = processor(texts[first : first + args.batch_size])
                generated = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=args.max_new_tokens,
                    **DECODINGS[name],
                )
                outputs += [text.strip() for text in processor.batch_decode(generated)]
        seconds = time.perf_counter() - start
        bleu = metric.compute(predictions=outputs, references=texts)["score"]
        words = sum(len(o.split()) for o in outputs) / len(outputs)
        print(f"{name:<14} {bleu:>6.2f} {words:>6.1f} {seconds:>8.0f}  {outputs[1][:90]}", flush=True)


if __name__ == "__main__":
    main()
