"""Tiny tokenizers and models built in the tests: no download, seconds to build and run."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, TrainerCallback

from mine_vae import MineVaeConfig, MineVaeModel, MineVaeProcessor

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a bird", "the child", "our neighbour"]
VERBS = ["sees", "likes", "finds", "paints", "follows", "hears", "helps", "calls"]
OBJECTS = ["the river", "a red ball", "the quiet house", "an apple", "the green hill", "a small boat", "the moon"]


# The code a saved model carries for `trust_remote_code` (the modelling files and those they import).
SHIPPED_CODE = frozenset(
    {
        "modeling_mine_vae.py",
        "configuration_mine_vae.py",
        "critic.py",
        "latent_path.py",
        "generation_mine_vae.py",
        "pretrained_mine_vae.py",
        "pipeline_mine_vae.py",
        "sentence_mine_vae.py",
    }
)


def sentences(count: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(count)]


def _vocabulary() -> list[str]:
    words = sorted({w for phrase in SUBJECTS + VERBS + OBJECTS for w in phrase.split()})
    return words


def encoder_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer: [CLS] words [SEP]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + _vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def decoder_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """A word-level decoder tokenizer with <s>, </s> and (optionally) <pad>."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + _vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=64, **kwargs
    )


def processor() -> MineVaeProcessor:
    return MineVaeProcessor(encoder_tokenizer(), decoder_tokenizer())


def encoder_config(vocab_size: int = 40, hidden: int = 32) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )


def decoder_config(kind: str = "gpt2", vocab_size: int = 40, hidden: int = 32):
    special = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=2, n_head=2, n_positions=64, **special)
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            **special,
        )
    raise ValueError(kind)


def model(kind: str = "gpt2", seed: int = 0, **config_kwargs) -> MineVaeModel:
    import torch

    torch.manual_seed(seed)
    config_kwargs.setdefault("latent_size", 8)
    config_kwargs.setdefault("critic_hidden_size", 16)
    config = MineVaeConfig(encoder=encoder_config(), decoder=decoder_config(kind), **config_kwargs)
    return MineVaeModel(config)


def training_args(output_dir, **overrides):
    """`MineVaeTrainingArguments` for a few seconds of CPU training of a tiny model: 6 steps of 8 sentences, no saves,
    no reporting; `overrides` change any of them."""
    from mine_vae import MineVaeTrainingArguments

    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=3e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        critic_warmup_steps=1,
        eval_importance_samples=2,
    )
    return MineVaeTrainingArguments(**{**defaults, **overrides})


class StopAt(TrainerCallback):
    """Stops training after `step` (after that step's checkpoint is saved), as an interruption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def cli_data_flags(corpus: dict) -> list[str]:
    """`mine-vae` flags naming the training and validation files of the `corpus` fixture (tests/conftest.py)."""
    return ["--train_file", str(corpus["train"]), "--validation_file", str(corpus["validation"])]


def saved_model(folder, kind: str = "gpt2", seed: int = 0):
    """An untrained tiny model and its processor saved in `folder` (what `mine-vae` commands load), in seconds;
    returns `folder`."""
    model(kind, seed).save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder
