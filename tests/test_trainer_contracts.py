"""The Trainer contracts users rely on: tokenized datasets, several evaluation sets, exact resume with every sampler,
pickle-free checkpoints (and resuming the pickled ones of earlier versions), and errors that name the fix."""

import inspect
import json
import os
import shutil
from pathlib import Path

import datasets
import pytest
import tiny
import torch
from safetensors.torch import save_file
from transformers import Trainer
from transformers.optimization import Adafactor, get_scheduler

from mine_vae.trainer import (
    CRITIC_STATE,
    OPTIMIZER_STATE,
    OVERRIDDEN_TRAINER_INTERNALS,
    MineVaeTrainer,
    MineVaeTrainingCollator,
    SeededLengthGroupedSampler,
    _load_state,
    _save_state,
    last_complete_checkpoint,
)
from mine_vae.training_args import MineVaeTrainingArguments

pytestmark = pytest.mark.usefixtures("one_thread")

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")
DATASET_SIZE, BATCH_SIZE = 24, 8  # 3 steps an epoch
MAX_STEPS, SAVE_STEPS = 6, 2  # checkpoints at 2 (mid first epoch), 4 (mid second epoch) and 6


def make_args(output_dir, **overrides) -> MineVaeTrainingArguments:
    return tiny.training_args(
        output_dir, **{"per_device_train_batch_size": BATCH_SIZE, "max_steps": MAX_STEPS, **overrides}
    )


def texts(count: int = DATASET_SIZE, seed: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": tiny.sentences(count, seed=seed)})


def tokenized(count: int = DATASET_SIZE) -> datasets.Dataset:
    """MineVaeProcessor.encode_texts' columns: what the length-grouped sampler measures (`input_ids`)."""
    return datasets.Dataset.from_dict(dict(tiny.processor().encode_texts(tiny.sentences(count))))


def model_inputs(processor, sentences: list[str], drop=()) -> datasets.Dataset:
    """Unpadded model inputs, one row per sentence, as a user's own tokenisation would make them."""
    columns: dict[str, list] = {}
    for text in sentences:
        row = processor([text])
        for key, value in row.items():
            columns.setdefault(key, []).append(value[0].tolist())
    return datasets.Dataset.from_dict({k: v for k, v in columns.items() if k not in drop})


def state(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
    return max(float((got[name].float() - value.float()).abs().max()) for name, value in expected.items())


# ----------------------------------------------------------------------------------------------------------------
# Datasets that already hold model inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_model_input_datasets_train_and_evaluate_with_the_default_collator(tmp_path, kind):
    processor = tiny.processor()
    sentences = tiny.sentences(16)
    # A decoder-only mask left out: the collator builds it, as it does the encoder's.
    data = model_inputs(processor, sentences, drop=("decoder_attention_mask",))
    data = data.add_column("text", sentences)  # a leftover text column is fine: ready inputs take precedence
    trainer = MineVaeTrainer(
        model=tiny.model(kind, mi_weight=1.0),
        args=make_args(tmp_path, max_steps=2),
        processing_class=processor,
        train_dataset=data,
        eval_dataset=data,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    metrics = trainer.evaluate()
    assert metrics["eval_nll"] == metrics["eval_nll"] and metrics["eval_num_examples"] == 16


def test_model_inputs_are_padded_as_the_processor_pads_text():
    # Different pad ids on the two sides, so that a swapped pad id shows.
    decoder = tiny.decoder_tokenizer(with_pad=False)
    decoder.pad_token = decoder.eos_token
    from mine_vae import MineVaeProcessor

    processor = MineVaeProcessor(tiny.encoder_tokenizer(), decoder)
    assert processor.encoder_tokenizer.pad_token_id != processor.decoder_tokenizer.pad_token_id
    sentences = ["the cat sees the river", "a bird", "the old man paints the quiet house"]
    collator = MineVaeTrainingCollator.for_model(tiny.model(), processor)
    full = list(model_inputs(processor, sentences))
    expected = processor(sentences)
    got = collator(full)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # Without the masks they are rebuilt from the lengths; columns the model does not take are dropped.
    bare = [{k: v for k, v in row.items() if "mask" not in k} | {"length": 3} for row in full]
    got = collator(bare)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_model_inputs_train_without_a_processor(tmp_path):
    data = model_inputs(tiny.processor(), tiny.sentences(16))
    trainer = MineVaeTrainer(model=tiny.model(mi_weight=1.0), args=make_args(tmp_path, max_steps=1), train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ValueError, match="without a processing_class.*'input_ids', 'decoder_input_ids', 'labels'"):
        MineVaeTrainer(model=tiny.model(), args=make_args(tmp_path), train_dataset=texts())


def test_the_users_collator_takes_any_columns(tmp_path):
    processor = tiny.processor()
    data = datasets.Dataset.from_dict({"sentence": tiny.sentences(16)})
    trainer = MineVaeTrainer(
        model=tiny.model(mi_weight=1.0),
        args=make_args(tmp_path, max_steps=1),
        processing_class=processor,
        data_collator=lambda rows: processor([row["sentence"] for row in rows]),
        train_dataset=data,
    )
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize(
    "columns",
    [{"sentence": ["a dog"] * 4}, {"input_ids": [[2, 5, 3]] * 4, "decoder_input_ids": [[2, 5]] * 4}],
)
def test_datasets_the_default_collator_cannot_batch_are_refused_with_the_columns_needed(tmp_path, columns):
    with pytest.raises(ValueError) as caught:
        MineVaeTrainer(
            model=tiny.model(),
            args=make_args(tmp_path),
            processing_class=tiny.processor(),
            train_dataset=datasets.Dataset.from_dict(columns),
        )
    message = str(caught.value)
    for needed in ("'text'", "'decoder_token_ids'", "'input_ids', 'decoder_input_ids', 'labels'", "data_collator"):
        assert needed in message


def test_a_dataset_dict_as_train_dataset_names_the_split_to_pass(tmp_path):
    splits = datasets.DatasetDict({"train": texts(), "test": texts(8)})
    expected = r"DatasetDict with splits \['train', 'test'\].*train_dataset=dataset\['train'\]"
    with pytest.raises(ValueError, match=expected):
        MineVaeTrainer(
            model=tiny.model(), args=make_args(tmp_path), processing_class=tiny.processor(), train_dataset=splits
        )


# ----------------------------------------------------------------------------------------------------------------
# Several evaluation sets
# ----------------------------------------------------------------------------------------------------------------
def test_several_eval_sets_are_evaluated_and_logged_each_under_its_name(tmp_path):
    eval_sets = {"a": texts(8, seed=1), "b": texts(8, seed=2)}
    trainer = MineVaeTrainer(
        model=tiny.model(mi_weight=1.0),
        args=make_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2),
        processing_class=tiny.processor(),
        train_dataset=texts(),
        eval_dataset=eval_sets,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if any(key.startswith("eval_") for key in entry)]
    assert len(logged) == 2  # one log (and one on_evaluate) per set, as the Trainer
    assert "eval_a_nll" in logged[0] and "eval_b_nll" in logged[1] and logged[0]["step"] == 2

    metrics = trainer.evaluate()
    for name in ("a", "b"):
        assert {f"eval_{name}_{m}" for m in ("nll", "ppl", "kl", "mi", "au", "mi_bound")} <= metrics.keys()
    assert metrics["eval_a_nll"] != metrics["eval_b_nll"]  # each set evaluated on its own
    # By name, a dict given here, a prefix, and a DatasetDict: the Trainer's conventions.
    assert trainer.evaluate("a")["eval_nll"] == metrics["eval_a_nll"]
    assert trainer.evaluate({"c": eval_sets["b"]})["eval_c_nll"] == metrics["eval_b_nll"]
    assert "test_a_nll" in trainer.evaluate(metric_key_prefix="test")
    split_metrics = trainer.evaluate(datasets.DatasetDict({"validation": eval_sets["a"]}))
    assert split_metrics["eval_validation_nll"] == metrics["eval_a_nll"]


def test_a_dataset_dict_as_eval_dataset_is_several_eval_sets(tmp_path):
    trainer = MineVaeTrainer(
        model=tiny.model(mi_weight=1.0),
        args=make_args(tmp_path),
        processing_class=tiny.processor(),
        eval_dataset=datasets.DatasetDict({"validation": texts(8), "test": texts(8, seed=3)}),
    )
    metrics = trainer.evaluate()
    assert "eval_validation_nll" in metrics and "eval_test_nll" in metrics


# ----------------------------------------------------------------------------------------------------------------
# The training step's logs and model call
# ----------------------------------------------------------------------------------------------------------------
def test_terms_are_logged_at_full_precision_and_the_step_runs_without_the_decoder_cache(tmp_path):
    model = tiny.model(mi_weight=1.0)
    assert model.config.use_cache  # the default the step must override
    # beta rises by thirds: 1/3 is no float32 number, so a float32 detour would show.
    args = make_args(tmp_path, max_steps=4, logging_steps=1, kl_warmup_steps=3)
    trainer = MineVaeTrainer(model=model, args=args, processing_class=tiny.processor(), train_dataset=texts())
    calls = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("use_cache"))
        return forward(*args, **kwargs)

    trainer.model.forward = spy
    trainer.train()
    assert calls and all(flag is False for flag in calls)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    for term in ("reconstruction", "kl", "mi_bound", "critic_loss"):
        # Means of float losses: rounding to 4 decimals would make every one of them equal its rounded value.
        assert any(entry[term] != round(entry[term], 4) for entry in logged), term
    assert [entry["beta"] for entry in logged] == [trainer.kl_schedule(step) for step in range(4)]
    assert [entry["beta"] for entry in logged][1] == 1 / 3


# ----------------------------------------------------------------------------------------------------------------
# Exact resume, mid-epoch, with every sampler
# ----------------------------------------------------------------------------------------------------------------
SAMPLERS = {
    "group_by_length": dict(train_sampling_strategy="group_by_length"),
    "random": dict(train_sampling_strategy="random"),
    "random, accelerate's seedable sampler off": dict(
        train_sampling_strategy="random", accelerator_config={"use_seedable_sampler": False}
    ),
}


def checkpointing_trainer(output_dir, sampler: str, trainer_class=MineVaeTrainer, kind="gpt2") -> MineVaeTrainer:
    return trainer_class(
        model=tiny.model(kind, mi_weight=1.0, xi="ema"),
        args=make_args(output_dir, save_strategy="steps", save_steps=SAVE_STEPS, **SAMPLERS[sampler]),
        processing_class=tiny.processor(),
        train_dataset=tokenized(),
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run per sampler, with its checkpoints; its final state is what every resume must reach."""
    runs: dict[tuple[str, str], tuple[Path, dict[str, torch.Tensor]]] = {}

    def run(sampler: str, kind: str = "gpt2") -> tuple[Path, dict[str, torch.Tensor]]:
        if (sampler, kind) not in runs:
            output_dir = tmp_path_factory.mktemp("uninterrupted")
            trainer = checkpointing_trainer(output_dir, sampler, kind=kind)
            trainer.train()
            runs[sampler, kind] = output_dir, state(trainer.model)
        return runs[sampler, kind]

    return run


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("step", [2, 4], ids=["mid-first-epoch", "mid-second-epoch"])
def test_resume_mid_epoch_is_exact(tmp_path, uninterrupted, sampler, step):
    output_dir, expected = uninterrupted(sampler)
    checkpoint = output_dir / f"checkpoint-{step}"
    files = sorted(os.listdir(checkpoint))
    assert not [name for name in files if name.endswith(PICKLE_SUFFIXES)], files
    resumed = checkpointing_trainer(tmp_path, sampler)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == MAX_STEPS
    assert_same_state(state(resumed.model), expected)


def test_resume_mid_epoch_is_exact_with_a_llama_decoder(tmp_path, uninterrupted):
    output_dir, expected = uninterrupted("group_by_length", kind="llama")
    resumed = checkpointing_trainer(tmp_path, "group_by_length", kind="llama")
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-4"))
    assert_same_state(state(resumed.model), expected)


def test_the_length_grouped_order_is_a_function_of_seed_and_epoch():
    lengths = [len(ids) for ids in tokenized()["input_ids"]]
    first, second = (SeededLengthGroupedSampler(8, lengths, seed=0) for _ in range(2))
    epoch0 = list(first)
    assert list(first) != epoch0  # a pass without set_epoch moves on, as accelerate's seeded sampler does
    second.set_epoch(1)
    assert list(second) == list(first.__class__(8, lengths, seed=1))  # seed + epoch, nothing else
    second.set_epoch(0)
    assert list(second) == epoch0
    # The batch holding the longest example still comes first.
    assert max(lengths) == max(lengths[i] for i in epoch0[:8])


# ----------------------------------------------------------------------------------------------------------------
# No pickle in checkpoints; earlier checkpoints still resume; damaged files name themselves
# ----------------------------------------------------------------------------------------------------------------
def assert_no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert not path.name.endswith(PICKLE_SUFFIXES), path
            if not path.name.endswith(".safetensors"):  # whose first bytes are a length, anything at all
                head = path.read_bytes()[:4]
                assert head[:1] != b"\x80" and head != b"PK\x03\x04", f"{path} looks like a pickle / torch zip"


def test_checkpoints_and_saved_models_hold_no_pickle(tmp_path, uninterrupted):
    output_dir, _ = uninterrupted("group_by_length")
    checkpoint = output_dir / "checkpoint-2"
    assert_no_pickle(checkpoint)
    names = set(os.listdir(checkpoint))
    assert {*OPTIMIZER_STATE, *CRITIC_STATE, "rng_state.safetensors", "training_args.json"} <= names
    saved_args = json.loads((checkpoint / "training_args.json").read_text())
    assert saved_args["seed"] == 0 and saved_args["critic_warmup_steps"] == 1
    optimizer_state = json.loads((checkpoint / OPTIMIZER_STATE.meta).read_text())
    assert optimizer_state["scheduler"]["last_epoch"] == 2  # the scheduler's state sits in the JSON
    # save_model() at the top level of output_dir too.
    trainer = MineVaeTrainer(model=tiny.model(), args=make_args(tmp_path), processing_class=tiny.processor())
    trainer.save_model()
    assert_no_pickle(tmp_path)
    assert (tmp_path / "training_args.json").is_file()


class EarlierVersionTrainer(MineVaeTrainer):
    """Writes checkpoints as earlier versions did: the Trainer's own pickles (optimizer.pt, scheduler.pt,
    rng_state.pth, training_args.bin, each a torch.save of the real state) and the critic's state in the first
    safetensors + JSON layout."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        Trainer._save_optimizer_and_scheduler(self, output_dir)
        critic_state = self.critic_optimizer.state_dict()
        tensors = {f"{p}.{n}": v.contiguous() for p, s in critic_state["state"].items() for n, v in s.items()}
        save_file(tensors, os.path.join(output_dir, CRITIC_STATE.tensors))
        meta = {"param_groups": critic_state["param_groups"], "scheduler": self.critic_lr_scheduler.state_dict()}
        Path(output_dir, CRITIC_STATE.meta).write_text(json.dumps(meta))

    def _save_rng_state(self, output_dir: str) -> None:
        Trainer._save_rng_state(self, output_dir)

    def _save(self, output_dir=None, state_dict=None) -> None:
        Trainer._save(self, output_dir, state_dict)

    def save_model(self, output_dir=None, _internal_call=False) -> None:
        Trainer.save_model(self, output_dir, _internal_call)


@pytest.mark.parametrize("step", [2, 4], ids=["mid-first-epoch", "mid-second-epoch"])
def test_a_checkpoint_of_an_earlier_version_still_resumes_exactly(tmp_path, uninterrupted, step):
    _, expected = uninterrupted("group_by_length")
    old = checkpointing_trainer(tmp_path / "old", "group_by_length", trainer_class=EarlierVersionTrainer)
    old.add_callback(tiny.StopAt(step))
    old.train()
    checkpoint = tmp_path / "old" / f"checkpoint-{step}"
    names = set(os.listdir(checkpoint))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"} <= names
    assert not {OPTIMIZER_STATE.meta, "rng_state.safetensors"} & names
    resumed = checkpointing_trainer(tmp_path / "new", "group_by_length")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert_same_state(state(resumed.model), expected)


@pytest.mark.parametrize(
    "damaged",
    [
        OPTIMIZER_STATE.tensors,
        OPTIMIZER_STATE.meta,
        CRITIC_STATE.tensors,
        "rng_state.safetensors",
        "optimizer.pt",  # an earlier version's files: torch.load's own message would suggest weights_only=False
        "rng_state.pth",
    ],
)
def test_a_damaged_state_file_is_a_one_line_error_naming_it_and_another_checkpoint(tmp_path, uninterrupted, damaged):
    source, _ = uninterrupted("group_by_length")
    output_dir = tmp_path / "out"
    for step in (2, 4):
        shutil.copytree(source / f"checkpoint-{step}", output_dir / f"checkpoint-{step}")
    checkpoint = output_dir / "checkpoint-4"
    if damaged.endswith((".pt", ".pth")):  # an earlier version's checkpoint: drop the new files, write a bad pickle
        for name in (*OPTIMIZER_STATE, "rng_state.safetensors"):
            (checkpoint / name).unlink()
        (checkpoint / "scheduler.pt").write_bytes(b"")
        if damaged == "rng_state.pth":  # the optimizer's must load for the RNG's to be read
            trainer = checkpointing_trainer(tmp_path / "tmp", "group_by_length")
            trainer.create_optimizer_and_scheduler(MAX_STEPS)
            torch.save(trainer.optimizer.state_dict(), checkpoint / "optimizer.pt")
            torch.save(trainer.lr_scheduler.state_dict(), checkpoint / "scheduler.pt")
    (checkpoint / damaged).write_bytes(b"\x80\x04 not what was saved" * 3)
    trainer = checkpointing_trainer(output_dir, "group_by_length")
    with pytest.raises(ValueError) as caught:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message
    assert str(checkpoint / damaged) in message
    assert f"resume from another checkpoint, e.g. {output_dir / 'checkpoint-2'}" in message
    assert caught.value.__suppress_context__  # the reader's own traceback text stays out of the report


def test_the_divergence_message_names_the_newest_complete_checkpoint_or_says_there_is_none(tmp_path, uninterrupted):
    source, _ = uninterrupted("group_by_length")
    output_dir = tmp_path / "out"
    trainer = checkpointing_trainer(output_dir, "group_by_length")
    nan = torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=f"no complete checkpoint in {output_dir} to resume from"):
        trainer._check_finite("VAE", nan, reconstruction=nan)
    for step in (2, 4):
        shutil.copytree(source / f"checkpoint-{step}", output_dir / f"checkpoint-{step}")
    (output_dir / "checkpoint-4" / "trainer_state.json").unlink()  # an interrupted save is not a resume point
    newest = output_dir / "checkpoint-2"
    assert last_complete_checkpoint(str(output_dir)) == str(newest)
    with pytest.raises(FloatingPointError, match=f"the newest complete checkpoint, {newest}, is intact; resume"):
        trainer._check_finite("critic", nan, critic_loss=nan)


