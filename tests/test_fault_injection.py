"""Nothing lost to a crash: runs killed with SIGKILL at random moments resume to the uninterrupted run's parameters,
with one process and with two."""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

# Long enough that four kills, each at most 3 steps plus 50 ms after a restart, cannot reach the end: a run that ends on
# its own before its kill is a failure of the test's schedule, not a pass.
STEPS = 40
HERE = os.path.dirname(os.path.abspath(__file__))

# One training run of the tiny model with the presets' sampler (length-grouped), a checkpoint every 2 steps, resuming
# from the newest complete checkpoint when there is one. It prints each finished step, so the test can kill it at a
# chosen moment, and writes its final parameters.
TRAIN_SCRIPT = textwrap.dedent(
    f"""
    import os, sys
    sys.path.insert(0, {HERE!r})
    import datasets, tiny, torch
    from safetensors.torch import save_file
    from transformers import TrainerCallback
    from mine_vae import MineVaeTrainer, MineVaeTrainingArguments
    from mine_vae.trainer import last_complete_checkpoint

    output_dir, result = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)

    class Announce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print("step", state.global_step, flush=True)

    processor = tiny.processor()
    texts = tiny.sentences(40)
    data = datasets.Dataset.from_dict(dict(processor.encode_texts(texts)))
    data = data.add_column("length", [len(ids) for ids in data["input_ids"]])
    args = MineVaeTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=8, max_steps={STEPS}, learning_rate=3e-3,
        save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        critic_warmup_steps=1, train_sampling_strategy="group_by_length", length_column_name="length",
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
    )
    trainer = MineVaeTrainer(model=tiny.model(mi_weight=1.0, xi="ema"), args=args, processing_class=processor,
                             train_dataset=data, callbacks=[Announce()])
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))
    if trainer.accelerator.is_main_process:
        save_file({{k: v.detach().clone() for k, v in trainer.model.state_dict().items()}}, result)
    """
)


def _command(script, output_dir, result, processes):
    if processes == 1:
        return [sys.executable, str(script), str(output_dir), str(result)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        str(script), str(output_dir), str(result),
    ]  # fmt: skip


def _run(script, output_dir, result, processes):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(_command(script, output_dir, result, processes), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_parameters(result, reference):
    got, expected = load_file(str(result)), load_file(str(reference))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)


def test_sigkill_at_random_moments_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    reference = tmp_path / "uninterrupted.safetensors"
    _run(script, tmp_path / "uninterrupted", reference, processes=1)

    rng = random.Random(7)
    output_dir, result = tmp_path / "killed", tmp_path / "killed.safetensors"
    kills = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while not result.exists():
        process = subprocess.Popen(
            _command(script, output_dir, result, 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        if kills < 4:
            # Kill after a random number of further steps plus a random delay: inside a step, a save, or a restart.
            wait_for = rng.randint(1, 3)
            seen = 0
            for line in process.stdout:
                seen += line.startswith("step")
                if seen >= wait_for:
                    break
            time.sleep(rng.uniform(0.0, 0.05))
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL, f"run {kills + 1} ended on its own ({process.returncode})"
            kills += 1
        else:
            process.communicate()
            assert process.returncode == 0
    assert kills == 4
    _assert_same_parameters(result, reference)


def test_two_processes_resume_mid_run_exactly(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    reference = tmp_path / "uninterrupted.safetensors"
    _run(script, tmp_path / "uninterrupted", reference, processes=2)
    # A run that crashed after step 6: its output folder holds checkpoints up to checkpoint-6.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "uninterrupted" / "checkpoint-6", resumed / "checkpoint-6")
    result = tmp_path / "resumed.safetensors"
    _run(script, resumed, result, processes=2)
    _assert_same_parameters(result, reference)
