from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import tiny
import torch
from huggingface_hub import HfApi
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoProcessor, GPT2Tokenizer, LlamaTokenizer, PreTrainedTokenizerBase
from transformers.trainer_utils import align_special_tokens

from mine_vae import MineVaeDataCollator, MineVaeModel, MineVaeProcessor

if TYPE_CHECKING:
    from hub_server import LocalHub

pytest_plugins = ["hub_server"]  # the `local_hub` fixture


def test_decoder_inputs_and_labels_follow_bos_eos_and_padding():
    processor = tiny.processor()
    batch = processor(["the cat sees the moon", "a dog likes an apple"[:9]])
    words = processor.decoder_tokenizer("the cat sees the moon", add_special_tokens=False)["input_ids"]
    assert batch["decoder_input_ids"][0].tolist() == [2, *words]
    assert batch["labels"][0].tolist() == [*words, 3]
    short = processor.decoder_tokenizer("a dog li", add_special_tokens=False)["input_ids"]
    pad = len(words) - len(short)
    assert batch["labels"][1].tolist() == [*short, 3] + [-100] * pad
    assert batch["decoder_input_ids"][1].tolist() == [2, *short] + [0] * pad
    assert batch["decoder_attention_mask"][1].tolist() == [1] * (len(short) + 1) + [0] * pad
    # The encoder side keeps its own special tokens.
    assert batch["input_ids"][0, 0].item() == processor.encoder_tokenizer.cls_token_id


def test_collator_takes_raw_text_or_pretokenised_features():
    processor = tiny.processor()
    collator = MineVaeDataCollator(processor)
    texts = tiny.sentences(4)
    from_text = collator([{"text": t} for t in texts])
    encoded = processor.encode_texts(texts)
    from_ids = collator([{"input_ids": a, "decoder_token_ids": b} for a, b in zip(*encoded.values())])
    for key in from_text:
        assert torch.equal(from_text[key], from_ids[key])
    with pytest.raises(ValueError, match="'text' field"):
        collator([{"sentence": "x"}])


def test_decoder_tokenizer_without_pad_token_is_refused():
    with pytest.raises(ValueError, match="no pad token.*pad_token = decoder_tokenizer.eos_token"):
        MineVaeProcessor(tiny.encoder_tokenizer(), tiny.decoder_tokenizer(with_pad=False))


@pytest.mark.parametrize("texts", [[], ["the cat", ""], ["   "]])
def test_empty_batch_or_empty_text_is_refused(texts):
    with pytest.raises(ValueError, match="empty"):
        tiny.processor()(texts)
    with pytest.raises(ValueError, match="empty"):
        MineVaeDataCollator(tiny.processor())([{"text": t} for t in texts])


def test_over_long_text_is_truncated_with_a_warning(caplog):
    processor = MineVaeProcessor(
        tiny.encoder_tokenizer(), tiny.decoder_tokenizer(), max_encoder_length=6, max_decoder_length=5
    )
    long_text = "the old man sees the quiet house and the moon"
    with caplog.at_level(logging.WARNING):
        batch = processor([long_text, "the cat"])
    assert "Truncated" in caplog.text and "max_encoder_length" in caplog.text
    assert batch["input_ids"].shape[1] == 6
    assert batch["input_ids"][0, -1].item() == processor.encoder_tokenizer.sep_token_id
    assert batch["decoder_input_ids"].shape[1] == 5 and batch["labels"][0, -1].item() == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        whole = processor.encode_texts([long_text], truncate=False)
    assert "Truncated" not in caplog.text
    assert len(whole["input_ids"][0]) == len(processor.encoder_tokenizer(long_text)["input_ids"]) > 6
    decoder_ids = processor.decoder_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert whole["decoder_token_ids"][0] == decoder_ids


def test_vocabulary_larger_than_the_embedding_is_refused():
    processor = tiny.processor()
    model = tiny.model()  # 40-row embeddings; the tiny tokenizers have 38 and 37 tokens
    processor.check_model(model)
    processor.decoder_tokenizer.add_tokens([f"extra{i}" for i in range(5)])
    fix = r"`model\.resize_token_embeddings\(len\(tokenizer\)\)`"  # the VAE's: it resizes z's vocabulary bias too
    with pytest.raises(ValueError, match=r"decoder tokenizer has 42 tokens.*40 rows.*" + fix):
        processor.check_model(model)


