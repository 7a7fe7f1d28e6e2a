"""Relation pre-training of the text tower (``train.relation_text_steps``): before anything else, the text tower
and its phrase head alone learn the phrase labels of the training texts that state a spatial relation ("a red
circle to the left of a blue square" -> ``red circle | left of``, ``blue square | right of``).

Which noun phrase is the subject of "left of" is learnt quickly from such sentences alone, and hardly at all when
they come mixed with the other captions (benchmarks/README.md, eighth and ninth rounds): on the built-in scenes,
1,200 text steps of batch 64 on relation sentences (3.5 CPU-minutes) taught the roles (1.00), which ~730 steps of
half relation sentences, half other captions had not (0.51). A text step costs a fraction of an image-text step, so
the stage is cheap; its time counts in a ``train.minutes`` budget, and it stops early when that runs out.

The texts are the samples' captions and, on the built-in scenes with ``data.scene_phrases``, their scenes'
statements (:func:`vlmkit.data.phrases.scene_statements`), each kept when one of its labels is a relation role in
the phrase vocabulary. The stage has its own AdamW (the run's betas, eps and weight decay) and schedule (linear
warmup, cosine decay, peak ``train.lr``), dropped when it ends, so the run's optimizer starts as it would have.
Under torchrun every rank draws its own texts and the gradients are averaged.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from vlmkit import distributed
from vlmkit.train.optim import learning_rate, parameter_groups, set_learning_rate
from vlmkit.train.setup import autocast


def relation_texts(samples: list[Any], vocabulary: list[str]) -> list[tuple[str, list[int]]]:
    """The distinct texts of ``samples`` (captions, then ``meta["statements"]``) that have a relation-role label in
    ``vocabulary``, each with the indices of all its labels there, in first-seen order."""
    from vlmkit.data.decode import BadSample, decode_caption
    from vlmkit.data.phrases import ROLE_MARK, phrase_labels

    index = {label: k for k, label in enumerate(vocabulary)}
    found: dict[str, list[int]] = {}
    for sample in samples:
        for raw in [*sample.captions, *sample.meta.get("statements", [])]:
            try:
                text = decode_caption(raw)[0]  # the dataset's decoding: bytes, odd encodings, whitespace
            except BadSample:  # empty: the dataset reports it
                continue
            if text in found:
                continue
            labels = [label for label in phrase_labels(text) if label in index]
            if any(ROLE_MARK in label for label in labels):
                found[text] = [index[label] for label in labels]
    return list(found.items())


def run_relation_text_stage(model: Any, samples: list[Any], tcfg: dict[str, Any], device: torch.device,
                            seed: int, progress: bool = True,
                            out_of_time: Callable[[], bool] | None = None) -> dict[str, Any]:
    """``train.relation_text_steps`` steps of the text tower and its phrase head on :func:`relation_texts` (batch
    ``train.batch_size``, precision ``train.precision``, gradients clipped at ``train.grad_clip``), or fewer when
    ``out_of_time()`` (the run's time budget; asked after each step, agreed across ranks) says so. Returns what it
    did: ``steps`` (taken), ``texts``, ``first_loss``, ``final_loss``, ``seconds``, and ``out_of_time`` when it
    stopped early."""
    steps = int(tcfg.get("relation_text_steps") or 0)
    heads = getattr(model, "phrase_heads", None)
    if heads is None:
        raise ValueError("train.relation_text_steps pre-trains the text tower's phrase head: set data.phrase_labels "
                         "(e.g. 512) too, on a contrastive model (clip, siglip)")
    texts = relation_texts(samples, list(model.config.phrase_labels))
    if not texts:
        raise ValueError("train.relation_text_steps: no training text states a spatial relation between two "
                         "described objects (\"a red circle to the left of a blue square\") in the phrase "
                         "vocabulary; set train.relation_text_steps=0")
    start = time.perf_counter()
    tower, head = model.text, heads["text"]
    parts = torch.nn.ModuleDict({"text": tower, "head": head})
    groups = parameter_groups(parts, float(tcfg["weight_decay"]))
    if not any(group["params"] for group in groups):
        raise ValueError("train.relation_text_steps: the text tower is frozen; unfreeze it (train.freeze) or set "
                         "train.relation_text_steps=0")
    optimizer = torch.optim.AdamW(groups, lr=float(tcfg["lr"]), betas=tuple(float(b) for b in tcfg["betas"]),
                                  eps=float(tcfg["eps"]))
    params = [p for group in groups for p in group["params"]]
    batch_size = min(int(tcfg["batch_size"]), len(texts))
    warm = float(tcfg.get("warmup") or 0)  # train.warmup in steps, or a fraction of the stage's; at most a fifth
    warmup = min(int(round(warm * steps)) if warm < 1 else int(warm), steps // 5)
    clip = float(tcfg.get("grad_clip") or 0.0)
    rng = random.Random(seed * 1000 + distributed.rank())
    width = len(model.config.phrase_labels)
    world = distributed.world_size()
    first_loss = final_loss = math.nan
    bar = None
    if progress and distributed.is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc="relation text", dynamic_ncols=True, mininterval=1.0)
    parts.train()
    taken, stopped = 0, False
    for step in range(steps):
        chosen = rng.sample(range(len(texts)), batch_size)
        targets = torch.zeros(batch_size, width)
        for row, k in enumerate(chosen):
            targets[row, texts[k][1]] = 1.0
        ids, mask = model.tokenize([texts[k][0] for k in chosen])
        longest = int(mask.sum(dim=1).max())
        ids, mask = ids[:, :longest].to(device), mask[:, :longest].to(device)
        set_learning_rate(optimizer, learning_rate(step, steps, float(tcfg["lr"]), warmup))
        optimizer.zero_grad(set_to_none=True)
        with autocast(str(tcfg["precision"]), device):
            logits = head(tower(ids, mask))
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.to(device))
        loss.backward()
        if world > 1:  # the ranks' gradients averaged, as DDP would
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
        optimizer.step()
        final_loss = float(loss.detach())
        first_loss = final_loss if step == 0 else first_loss
        taken = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{final_loss:.4f}")
        if out_of_time is not None and taken < steps:
            stopped = distributed.any_rank(out_of_time(), device)  # all ranks stop at the same step
            if stopped:
                break
    if bar is not None:
        bar.close()
    return {"steps": taken, "texts": len(texts), "first_loss": first_loss, "final_loss": final_loss,
            "seconds": round(time.perf_counter() - start, 2), **({"out_of_time": True} if stopped else {})}
