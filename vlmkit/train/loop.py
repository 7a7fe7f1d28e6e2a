"""The training loop: warmup + cosine AdamW, accumulation, clipping, precision, budgets, checkpoints, resume."""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vlmkit import distributed
from vlmkit.config import dump_config
from vlmkit.data.sampler import EpochIndexed, ResumableBatchSampler
from vlmkit.files import atomic_write_text
from vlmkit.train import checkpoint as ckpt
from vlmkit.train.optim import (build_optimizer, learning_rate, phrase_schedule, phrase_warmup_steps,
                                set_learning_rate, warmup_steps)
from vlmkit.train.step import optimizer_step
from vlmkit.train.text_stage import run_relation_text_stage
from vlmkit.train.setup import (build_training_model, data_workers, load_initial_model, load_training_samples,
                                prepare_phrase_vocabulary, prepare_relation_captions, prepare_tokenizer,
                                prepare_vision_init, resolve_precision, setup_runtime, training_collator)
from vlmkit.train.validate import Validator

CALIBRATION_STEPS = 12  # steps timed to fit the schedule to a time budget


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    samples_per_s: float
    final_loss: float
    bad_samples: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: dict[str, Any], *, data: str | Path, out: str | Path, val_data: str | Path | None = None,
          resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config`` (a merged recipe, see ``vlmkit.config.load_config``) on ``data``; write the run to ``out``.

    With ``resume`` the run continues from ``out``'s latest checkpoint with the same data order and RNG state.
    """
    run_dir = Path(out)
    tcfg, dcfg = config["train"], config["data"]
    runtime = setup_runtime(tcfg)
    tcfg["precision"] = resolve_precision(str(tcfg["precision"]), runtime.device)
    main = distributed.is_main_process()
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if not resume and ckpt.latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
    if resume and latest is None and main:
        print(f"vlmkit: no checkpoint in {run_dir} yet; starting from step 0")
    run_dir.mkdir(parents=True, exist_ok=True)

    samples = load_training_samples(data, dcfg)
    seed = int(tcfg["seed"])
    initial = load_initial_model(config) if tcfg.get("init") else None
    vision_encoder = prepare_vision_init(config) if tcfg.get("init_vision") and initial is None else None
    tokenizer = prepare_tokenizer(config, samples, run_dir, initial)
    model = initial if initial is not None else build_training_model(config, tokenizer, seed)
    if vision_encoder is not None:
        if not hasattr(model, "load_vision_from"):
            raise ValueError(f"train.init_vision: a {config['model']['architecture']} model has no vision tower to "
                             "start from another model's")
        model.load_vision_from(vision_encoder)
        config["model"] = {"architecture": model.architecture, **model.config_dict()}
    if tcfg.get("freeze") is not None:
        if not hasattr(model, "set_freeze"):
            raise ValueError(f"train.freeze: a {config['model']['architecture']} model has no freezable parts")
        model.set_freeze(tcfg["freeze"])
        config["model"] = {"architecture": model.architecture, **model.config_dict()}
    phrase_vocabulary = prepare_phrase_vocabulary(config, model, samples, data)  # before the optimizer: new heads
    if float(dcfg["relation_captions"] or 0.0):
        prepare_relation_captions(samples, data)
    if tcfg["precision"] == "bf16":
        model.to(torch.bfloat16)
    model.to(runtime.device)
    optimizer = build_optimizer(model, tcfg)

    from dataclasses import replace

    from vlmkit.data import ImageTextDataset

    transform = replace(model.config.preprocess.image_transform(model.config.vision.image_size),
                        train=bool(dcfg["augment"]), crop_scale=tuple(dcfg["crop_scale"]))
    if int(dcfg["hard_negatives"]) and not hasattr(model, "loss_from_features"):
        raise ValueError("data.hard_negatives adds wrong captions to a contrastive loss: use it with a contrastive "
                         f"model (clip, siglip), not {config['model'].get('architecture')}")
    dataset = ImageTextDataset(samples, transform, seed=seed, on_bad_sample=dcfg["on_bad_sample"],
                               max_pixels=int(dcfg["max_pixels"]), hard_negatives=int(dcfg["hard_negatives"]),
                               phrase_vocabulary=phrase_vocabulary,
                               phrase_negatives=bool(dcfg["phrase_negatives"]),
                               relation_captions=float(dcfg["relation_captions"] or 0.0))

    state: dict[str, Any] = {"step": 0, "total_steps": tcfg["steps"], "elapsed_s": 0.0, "samples_seen": 0}
    if latest is not None:
        state = ckpt.load_checkpoint(latest, model, optimizer)
        if tcfg["steps"] is not None and int(tcfg["steps"]) != state.get("total_steps"):
            state["total_steps"] = int(tcfg["steps"])  # an explicit --set train.steps extends or shortens
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        _trim_metrics(run_dir / "metrics.jsonl", int(state["step"]))

    start_step = int(state["step"])
    total_steps = state.get("total_steps")
    if total_steps is None and not tcfg.get("minutes"):
        raise ValueError("give train.steps or train.minutes (a time budget)")
    warmup = warmup_steps(tcfg, total_steps)
    budget_s = float(tcfg["minutes"]) * 60.0 if tcfg.get("minutes") else None
    budget_clock = _budget_clock(tcfg)

    sampler = ResumableBatchSampler(len(dataset), int(tcfg["batch_size"]), seed=seed, rank=runtime.rank,
                                    world_size=runtime.world_size, start_step=start_step)
    workers = data_workers(dcfg)
    loader = torch.utils.data.DataLoader(
        EpochIndexed(dataset), batch_sampler=sampler, num_workers=workers,
        collate_fn=training_collator(model, tokenizer),
        pin_memory=runtime.device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)
    run_start, elapsed_before = time.perf_counter(), float(state.get("elapsed_s", 0.0))
    wall_before, budget_start = float(state.get("wall_s", elapsed_before)), budget_clock()

    def budget_spent() -> float:  # seconds on the budget's clock, earlier runs of a resumed job included
        return elapsed_before + budget_clock() - budget_start

    if int(tcfg.get("relation_text_steps") or 0) and start_step == 0:  # counted in the budget, before step 0
        state["relation_text_stage"] = run_relation_text_stage(
            model, samples, tcfg, runtime.device, seed, progress=main and progress,
            out_of_time=lambda: budget_s is not None and budget_spent() >= budget_s)
    trained = DistributedDataParallel(model) if runtime.world_size > 1 else model
    validator = Validator(val_data, dcfg, model, runtime.device, tcfg["precision"]) if val_data and main else None

    from vlmkit.data import BadSampleReport

    bad = BadSampleReport.from_dict(state["bad_samples"]) if state.get("bad_samples") else BadSampleReport()
    accum = max(1, int(tcfg["grad_accum"]))
    clip = float(tcfg["grad_clip"] or 0.0)
    log_every, ckpt_every = max(1, int(tcfg["log_every"])), int(tcfg["checkpoint_every"] or 0)
    eval_every = int(tcfg["eval_every"] or 0)
    bar = _progress_bar(main and progress, start_step, total_steps)
    step, window_loss, window_samples, window_start = start_step, [], 0, time.perf_counter()
    last_loss, validation = math.nan, {}
    # a time budget's schedule is fitted from CALIBRATION_STEPS timed steps (after two untimed ones), and fitted
    # again when phrase pre-training's warm-up ends: its steps cost differently from the contrastive ones
    calibrate_at, calibration_start = (start_step + 2 if total_steps is None else None), 0.0
    phrase_phase = state.get("phrase_warmup_steps")
    if phrase_vocabulary and phrase_phase is None:
        phrase_phase = phrase_warmup_steps(tcfg, total_steps)
    fitted = budget_s is not None and tcfg.get("steps") is None

    def refit_step() -> int | None:  # where phrase pre-training's warm-up ends, if the budget is fitted again there
        return phrase_phase if fitted and phrase_phase is not None and step < phrase_phase else None
    refit_at = refit_step()

    trained.train()
    with _StopFlag() as stop:
        for batch in loader:
            if total_steps is not None and step >= total_steps:
                break
            bad.update_from_batch(batch)
            if batch["images"] is None or len(batch["images"]) == 0:
                raise RuntimeError(f"every sample of step {step}'s batch was bad: {bad.summary()}")
            if phrase_vocabulary:  # two phases, each with its own schedule
                model.loss_weights, lr = phrase_schedule(tcfg, step, total_steps, warmup, phrase_phase)
            else:
                lr = learning_rate(step, total_steps or 10**9, float(tcfg["lr"]), warmup, float(tcfg["min_lr"]))
            set_learning_rate(optimizer, lr)
            loss_value, logs = optimizer_step(trained, model, optimizer, batch, accum, clip, tcfg["precision"],
                                               runtime.device)
            step += 1
            last_loss = loss_value
            window_loss.append(loss_value)
            window_samples += len(batch["images"]) * runtime.world_size
            state["samples_seen"] = int(state.get("samples_seen", 0)) + len(batch["images"]) * runtime.world_size

            if step == calibrate_at:
                calibration_start = budget_clock()
            elif calibrate_at is not None and step == calibrate_at + CALIBRATION_STEPS:
                assert budget_s is not None
                total_steps = _fit_steps_to_budget(step, CALIBRATION_STEPS, budget_clock() - calibration_start,
                                                   budget_s - budget_spent(),
                                                   runtime)
                calibrate_at, state["total_steps"] = None, total_steps
                fit = {"at_step": step, "total_steps": total_steps}
                state["schedule_fits"] = [*state.get("schedule_fits", []), fit]
                if phrase_vocabulary and phrase_phase is None:
                    phrase_phase = phrase_warmup_steps(tcfg, total_steps)
                refit_at = refit_step() if phrase_vocabulary else None
                if bar is not None:
                    bar.total = total_steps
                    bar.refresh()
            if step == refit_at and step + 2 + CALIBRATION_STEPS < (total_steps or 0):
                calibrate_at = step + 2
            elapsed = budget_spent()
            if step % log_every == 0 or step == total_steps:
                seconds = time.perf_counter() - window_start
                record = {"step": step, "loss": distributed.all_reduce_mean(sum(window_loss) / len(window_loss)),
                          "lr": lr, "samples_per_s": window_samples / max(seconds, 1e-9),
                          "elapsed_s": round(elapsed, 2), **logs}
                if main:
                    _append_metrics(run_dir / "metrics.jsonl", record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
                window_loss, window_samples, window_start = [], 0, time.perf_counter()
            if bar is not None:
                bar.update(1)

            pause_start = time.perf_counter()
            stopping = (budget_s is not None and elapsed >= budget_s) or stop.requested
            stopping = distributed.any_rank(stopping, runtime.device)  # all ranks stop at the same step
            finished = (total_steps is not None and step >= total_steps) or stopping
            if validator is not None and eval_every and step % eval_every == 0 and not finished:
                validation = validator.run(step, run_dir)
            if (ckpt_every and step % ckpt_every == 0) or finished:
                state.update(elapsed_s=elapsed, wall_s=wall_before + time.perf_counter() - run_start,
                             phrase_warmup_steps=phrase_phase,
                             bad_samples=bad.as_dict(), total_steps=total_steps)
                _save(run_dir, step, model, optimizer, state, main)
            window_start += time.perf_counter() - pause_start  # throughput counts training, not checkpoints or eval
            if finished:
                break
    if bar is not None:
        bar.close()
    seconds = wall_before + time.perf_counter() - run_start
    budget_elapsed = budget_spent()
    if validator is not None:
        validation = validator.run(step, run_dir)
    model_dir = run_dir / "model"
    if main:
        model.save_pretrained(model_dir)
        _plot(run_dir)
        summary = {"steps": step, "total_steps": total_steps, "seconds": round(seconds, 2),
                   "clock": tcfg.get("clock") or "wall", "budget_elapsed_s": round(budget_elapsed, 2),
                   "samples_seen": state.get("samples_seen", 0), "final_loss": last_loss,
                   **({"schedule_fits": state["schedule_fits"]} if state.get("schedule_fits") else {}),
                   **({"relation_text_stage": state["relation_text_stage"]}
                      if state.get("relation_text_stage") else {}),
                   "bad_samples": bad.as_dict(), "validation": validation, "stopped_early": stop.requested}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if bad:
            print(f"vlmkit: {bad.summary()}")
    distributed.barrier()
    return TrainResult(run_dir=run_dir, model_dir=model_dir, steps=step, seconds=seconds,
                       samples_per_s=state.get("samples_seen", 0) / max(seconds, 1e-9), final_loss=last_loss,
                       bad_samples=bad.as_dict(), validation=validation)


def _budget_clock(tcfg: dict[str, Any]) -> Any:
    """The clock that train.minutes counts: elapsed time, or this process's CPU time (every thread)."""
    clock = str(tcfg.get("clock") or "wall")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"train.clock must be wall or cpu, not {clock!r}")
    return time.process_time if clock == "cpu" else time.perf_counter


def _fit_steps_to_budget(step: int, timed_steps: int, seconds: float, budget_left_s: float, runtime: Any) -> int:
    """Fit the schedule to what is left of the time budget from the timed steps (agreed across ranks)."""
    per_step = distributed.all_reduce_mean(seconds / timed_steps, runtime.device)
    budget_left_s = distributed.all_reduce_mean(budget_left_s, runtime.device)  # every rank fits the same steps
    return max(step + 1, step + int(budget_left_s / max(per_step, 1e-9)))


def _save(run_dir: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any], main: bool) -> None:
    if main:
        ckpt.save_checkpoint(run_dir, step, model, optimizer, state)
        _plot(run_dir)
    distributed.barrier()


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot(run_dir: Path) -> None:
    from vlmkit.plots import plot_training_curves

    records = read_metrics(run_dir)
    if records:
        plot_training_curves(records, run_dir / "loss_curve.png", title=run_dir.name)


def _progress_bar(enabled: bool, start: int, total: int | None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