def test_every_overridden_trainer_internal_is_listed_and_still_exists_in_the_trainer():
    private = {
        name
        for name, value in vars(MineVaeTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert private == set(OVERRIDDEN_TRAINER_INTERNALS)
    for name in OVERRIDDEN_TRAINER_INTERNALS:
        # Same parameters as the Trainer's: one re-signed upstream would no longer be called the way we expect.
        ours, theirs = (inspect.signature(getattr(cls, name)).parameters for cls in (MineVaeTrainer, Trainer))
        assert list(ours) == list(theirs), name


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.9)),
        lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9),
        lambda params: torch.optim.Adagrad(params, lr=1e-2),
        lambda params: Adafactor(params, lr=1e-2, relative_step=False, scale_parameter=False),
    ],
    ids=["adamw", "sgd", "adagrad", "adafactor"],
)
def test_optimizer_and_scheduler_states_round_trip_without_pickle(tmp_path, make_optimizer):
    def build():
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        optimizer = make_optimizer(layer.parameters())
        return layer, optimizer, get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)

    layer, optimizer, scheduler = build()
    for _ in range(2):
        layer(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    _save_state(str(tmp_path), optimizer.state_dict(), scheduler.state_dict(), OPTIMIZER_STATE)
    _, fresh, fresh_scheduler = build()
    optimizer_state, scheduler_state = _load_state(str(tmp_path), OPTIMIZER_STATE)
    fresh.load_state_dict(optimizer_state)
    fresh_scheduler.load_state_dict(scheduler_state)
    expected, got = optimizer.state_dict(), fresh.state_dict()
    assert got["param_groups"] == expected["param_groups"]  # tuples (betas) included
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert got["state"].keys() == expected["state"].keys()
    for param, values in expected["state"].items():
        assert got["state"][param].keys() == values.keys()
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got["state"][param][name], value), (param, name)
            else:
                assert got["state"][param][name] == value, (param, name)


