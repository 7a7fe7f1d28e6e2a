"""The trainer end to end on tiny models: outputs, exact resume after SIGKILL, accumulation, budgets, bad data."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

import vlmkit
from vlmkit.config import load_config
from vlmkit.train import train
from cli_helpers import vlmkit_command


def test_run_folder_has_everything(tiny_run):
    for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "summary.json", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json", "checkpoints/latest"):
        assert (tiny_run / name).exists(), name
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in records)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 6
    saved = load_config(tiny_run / "config.yaml")
    model = vlmkit.load(tiny_run)
    assert saved["model"]["text"]["vocab_size"] == model.tokenizer.vocab_size


def test_training_lowers_the_loss(synth_data, tiny_overrides, tmp_path):
    config = load_config("clip-tiny", tiny_overrides + ["train.steps=30", "train.lr=2e-3", "train.log_every=5"])
    train(config, data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.2


def test_existing_run_needs_resume(tiny_run, synth_data, tiny_overrides):
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config("clip-tiny", tiny_overrides), data=synth_data / "captions.csv", out=tiny_run,
              progress=False)


def _train_command(data, out, overrides, *extra, recipe="clip-tiny"):
    command = vlmkit_command() + ["train", "--recipe", recipe, "--data", str(data), "--out", str(out),
                                 "--no-progress"]
    for item in overrides:
        command += ["--set", item]
    return command + list(extra)


def test_resume_after_sigkill_is_bit_exact(synth_data, tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.steps=40", "train.checkpoint_every=5", "data.workers=1",
                                  "data.augment=true"]
    data = synth_data / "shards"
    subprocess.run(_train_command(data, tmp_path / "straight", overrides), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(data, killed, overrides), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    latest = killed / "checkpoints" / "latest"
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step-00000010"):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model").exists()
    subprocess.run(_train_command(data, killed, overrides, "--resume"), check=True, capture_output=True)

    straight = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    resumed = load_file(str(killed / "model" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


def _gradients(model, batch, accum):
    from vlmkit.train.step import optimizer_step

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer_step(model, model, optimizer, batch, accum, 0.0, "fp32", torch.device("cpu"))
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_sees_the_whole_batch(tiny_overrides):
    config = load_config("clip-tiny", tiny_overrides)
    config["model"]["text"]["vocab_size"] = 50
    torch.manual_seed(0)
    model = vlmkit.build_model(config["model"])
    batch = {"images": torch.randn(16, 3, 32, 32), "input_ids": torch.randint(1, 50, (16, 24)),
             "attention_mask": torch.ones(16, 24, dtype=torch.bool)}
    full = _gradients(model, batch, accum=1)
    accumulated = _gradients(model, batch, accum=4)
    assert full.keys() == accumulated.keys() and "logit_scale" in full
    for name in full:
        assert torch.allclose(full[name], accumulated[name], atol=1e-6, rtol=1e-4), name
    # averaging four small-batch losses instead would see fewer negatives and differ
    quarter = {"images": batch["images"][:4], "input_ids": batch["input_ids"][:4],
               "attention_mask": batch["attention_mask"][:4]}
    assert not torch.allclose(_gradients(model, quarter, 1)["logit_scale"], full["logit_scale"], rtol=1e-2)


def test_time_budget_fits_the_schedule(synth_data, tiny_overrides, tmp_path):
    config = load_config("clip-tiny", tiny_overrides + ["train.steps=null", "train.minutes=0.15"])
    result = train(config, data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.steps >= 14 and state["total_steps"] >= 14
    assert result.seconds < 0.15 * 60 + 10


def test_cpu_clock_budget_counts_this_process_cpu_time(synth_data, tiny_overrides, tmp_path):
    config = load_config("clip-tiny", tiny_overrides + ["train.steps=null", "train.minutes=0.1", "train.clock=cpu"])
    cpu_start = time.process_time()
    result = train(config, data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    cpu_used = time.process_time() - cpu_start
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["clock"] == "cpu" and result.steps >= 14
    # the budget is counted in CPU seconds the run itself spent (not wall time, which includes waiting); the
    # schedule fitted from timed steps ends near the budget, within timing noise
    assert 0.8 * 0.1 * 60 <= summary["budget_elapsed_s"] <= cpu_used + 0.5
    with pytest.raises(ValueError, match="train.clock"):
        train(load_config("clip-tiny", tiny_overrides + ["train.clock=gpu"]), data=synth_data / "captions.csv",
              out=tmp_path / "bad", progress=False)


def test_bf16_precisions_train(synth_data, tiny_overrides, tmp_path):
    for precision in ("bf16-mixed", "bf16"):
        config = load_config("clip-tiny", tiny_overrides + ["train.steps=2", f"train.precision={precision}"])
        result = train(config, data=synth_data / "captions.csv", out=tmp_path / precision, progress=False)
        assert torch.isfinite(torch.tensor(result.final_loss))
    assert vlmkit.load(tmp_path / "bf16").dtype == torch.bfloat16


def test_bad_samples_are_skipped_and_reported(synth_data, tiny_overrides, tmp_path):
    rows = (synth_data / "captions.csv").read_text().splitlines()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    bad_rows = [f"{tmp_path / 'broken.png'},a broken image,", f"{tmp_path / 'missing.png'},a missing image,"]
    manifest = tmp_path / "train.csv"
    images = synth_data / "images"
    fixed = [rows[0]] + [row.replace("images/", f"{images}/", 1) for row in rows[1:]]
    manifest.write_text("\n".join(fixed[:1] + bad_rows * 60 + fixed[1:]) + "\n")
    config = load_config("clip-tiny", tiny_overrides + ["train.steps=4"])
    result = train(config, data=manifest, out=tmp_path / "run", progress=False)
    skipped = result.bad_samples
    assert json.dumps(skipped).count("corrupt_image") >= 1 and json.dumps(skipped).count("missing_file") >= 1

    strict = load_config("clip-tiny", tiny_overrides + ["train.steps=4", "data.on_bad_sample=error"])
    from vlmkit.data import BadSample

    with pytest.raises(BadSample):
        train(strict, data=manifest, out=tmp_path / "strict", progress=False)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun may start its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    stack, tree = [pid], []
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    for member in reversed(tree):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _torchrun(command, timeout):
    """``command`` (a ``vlmkit train`` command line) on two CPU processes under torchrun: (return code, stderr).
    The workers are killed when it runs past ``timeout`` (a hang), never left behind."""
    torchrun = [command[0], "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                "--master_addr=127.0.0.1"] + command[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(torchrun, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    stderr = ""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stderr = f"torchrun still running after {timeout} s (a rank waiting for another?)"
    finally:
        if process.poll() is None:
            _kill_tree(process.pid)
            process.wait()
    return process.returncode, stderr


def test_torchrun_two_processes_match_one_process(synth_data, tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.steps=3", "train.grad_clip=0"]
    data = synth_data / "captions.csv"
    subprocess.run(_train_command(data, tmp_path / "single", overrides), check=True, capture_output=True)
    returncode, stderr = _torchrun(_train_command(data, tmp_path / "ddp", overrides), timeout=500)
    assert returncode == 0, stderr[-2000:]
    single = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for name in single:
        mine, theirs = single[name], ddp[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias gets a zero gradient (softmax ignores a shift shared by every key), so AdamW turns
            # float noise, which depends on how the batch was split, into steps of up to lr: compare the query
            # and value biases exactly and the key bias only within those steps.
            width = mine.shape[0] // 3
            key, mine_key, theirs_key = slice(width, 2 * width), mine[width:2 * width], theirs[width:2 * width]
            assert torch.allclose(mine_key, theirs_key, atol=3 * 1e-3), name
            mine, theirs = mine.clone(), theirs.clone()
            mine[key] = theirs[key] = 0
        assert torch.allclose(mine, theirs, atol=1e-4), name
    assert not list((tmp_path / "ddp").glob("**/*.tmp*"))


def test_torchrun_ranks_agree_on_a_time_budget_and_its_refit(synth_data, tiny_overrides, tmp_path):
    """Each rank has its own CPU clock: the fitted steps and the moment the budget runs out must still be one
    decision, or a rank waits forever in the other's all-reduce."""
    overrides = tiny_overrides + ["train.steps=null", "train.minutes=0.2", "train.clock=cpu", "data.phrase_labels=64",
                                  "train.phrase_warmup=0.5", "train.relation_text_steps=20"]
    command = _train_command(synth_data / "captions.csv", tmp_path / "ddp", overrides, recipe="clip-tiny-hardneg")
    returncode, stderr = _torchrun(command, timeout=300)  # a hang is killed at the timeout and fails here
    assert returncode == 0, stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert len(summary["schedule_fits"]) == 2 and summary["steps"] <= summary["total_steps"]
    assert summary["relation_text_stage"]["steps"] == 20  # the text stage's all-reduces matched up too


def test_periodic_validation_logs_retrieval(synth_data, heldout_data, tiny_overrides, tmp_path):
    config = load_config("clip-tiny", tiny_overrides + ["train.steps=4", "train.eval_every=2"])
    result = train(config, data=synth_data / "coco.json", val_data=heldout_data / "captions.csv",
                   out=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validation] == [2, 4]
    assert all(0 <= r["val/image_retrieval_recall@1"] <= 1 for r in validation)
    assert result.validation["val/num_images"] == 80


def test_budget_fit_counts_the_timed_steps_and_what_is_left():
    from types import SimpleNamespace

    from vlmkit.train.loop import _fit_steps_to_budget

    runtime = SimpleNamespace(device="cpu")
    # 12 timed steps took 1.2 s, 10 s of the budget are left: 100 more steps after the 14 taken
    assert _fit_steps_to_budget(14, 12, 1.2, 10.0, runtime) == 114
    # a budget already spent still takes one more step, so the schedule has an end after this one
    assert _fit_steps_to_budget(14, 12, 1.2, -1.0, runtime) == 15
