import logging

import pytest
import tiny
import torch

from mine_vae import MineVaeDataCollator, MineVaeProcessor


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
    with pytest.raises(ValueError, match=r"decoder tokenizer has 42 tokens.*40 rows.*resize_token_embeddings"):
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
