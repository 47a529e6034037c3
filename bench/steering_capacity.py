"""How many dimensions a vector needs for the frozen SmolLM2 to reproduce a sentence from it, measured per sentence.

For each of a few PTB validation sentences, a vector v = A c is added to the output of one decoder layer at every
position (a steering vector), and c is optimised alone (Adam, the decoder frozen) to minimise the sentence's
teacher-forced NLL. A is a random d-dimensional orthonormal-column basis of the 576-dimensional residual stream (the
identity for d = 576). Printed per d, side by side in one run: SmolLM2 alone, the NLL after optimisation, the first
token's share (a residual shift cannot move the start position: its state is the attention sink), and |v|.

A linear head from a d-dimensional z can reach at most such a subspace, and an encoder has to hit c without the
sentence-specific optimisation, so the figures bound from below what a z of that size leaves unexplained.

Usage:
    python bench/steering_capacity.py                            # d = 16, 64, 128, 256, 576 at layer 12
    python bench/steering_capacity.py --dims 64 256 --layer 8 --steps 100
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mine_vae.assets import smollm2_path
from mine_vae.data import load_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 128, 256, 576])
    parser.add_argument("--layer", type=int, default=12, help="decoder layer (0-based) whose output is shifted")
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max_tokens", type=int, default=40, help="only sentences of at most this many tokens")
    args = parser.parse_args()
    torch.manual_seed(0)

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = [t for t in load_corpus()["validation"]["text"] if len(tokenizer(t)["input_ids"]) <= args.max_tokens]
    texts = texts[: args.sentences]
    tokenizer.pad_token = tokenizer.eos_token
    # The end-of-text token starts every sentence, as the VAE's decoder inputs start with a start token.
    batch = tokenizer([tokenizer.eos_token + " " + text for text in texts], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)

    shift: dict[str, torch.Tensor] = {}

    def add_shift(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + shift["v"][:, None, :].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    model.model.layers[args.layer].register_forward_hook(add_shift)
    width = model.config.hidden_size

    def token_nll(v: torch.Tensor) -> torch.Tensor:
        shift["v"] = v
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return -picked * (labels != -100)

    with torch.no_grad():
        alone = token_nll(torch.zeros(len(texts), width)).sum(dim=1).mean().item()
    print(f"SmolLM2, {len(texts)} PTB validation sentences, shift at layer {args.layer}, {args.steps} Adam steps each")
    print(f"{'d':>5} {'alone':>8} {'optimised':>10} {'first token':>12} {'|v|':>6}")
    for dims in args.dims:
        basis = torch.eye(width) if dims >= width else torch.nn.functional.normalize(torch.randn(width, dims), dim=0)
        coefficients = torch.zeros(len(texts), basis.shape[1], requires_grad=True)
        # A smaller basis takes larger coefficients for the same |v|: the rate scales with it.
        optimizer = torch.optim.Adam([coefficients], lr=0.1 * (width / basis.shape[1]) ** 0.5)
        for _ in range(args.steps):
            nll = token_nll(coefficients @ basis.T)
            optimizer.zero_grad()
            nll.sum(dim=1).mean().backward()
            optimizer.step()
        with torch.no_grad():
            vector = coefficients @ basis.T
            nll = token_nll(vector)
        print(
            f"{dims:>5} {alone:>8.1f} {nll.sum(dim=1).mean().item():>10.1f} {nll[:, 0].mean().item():>12.1f} "
            f"{vector.norm(dim=1).mean().item():>6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
