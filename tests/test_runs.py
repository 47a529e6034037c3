"""How a training run is assembled (mine_vae.runs): the held-out splits, the trainer's log lines."""

import datasets
import pytest
import tiny

from mine_vae.runs import LogLines, hold_out, make_trainer
from mine_vae.trainer import LOGGED_TERMS

pytestmark = pytest.mark.usefixtures("one_thread")


def corpus(size: int, *splits: str) -> datasets.DatasetDict:
    texts = [f"sentence number {i}" for i in range(size)]  # all different
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": texts if name == "train" else texts[:3]}) for name in splits}
    )


def test_hold_out_takes_the_missing_splits_from_the_training_text_the_same_way_for_a_seed():
    full, held = hold_out(corpus(100, "train", "validation"), ["validation", "test"], 10, seed=0)
    assert held == ["test"] and len(full["validation"]) == 3  # a split the corpus has is kept
    assert len(full["test"]) == 10 and len(full["train"]) == 90
    assert not set(full["test"]["text"]) & set(full["train"]["text"])
    again, _ = hold_out(corpus(100, "train", "validation"), ["validation", "test"], 10, seed=0)
    assert again["test"]["text"] == full["test"]["text"]
    other, _ = hold_out(corpus(100, "train", "validation"), ["validation", "test"], 10, seed=1)
    assert other["test"]["text"] != full["test"]["text"]
    small, _ = hold_out(corpus(10, "train"), ["validation"], 1)
    assert len(small["validation"]) == 2  # at least 2 sentences, whatever the percentage


@pytest.mark.parametrize(("size", "percentage"), [(3, 10), (100, 0), (100, 99)])
def test_hold_out_refuses_a_text_too_short_or_a_percentage_out_of_range(size, percentage):
    with pytest.raises(ValueError, match="no validation split .* give a validation file, or a held-out percentage"):
        hold_out(corpus(size, "train"), ["validation"], percentage)


def test_the_trainer_logs_one_line_per_log_with_every_logged_term_and_prints_no_dicts(tmp_path, capsys):
    data = datasets.Dataset.from_dict({"text": tiny.sentences(16)})
    args = tiny.training_args(tmp_path, max_steps=2, logging_steps=1)
    trainer = make_trainer(tiny.model(), tiny.processor(), args, data, log_label="run a")
    assert sum(isinstance(callback, LogLines) for callback in trainer.callback_handler.callbacks) == 1
    trainer.train()
    out, err = capsys.readouterr()
    assert "'loss'" not in out  # the Trainer's dicts (PrinterCallback) are gone: stdout is a command's results
    lines = [line for line in err.splitlines() if line.startswith("[run a] ")]
    assert [line.split(" | ")[0] for line in lines[:2]] == ["[run a] step 1/2", "[run a] step 2/2"]
    assert len(lines) == 3 and lines[2].startswith("[run a] Trained 2 steps in ")
    # The first step is the critic's warm-up (lambda 0); every term the trainer logs is shown.
    for key in ("loss", *LOGGED_TERMS, "learning_rate"):
        if key != "bow":  # logged only by a model with a bag-of-words head
            assert f" | {key} " in lines[1], key