def test_mismatched_start_token_is_refused():
    model = tiny.model()
    model.config.decoder_start_token_id = 3
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        tiny.processor().check_model(model)


def test_lengths_beyond_the_model_positions_are_refused():
    processor = MineVaeProcessor(tiny.encoder_tokenizer(), tiny.decoder_tokenizer(), max_decoder_length=64)
    with pytest.raises(ValueError, match="max_decoder_length=63"):
        processor.check_model(tiny.model(latent_injection="memory"))


def test_save_and_load_both_tokenizers_in_one_call(tmp_path):
    processor = MineVaeProcessor(tiny.encoder_tokenizer(), tiny.decoder_tokenizer(), max_decoder_length=20)
    processor.save_pretrained(tmp_path)
    loaded = MineVaeProcessor.from_pretrained(tmp_path)
    texts = tiny.sentences(5)
    for key, value in processor(texts).items():
        assert torch.equal(value, loaded(texts)[key])
    assert loaded.max_decoder_length == 20
    assert loaded.encoder_tokenizer.get_vocab() == processor.encoder_tokenizer.get_vocab()
    assert loaded.decoder_tokenizer.get_vocab() == processor.decoder_tokenizer.get_vocab()


def test_batch_decode_drops_special_tokens():
    processor = tiny.processor()
    ids = processor(["the cat sees the moon"])["decoder_input_ids"]
    assert processor.batch_decode(ids) == ["the cat sees the moon"]


def test_mismatched_end_token_is_refused():
    model = tiny.model()
    model.config.eos_token_id = 4
    with pytest.raises(ValueError, match="eos_token_id=4.*would not stop"):
        tiny.processor().check_model(model)


# ----------------------------------------------------------------------------------------------------------------
# A transformers processor: AutoProcessor, and folders written before processor_config.json
# ----------------------------------------------------------------------------------------------------------------
def _bpe(
    pre_tokenizer: pre_tokenizers.PreTokenizer, special_tokens: list[str], alphabet: list[str], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary and merges trained on the tiny sentences (a second, no download)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(tiny.sentences(200), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def gpt2_style_decoder_tokenizer() -> GPT2Tokenizer:
    """Byte-level BPE with <|endoftext|> as both BOS and EOS, as GPT-2; pad is a token of its own (docs/custom.md)."""
    vocab, merges = _bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        ["<|endoftext|>", "<|pad|>"],
        pre_tokenizers.ByteLevel.alphabet(),
        vocab_size=300,
    )
    return GPT2Tokenizer(vocab=vocab, merges=merges, pad_token="<|pad|>")


def llama_style_decoder_tokenizer() -> LlamaTokenizer:
    """Metaspace ("▁") BPE with <unk>, <s>, </s>, as Llama; pad is <unk>, as Llama fine-tunes often set it."""
    vocab, merges = _bpe(pre_tokenizers.Metaspace(), ["<unk>", "<s>", "</s>"], [], vocab_size=80)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges)
    tokenizer.pad_token = "<unk>"
    return tokenizer


DECODER_TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {
    "word-level": tiny.decoder_tokenizer,
    "gpt2-bpe": gpt2_style_decoder_tokenizer,
    "llama-bpe": llama_style_decoder_tokenizer,
}


