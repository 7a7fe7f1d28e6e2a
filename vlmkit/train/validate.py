"""Validation during training: loss and retrieval on a held-out set, logged to metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlmkit.eval.retrieval import evaluate_retrieval


class Validator:
    """Runs on the main process only; ``run(step)`` returns and logs {val_loss, val/<retrieval metric>...}."""

    def __init__(self, path: str | Path, data_config: dict[str, Any], model: Any, device: torch.device,
                 precision: str, batch_size: int = 256) -> None:
        from vlmkit.train.setup import load_training_samples

        self.samples = load_training_samples(path, data_config)
        self.model = model
        self.device = device
        self.precision = "bf16-mixed" if precision != "fp32" else "fp32"
        self.batch_size = batch_size

    @torch.no_grad()
    def loss(self) -> float:
        from vlmkit.data import ImageTextDataset, expand_captions
        from vlmkit.train.setup import training_collator

        dataset = ImageTextDataset(expand_captions(self.samples), self.model.image_transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size,
                                             collate_fn=training_collator(self.model, self.model.tokenizer))
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch in loader:
            if batch["images"] is None or len(batch["images"]) < 2:
                continue
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision != "fp32"):
                loss = self.model.loss(batch)["loss"]
            total += float(loss) * len(batch["images"])
            count += len(batch["images"])
        self.model.train(was_training)
        return total / max(count, 1)

    def run(self, step: int, run_dir: Path) -> dict[str, float]:
        metrics = {"val_loss": self.loss()}
        if hasattr(self.model, "encode_text"):  # retrieval needs a contrastive model
            retrieval = evaluate_retrieval(self.model, self.samples, batch_size=self.batch_size,
                                           precision=self.precision)
            metrics.update({f"val/{key}": float(value) for key, value in retrieval.items()})
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        return metrics
