import json
import os
import subprocess
import sys
import textwrap

import pytest
import tiny
import torch
from safetensors import safe_open
from transformers import AutoModel

from mine_vae import MineVaeModel


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    model = tiny.model(kind, xi="ema").eval()
    model.critic.update_moving_average(torch.tensor([0.3, 1.2]))
    batch = tiny.processor()(tiny.sentences(4))
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = MineVaeModel.from_pretrained(tmp_path).eval()
    torch.manual_seed(0)
    expected = model(**batch)
    torch.manual_seed(0)
    got = loaded(**batch)
    for field in ("loss", "logits", "mu", "logvar", "mi_lower_bound"):
        assert torch.equal(expected[field], got[field]), field
    assert torch.equal(loaded.critic.log_ema, model.critic.log_ema)
    z = model.sample_prior(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(latent=z, max_new_tokens=6), loaded.generate(latent=z, max_new_tokens=6))


# The keys of the heads (everything besides the encoder's and decoder's own) of a model with every head, as the code
# before the latent path had a module of its own saved them: every saved MINE-VAE holds these names.
SAVED_HEAD_KEYS = [
    "posterior.weight",
    "posterior.bias",
    "latent_to_key.weight",
    "latent_to_key.bias",
    "latent_to_value.weight",
    "latent_to_value.bias",
    "latent_to_embedding.weight",
    "latent_to_embedding.bias",
    "latent_to_vocab.weight",
    "latent_to_vocab.bias",
    "latent_to_residual.0.weight",
    "latent_to_residual.0.bias",
    "latent_to_residual.1.weight",
    "latent_to_residual.1.bias",
    "critic.log_ema",
    "critic.ema_updates",
    "critic.feature_norm.weight",
    "critic.feature_norm.bias",
    "critic.feature_proj.weight",
    "critic.feature_proj.bias",
    "critic.latent_proj.weight",
    "critic.mlp.1.weight",
    "critic.mlp.1.bias",
    "critic.mlp.3.weight",
    "critic.mlp.3.bias",
]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_heads_keep_the_weight_names_saved_models_have(tmp_path, kind):
    """Folders saved before keep loading: the heads' weights are named as they always were, in the model, in the
    saved file and among the heads that always train."""
    model = tiny.model(kind, latent_injection="both", latent_vocab_bias=True, latent_residual_layers=[0, 1])
    heads = [key for key in model.state_dict() if not key.startswith(("encoder.", "decoder."))]
    assert heads == SAVED_HEAD_KEYS
    assert model.head_names == list(dict.fromkeys(key.split(".")[0] for key in SAVED_HEAD_KEYS))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        assert sorted(key for key in saved.keys() if not key.startswith(("encoder.", "decoder."))) == sorted(heads)
    assert set(MineVaeModel.from_pretrained(tmp_path).state_dict()) == set(model.state_dict())


def test_saved_folder_carries_auto_map_and_code(tmp_path):
    tiny.model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mine_vae.MineVaeConfig",
        "AutoModel": "modeling_mine_vae.MineVaeModel",
    }
    assert tiny.SHIPPED_CODE | {"modules.json"} <= set(os.listdir(tmp_path))


def test_auto_model_loads_after_import(tmp_path):
    tiny.model().save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MineVaeModel)


def _load_as_remote_code(tmp_path, body: str, version: str | None = None) -> subprocess.CompletedProcess:
    """Run `body` after `AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True)` in a process that
    cannot import mine_vae; with `version`, transformers reports that release (as a user's newer or older install)."""
    pretend = f"transformers.__version__ = {version!r}" if version else ""
    script = textwrap.dedent(
        f"""
        import json, sys, warnings, torch, transformers
        {pretend}
        from transformers import AutoModel
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        print("WARNED", json.dumps([str(w.message) for w in caught if "MINE-VAE" in str(w.message)]))
        assert "mine_vae" not in sys.modules, "mine_vae was imported"
        """
    ) + textwrap.dedent(body)
    # Run from an empty folder with a clean path so the installed/checked-out package cannot be imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "mine_vae.py").write_text("raise ImportError('mine_vae must not be imported here')\n")
    env["PYTHONPATH"] = str(blocker)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def _printed(result: subprocess.CompletedProcess, tag: str):
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith(tag + " "))[len(tag) + 1 :])


def test_trust_remote_code_loads_in_a_process_that_never_imported_mine_vae(tmp_path):
    model = tiny.model("llama").eval()
    model.save_pretrained(tmp_path / "model")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    expected = model.generate(latent=z, max_new_tokens=6, min_new_tokens=6).tolist()
    body = """
        z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
        print("IDS", json.dumps(model.generate(latent=z, max_new_tokens=6, min_new_tokens=6).tolist()))
        """
    result = _load_as_remote_code(tmp_path, body)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _printed(result, "IDS") == expected
    assert _printed(result, "WARNED") == []  # the installed release is in the tested range


def test_remote_code_keeps_loading_above_the_tested_ceiling_and_refuses_below_the_floor(tmp_path):
    """A shared model's code runs under the user's transformers, months later: a newer release loads it (with one
    warning naming the tested range), an older one than the floor gets one line saying what to install."""
    model = tiny.model("gpt2").eval()
    model.save_pretrained(tmp_path / "model")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    expected = model.generate(latent=z, max_new_tokens=4, min_new_tokens=4).tolist()
    body = """
        z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
        print("IDS", json.dumps(model.generate(latent=z, max_new_tokens=4, min_new_tokens=4).tolist()))
        """
    newer = _load_as_remote_code(tmp_path, body, version="5.99.0")
    assert newer.returncode == 0, newer.stderr[-3000:]
    assert _printed(newer, "IDS") == expected
    (warning,) = _printed(newer, "WARNED")
    assert "tested with transformers>=5.24" in warning and "5.99.0 is installed" in warning
    older = _load_as_remote_code(tmp_path, body, version="5.23.0")
    assert older.returncode != 0
    assert "MINE-VAE needs transformers>=5.24.0; transformers 5.23.0 is installed" in older.stderr


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    tiny.model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or incomplete.*load the previous checkpoint"):
        MineVaeModel.from_pretrained(tmp_path)


def test_pickled_weights_are_never_loaded(tmp_path):
    model = tiny.model()
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="no safetensors weights.*never loads pickled weights"):
        MineVaeModel.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="never loads pickled weights"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors weights only"):
        MineVaeModel.from_pretrained(tmp_path, use_safetensors=False)


def test_weights_of_another_shape_are_the_documented_value_error_naming_the_setting(tmp_path):
    tiny.model().save_pretrained(tmp_path)  # latent_size 8
    with pytest.raises(ValueError, match=r"as changed by latent_size: \d+ tensor\(s\) differ in shape") as raised:
        MineVaeModel.from_pretrained(tmp_path, latent_size=16)
    assert "[8]" in str(raised.value) or ", 8]" in str(raised.value)  # the saved shape is named
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "latent_size": 4}))
    with pytest.raises(ValueError, match=r"do not fit its config: \d+ tensor\(s\) differ in shape"):
        MineVaeModel.from_pretrained(tmp_path)
    # Asked for, tensors of another shape are accepted at their initial values and reported, as transformers does.
    model, info = MineVaeModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True, output_loading_info=True)
    assert model.config.latent_size == 4 and info["mismatched_keys"]