def write_layout_before_processor_config(processor: MineVaeProcessor, folder: Path) -> None:
    """What `MineVaeProcessor.save_pretrained` wrote before it was a `ProcessorMixin` (names hard-coded on purpose:
    these folders exist and must keep loading whatever the constants become)."""
    processor.encoder_tokenizer.save_pretrained(folder / "encoder_tokenizer")
    processor.decoder_tokenizer.save_pretrained(folder / "decoder_tokenizer")
    settings = {
        "processor_class": "MineVaeProcessor",
        "max_encoder_length": processor.max_encoder_length,
        "max_decoder_length": processor.max_decoder_length,
    }
    (folder / "mine_vae_processor.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


def assert_same_processor(loaded: object, original: MineVaeProcessor) -> None:
    assert type(loaded) is MineVaeProcessor
    # Unknown words and repeated spaces too, where tokenizers that lost their normaliser or pre-tokeniser differ.
    texts = [*tiny.sentences(6, seed=3), "the cat  sees a zebra", "an apple"]
    assert loaded.encode_texts(texts) == original.encode_texts(texts)
    batch, expected = loaded(texts), original(texts)
    assert batch.keys() == expected.keys()
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    assert (loaded.max_encoder_length, loaded.max_decoder_length) == (
        original.max_encoder_length,
        original.max_decoder_length,
    )
    for side in ("encoder_tokenizer", "decoder_tokenizer"):
        mine, theirs = getattr(loaded, side), getattr(original, side)
        assert type(mine) is type(theirs), side
        assert mine.get_vocab() == theirs.get_vocab(), side
        assert mine.special_tokens_map == theirs.special_tokens_map, side
    assert loaded.decoder_start_token_id == original.decoder_start_token_id
    assert loaded.batch_decode(expected["decoder_input_ids"]) == original.batch_decode(expected["decoder_input_ids"])


@pytest.mark.parametrize("decoder", sorted(DECODER_TOKENIZERS))
def test_auto_processor_round_trip_gives_identical_encodings(tmp_path: Path, decoder: str) -> None:
    # Lengths other than the tokenizers' defaults (64 / 63, or 512 without a limit), so a lost setting shows.
    processor = MineVaeProcessor(
        tiny.encoder_tokenizer(), DECODER_TOKENIZERS[decoder](), max_encoder_length=40, max_decoder_length=20
    )
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text(encoding="utf-8"))
    assert config == {"processor_class": "MineVaeProcessor", "max_encoder_length": 40, "max_decoder_length": 20}
    # Settings and tokenizers only, all JSON: nothing pickled, no code copied.
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} == {".json"}

    assert_same_processor(AutoProcessor.from_pretrained(tmp_path), processor)
    assert_same_processor(MineVaeProcessor.from_pretrained(tmp_path), processor)


def test_auto_processor_loads_the_processor_from_a_model_folder(tmp_path: Path) -> None:
    # `mine-vae train` and `Trainer.save_model` write the model and the processor into one folder.
    processor = MineVaeProcessor(tiny.encoder_tokenizer(), tiny.decoder_tokenizer(), max_decoder_length=30)
    tiny.model().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert_same_processor(loaded, processor)
    loaded.check_model(MineVaeModel.from_pretrained(tmp_path))


def test_a_folder_from_before_processor_config_still_loads(tmp_path: Path) -> None:
    processor = MineVaeProcessor(
        tiny.encoder_tokenizer(), gpt2_style_decoder_tokenizer(), max_encoder_length=40, max_decoder_length=20
    )
    write_layout_before_processor_config(processor, tmp_path / "processor")
    assert not (tmp_path / "processor" / "processor_config.json").exists()
    assert_same_processor(MineVaeProcessor.from_pretrained(tmp_path / "processor"), processor)

    # In a model folder AutoProcessor finds it too, through the processor registered for config.json's model type.
    tiny.model().save_pretrained(tmp_path / "model")
    write_layout_before_processor_config(processor, tmp_path / "model")
    assert_same_processor(AutoProcessor.from_pretrained(tmp_path / "model"), processor)


def test_save_pretrained_pushes_and_both_layouts_load_from_the_hub(local_hub: LocalHub, tmp_path: Path) -> None:
    processor = MineVaeProcessor(
        tiny.encoder_tokenizer(), llama_style_decoder_tokenizer(), max_encoder_length=40, max_decoder_length=20
    )
    processor.save_pretrained(tmp_path / "new", push_to_hub=True, repo_id="user/new-layout")
    files = set(HfApi().list_repo_files("user/new-layout"))
    assert {"processor_config.json", "mine_vae_processor.json", "decoder_tokenizer/tokenizer.json"} <= files
    assert_same_processor(AutoProcessor.from_pretrained("user/new-layout"), processor)

    write_layout_before_processor_config(processor, tmp_path / "old")
    HfApi().create_repo("user/old-layout")
    HfApi().upload_folder(repo_id="user/old-layout", folder_path=tmp_path / "old")
    assert_same_processor(MineVaeProcessor.from_pretrained("user/old-layout"), processor)
    assert local_hub.unknown_requests == []


