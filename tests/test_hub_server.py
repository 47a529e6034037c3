"""The local Hub must be good enough for the real client: push, pull, pinned revisions, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song"]
INPUT_IDS = [[2, 5, 7, 9, 3, 4, 1]]
pytest_plugins = ["hub_server"]  # provides the ``local_hub`` fixture

if TYPE_CHECKING:
    from hub_server import LocalHub


def tiny_model(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return BertModel(config).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def hidden(model: BertModel) -> list:
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).last_hidden_state.tolist()


LOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    out = model(torch.tensor(json.loads(sys.argv[2]))).last_hidden_state.tolist()
print(json.dumps({"hidden": out, "ids": tok(sys.argv[3])["input_ids"]}))
"""


def test_push_then_load_in_fresh_process(local_hub: LocalHub, tmp_path: Path) -> None:
    model, tok = tiny_model(), tiny_tokenizer()
    model.push_to_hub("user/tiny")
    tok.push_to_hub("user/tiny")

    env = {**os.environ, **local_hub.env, "HF_HOME": str(tmp_path / "fresh_home")}
    args = [sys.executable, "-c", LOAD_SCRIPT, "user/tiny", json.dumps(INPUT_IDS), SENTENCES[0]]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(result["hidden"]), torch.tensor(hidden(model)), atol=1e-6)
    assert result["ids"] == tok(SENTENCES[0])["input_ids"]
    files = HfApi().list_repo_files("user/tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", ".gitattributes"} <= set(files)
    assert local_hub.unknown_requests == []


def test_pinned_revision_survives_a_newer_push(local_hub: LocalHub) -> None:
    old, new = tiny_model(seed=0), tiny_model(seed=1)
    first = old.push_to_hub("user/versions").oid
    second = new.push_to_hub("user/versions").oid
    assert first != second

    assert torch.allclose(torch.tensor(hidden(AutoModel.from_pretrained("user/versions"))), torch.tensor(hidden(new)))
    pinned = AutoModel.from_pretrained("user/versions", revision=first)
    assert torch.allclose(torch.tensor(hidden(pinned)), torch.tensor(hidden(old)))
    api = HfApi()
    assert api.model_info("user/versions").sha == second
    assert api.model_info("user/versions", revision=first).sha == first
    assert [c.commit_id for c in api.list_repo_commits("user/versions")][:2] == [second, first]
    weights = api.model_info("user/versions", files_metadata=True).siblings
    assert any(s.rfilename == "model.safetensors" and s.lfs is not None for s in weights)
    assert local_hub.unknown_requests == []


def test_subfolder_download(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.json").write_text(json.dumps({"answer": 42}))
    (folder / "top.txt").write_text("top level")
    api = HfApi()
    api.create_repo("user/folders")
    api.upload_folder(repo_id="user/folders", folder_path=folder)

    path = hf_hub_download("user/folders", "x.json", subfolder="sub")
    assert json.loads(Path(path).read_text()) == {"answer": 42}
    assert Path(path).is_relative_to(local_hub.test_home)  # the in-process cache was redirected too
    assert Path(hf_hub_download("user/folders", "top.txt")).read_text() == "top level"
    assert [f.path for f in api.list_repo_tree("user/folders", path_in_repo="sub")] == ["sub/x.json"]
    assert "sub" in [f.path for f in api.list_repo_tree("user/folders")]
    fs = HfFileSystem()
    assert json.loads(fs.read_text("user/folders/sub/x.json")) == {"answer": 42}
    assert sorted(fs.ls("user/folders", detail=False)) == [
        "user/folders/.gitattributes",
        "user/folders/sub",
        "user/folders/top.txt",
    ]
    assert local_hub.unknown_requests == []


def test_missing_things_raise_the_clients_errors(local_hub: LocalHub) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/nope", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/nope")
    api.create_repo("user/empty")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/empty", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/empty", ".gitattributes", revision="no-such-branch")
    with pytest.raises(OSError):
        AutoTokenizer.from_pretrained("user/nope")
    assert local_hub.unknown_requests == []


def test_create_repo_is_idempotent_only_with_exist_ok(local_hub: LocalHub) -> None:
    api = HfApi()
    url = api.create_repo("user/again")
    assert api.create_repo("user/again", exist_ok=True) == url
    assert url.repo_id == "user/again" and url.endpoint == local_hub.endpoint
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/again")
    assert err.value.response.status_code == 409
    assert local_hub.unknown_requests == []