def test_checkpoint_rotation_leaves_the_users_own_checkpoint_folders(tmp_path):
    """save_total_limit rotates only checkpoint-<step>: the Trainer's own rotation (by modification time) would also
    delete a user's checkpoint-best/."""
    import os
    import time

    from mine_vae.trainer import step_checkpoints

    output_dir = tmp_path / "out"
    best = output_dir / "checkpoint-best"
    best.mkdir(parents=True)
    (best / "notes.txt").write_text("mine")
    old = time.time() - 3600
    os.utime(best, (old, old))  # older than anything the run writes: first in line for an mtime rotation
    data = datasets.Dataset.from_dict({"text": tiny.sentences(48)})
    args = MineVaeTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    MineVaeTrainer(model=tiny.model(), args=args, processing_class=tiny.processor(), train_dataset=data).train()
    assert (best / "notes.txt").read_text() == "mine"
    assert [os.path.basename(f) for f in step_checkpoints(str(output_dir))] == ["checkpoint-6"]


@pytest.mark.parametrize(
    "name, value",
    [
        ("learning_rate", float("nan")),
        ("critic_learning_rate", float("inf")),
        ("weight_decay", float("nan")),
        ("learning_rate", -1e-3),
    ],
)
def test_non_finite_or_negative_rates_are_refused_naming_the_argument(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"MineVaeTrainingArguments\.{name}="):
        MineVaeTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **{name: value})


def test_free_bits_are_not_a_training_argument(tmp_path):
    """Free bits are the model's `config.free_bits` alone (saved with the model, like β and λ)."""
    with pytest.raises(TypeError, match="free_bits"):
        MineVaeTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, free_bits=0.1)


def test_bf16_on_a_cpu_only_machine_trains_under_cpu_autocast(tmp_path, monkeypatch):
    """transformers refuses bf16 without an accelerator unless use_cpu is set; MineVaeTrainingArguments sets it when
    torch sees none (what the pretrained preset relies on), and the step then runs its matrix products in bf16."""
    import mine_vae.training_args as training_args_module

    monkeypatch.setattr(training_args_module, "_cpu_only", lambda: True)
    args = tiny.training_args(tmp_path, bf16=True, max_steps=2)
    assert args.use_cpu and args.bf16
    seen = []
    model = tiny.model()
    hook = model.decoder.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    processor = tiny.processor()
    data = model_inputs(processor, tiny.sentences(16))
    MineVaeTrainer(model=model, args=args, train_dataset=data, processing_class=processor).train()
    hook.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    # Without bf16 the device is left to the user and accelerate.
    assert not tiny.training_args(tmp_path / "fp32", max_steps=2, use_cpu=False).use_cpu