def test_saved_lengths_are_written_for_older_versions_too_and_can_be_overridden(tmp_path: Path) -> None:
    processor = MineVaeProcessor(tiny.encoder_tokenizer(), tiny.decoder_tokenizer(), max_encoder_length=40)
    files = processor.save_pretrained(tmp_path)
    assert sorted(Path(f).name for f in files) == ["mine_vae_processor.json", "processor_config.json"]
    # Older mine_vae versions, and the CLI's and mine_vae.hub's check for a processor, read this file.
    older = json.loads((tmp_path / "mine_vae_processor.json").read_text(encoding="utf-8"))
    assert older == {"processor_class": "MineVaeProcessor", "max_encoder_length": 40, "max_decoder_length": 63}
    loaded = MineVaeProcessor.from_pretrained(tmp_path, max_decoder_length=12)
    assert (loaded.max_encoder_length, loaded.max_decoder_length) == (40, 12)
    # processor_config.json is the one read when both are there.
    (tmp_path / "mine_vae_processor.json").write_text(json.dumps({**older, "max_encoder_length": 7}), encoding="utf-8")
    assert MineVaeProcessor.from_pretrained(tmp_path).max_encoder_length == 40


def test_a_folder_without_a_processor_is_refused(tmp_path: Path) -> None:
    tiny.model().save_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"no processor_config\.json.*processor\.save_pretrained"):
        AutoProcessor.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="not a MineVaeProcessor folder"):
        MineVaeProcessor.from_pretrained(tmp_path)


def test_transformers_sees_the_decoder_tokenizer_as_the_processor_tokenizer() -> None:
    processor, model = tiny.processor(), tiny.model()
    assert processor.tokenizer is processor.decoder_tokenizer
    ids = processor(["the cat sees the moon"])["decoder_input_ids"][0]
    assert processor.decode(ids) == "the cat sees the moon"
    # Trainer.__init__ calls this with any ProcessorMixin; the tiny tokenizers already match the decoder's config.
    config, generation = model.config.to_dict(), model.generation_config.to_dict()
    align_special_tokens(model, processor)
    assert model.config.to_dict() == config and model.generation_config.to_dict() == generation


def test_the_length_rule_fits_a_sentence_of_max_length_tokens_exactly() -> None:
    from mine_vae.presets import build_from_scratch, get_preset

    texts = ["a b c d e", "a b c d e f"]  # word-level tokenizers: one token a word
    _, processor = build_from_scratch(get_preset("tiny"), texts, max_length=5)
    assert processor.max_sentence_length == 5
    encoder_limit, decoder_limit = processor.token_limits(5)
    encoded = processor.encode_texts(texts, truncate=False)
    fits = [len(e) <= encoder_limit and len(d) <= decoder_limit for e, d in zip(*encoded.values())]
    assert fits == [True, False]
    # The sentence that fits fills the processor's limits exactly: special tokens, BOS and EOS included.
    batch = processor(texts[:1])
    assert batch["input_ids"].shape[1] == processor.max_encoder_length
    assert batch["labels"].shape[1] == batch["decoder_input_ids"].shape[1] == processor.max_decoder_length


def test_auto_tokenizer_on_a_model_folder_loads_the_decoder_tokenizer(tmp_path: Path) -> None:
    """The tokenizer transformers looks for at the top of a folder is the one whose ids the model generates."""
    from transformers import AutoTokenizer

    tiny.saved_model(tmp_path)
    processor = MineVaeProcessor.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.get_vocab() == processor.decoder_tokenizer.get_vocab()
    assert tokenizer.get_vocab() != processor.encoder_tokenizer.get_vocab()
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    texts = tiny.sentences(3)
    expected = processor.decoder_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert tokenizer(texts, add_special_tokens=False)["input_ids"] == expected
