"""Where does a contrastive model lose attribute binding and spatial relations: the image side, the text side, or
the objective? Checks on two-object built-in scenes (distinct colours, distinct shapes), rendered here:

    PYTHONPATH=. .venv/bin/python benchmarks/binding_diagnostics.py --model runs/clip [--supervised-minutes 8
        [--supervised-positions sincos]] [--json]

1. ``joint``: 2-way accuracy of the model's own scores: "a red circle and a blue square" against "a blue circle and
   a red square" (the sentence), and the same with each object phrase scored on its own (sum of the two phrases'
   scores; min of them) - if the phrases fail too, the image embedding holds a bag of colours and shapes.
2. ``linear``: a logistic-regression probe (5-fold) on the frozen image embeddings of one fixed pair of classes:
   "red circle + blue square" against "blue circle + red square" (binding), and "the circle is left of the square"
   (relation). High means the information is in the embedding, whatever the text side does with it.
3. ``supervised`` (``--supervised-minutes``, CPU time): the model's vision tower fine-tuned with a multi-hot head
   (binary cross-entropy) on which colour-shape classes are present and on which side of the image each is, on
   multi-object scenes; then the binding test and a left/right test with the head's logits - whether the
   architecture can learn binding and layout at all in that budget (``--supervised-positions sincos``: from
   sine-cosine position codes instead of the model's own).
4. ``heads`` (a model trained with phrase pre-training, ``data.phrase_labels``): the same binding test, relation
   roles and left/right read by each tower's own phrase head - did the towers learn their labels?

``--tiny``: the tests' tiny model and a few scenes, to check the script in seconds.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent),) if p not in sys.path]


def _article(words: str) -> str:
    from vlmkit.data.scenes import article

    return f"{article(words)} {words}"


def two_object_scenes(count: int, image_size: int, seed: int, fixed: tuple[str, str, str, str] | None = None
                      ) -> list[dict[str, Any]]:
    """``count`` scenes of two objects with distinct colours and shapes: {image, c1, s1, c2, s2, left} where
    ``left`` says whether object 1 is left of object 2. ``fixed`` = (c1, s1, c2, s2) alternates with its swap."""
    from vlmkit.data import scenes

    rng, picker = np.random.default_rng(seed), random.Random(seed)
    out = []
    for k in range(count):
        objects = scenes.layout_multi(rng)[:2]
        if fixed is None:
            c1, c2 = picker.sample(list(scenes.COLORS), 2)
            s1, s2 = picker.sample(list(scenes.SHAPES), 2)
        else:
            c1, s1, c2, s2 = fixed if k % 2 == 0 else (fixed[2], fixed[1], fixed[0], fixed[3])
        objects[0].color, objects[0].shape, objects[1].color, objects[1].shape = c1, s1, c2, s2
        image, _ = scenes.render(objects, np.random.default_rng(seed * 100_003 + k), image_size)
        out.append({"image": image, "c1": c1, "s1": s1, "c2": c2, "s2": s2,
                    "left": objects[0].center[0] < objects[1].center[0]})
    return out


@torch.no_grad()
def joint_checks(model: Any, items: list[dict[str, Any]]) -> dict[str, float]:
    def unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.float(), dim=-1)

    images = unit(model.encode_image([item["image"] for item in items]))

    def score(texts: list[str]) -> torch.Tensor:
        return (images * unit(model.encode_text(texts))).sum(-1)

    true_1 = [_article(f"{i['c1']} {i['s1']}") for i in items]
    true_2 = [_article(f"{i['c2']} {i['s2']}") for i in items]
    false_1 = [_article(f"{i['c2']} {i['s1']}") for i in items]
    false_2 = [_article(f"{i['c1']} {i['s2']}") for i in items]
    sentence = score([f"{a} and {b}" for a, b in zip(true_1, true_2)]) > score(
        [f"{a} and {b}" for a, b in zip(false_1, false_2)])
    t1, t2, f1, f2 = score(true_1), score(true_2), score(false_1), score(false_2)
    return {"sentence": float(sentence.float().mean()), "phrase_sum": float(((t1 + t2) > (f1 + f2)).float().mean()),
            "phrase_min": float((torch.minimum(t1, t2) > torch.minimum(f1, f2)).float().mean())}


@torch.no_grad()
def linear_checks(model: Any, items: list[dict[str, Any]], folds: int = 5) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    features = torch.cat([model.encode_image([i["image"] for i in items[start:start + 100]]).float()
                          for start in range(0, len(items), 100)])
    features = torch.nn.functional.normalize(features, dim=-1).numpy()
    binding = [int(i["c1"] == items[0]["c1"]) for i in items]
    left = [int(i["left"]) for i in items]
    probe = LogisticRegression(C=10.0, max_iter=3000)
    return {"binding": float(cross_val_score(probe, features, binding, cv=folds).mean()),
            "left_of": float(cross_val_score(probe, features, left, cv=folds).mean())}


@torch.no_grad()
def head_checks(model: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A model with phrase heads (``data.phrase_labels``): does each tower's own head read what phrase pre-training
    taught it? Text: "a red circle and a blue square" (its bound classes above the colour-swapped ones) and "a red
    circle to the left of a blue square" (``red circle | left of`` + ``blue square | right of`` above the reverse);
    image: the same bound classes, and which object is left of the other. Items whose labels are not in the
    vocabulary are skipped (``counted``)."""
    index = {label: k for k, label in enumerate(model.config.phrase_labels)}
    sums: dict[str, list[int]] = {"text_binding": [], "text_roles": [], "image_binding": [], "image_left_right": []}

    def better(logits: torch.Tensor, kind: str, true: tuple[str, str], false: tuple[str, str]) -> None:
        if all(label in index for label in (*true, *false)):
            sums[kind].append(int(logits[index[true[0]]] + logits[index[true[1]]]
                                  > logits[index[false[0]]] + logits[index[false[1]]]))
    for item in items:
        one, two = f"{item['c1']} {item['s1']}", f"{item['c2']} {item['s2']}"
        swapped = (f"{item['c2']} {item['s1']}", f"{item['c1']} {item['s2']}")
        ids, mask = model.tokenize([f"{_article(one)} and {_article(two)}", f"{_article(one)} to the left of "
                                    f"{_article(two)}"])
        text = model.phrase_heads["text"](model.text(ids.to(model.device), mask.to(model.device))).float()
        better(text[0], "text_binding", (one, two), swapped)
        better(text[1], "text_roles", (f"{one} | left of", f"{two} | right of"),
               (f"{two} | left of", f"{one} | right of"))
        pixels = model.image_transform(item["image"])[None].to(model.device, model.dtype)
        image = model.phrase_heads["image"](model.visual(pixels))[0].float()
        better(image, "image_binding", (one, two), swapped)
        left, right = (one, two) if item["left"] else (two, one)
        better(image, "image_left_right", (f"{left} | left of", f"{right} | right of"),
               (f"{right} | left of", f"{left} | right of"))
    report: dict[str, Any] = {kind: sum(values) / len(values) for kind, values in sums.items() if values}
    report["counted"] = {kind: len(values) for kind, values in sums.items()}
    return report


SIDES = ("left", "right", "top", "bottom")


def scene_labels(objects: list[Any]) -> list[str]:
    """What the supervised check's head learns of a scene: each colour-shape class present, and each object's class
    with the side of the image it is clearly on ("red circle@left": centre in the left 40%; likewise the others)."""
    labels = set()
    for obj in objects:
        x, y = obj.center
        sides = [side for side, clear in zip(SIDES, (x < 0.4, x > 0.6, y < 0.4, y > 0.6)) if clear]
        labels |= {obj.name, *(f"{obj.name}@{side}" for side in sides)}
    return sorted(labels)


def reset_positions_sincos(tower: Any) -> None:
    """Overwrite a vision tower's patch position embeddings with the 2-D sine-cosine codes (still learned after)."""
    from vlmkit.modules.vision import sincos_2d

    config = tower.config
    grid = config.image_size // config.patch_size
    with torch.no_grad():
        tower.positional_embedding[-grid * grid:] = sincos_2d(grid, config.width).to(tower.positional_embedding)


def supervised_check(model: Any, minutes: float, test_items: list[dict[str, Any]], image_size: int,
                     batch_size: int = 64, seed: int = 0, positions: str = "model") -> dict[str, float]:
    """The vision tower (a copy) fine-tuned with a multi-hot head over :func:`scene_labels` (binary cross-entropy)
    on multi-object scenes for ``minutes`` of CPU time; then, with the head's logits on the two-object test scenes,
    ``binding`` (true classes above the colour-swapped ones) and ``left_right`` (the left object's class on the
    left and the other on the right, above the reverse). ``positions="sincos"`` first resets the copy's position
    embeddings to sine-cosine codes."""
    from vlmkit.data import scenes

    tower = copy.deepcopy(model.visual).train()
    if positions == "sincos":
        reset_positions_sincos(tower)
    transform = model.image_transform
    names = sorted(set(scenes.CLASS_NAMES) | {f"{name}@{side}" for name in scenes.CLASS_NAMES for side in SIDES})
    classes = {name: index for index, name in enumerate(names)}
    with torch.no_grad():
        width = tower(transform(test_items[0]["image"])[None]).shape[-1]
    head = torch.nn.Linear(width, len(classes))
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=3e-4, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    started, steps, loss = time.process_time(), 0, float("nan")
    while time.process_time() - started < minutes * 60:
        pixels, targets = [], torch.zeros(batch_size, len(classes))
        for row in range(batch_size):
            objects = scenes.layout_multi(rng)
            image, _ = scenes.render(objects, rng, image_size)
            pixels.append(transform(image))
            for label in scene_labels(objects):
                targets[row, classes[label]] = 1.0
        logits = head(tower(torch.stack(pixels).to(model.dtype))).float()
        step_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
        steps, loss = steps + 1, float(step_loss.detach())
    tower.eval()
    bound = placed = 0
    with torch.no_grad():
        for item in test_items:
            logits = head(tower(transform(item["image"])[None].to(model.dtype)))[0].float()

            def pair(first: str, second: str) -> float:
                return float(logits[classes[first]] + logits[classes[second]])
            one, two = f"{item['c1']} {item['s1']}", f"{item['c2']} {item['s2']}"
            bound += int(pair(one, two) > pair(f"{item['c2']} {item['s1']}", f"{item['c1']} {item['s2']}"))
            left, right = (one, two) if item["left"] else (two, one)
            placed += int(pair(f"{left}@left", f"{right}@right") > pair(f"{right}@left", f"{left}@right"))
    return {"steps": steps, "final_loss": round(loss, 4), "binding": bound / len(test_items),
            "left_right": placed / len(test_items), "positions": positions}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a trained contrastive model or run folder (required unless --tiny)")
    parser.add_argument("--scenes", type=int, default=400, help="two-object test scenes per check")
    parser.add_argument("--supervised-minutes", type=float, default=0.0,
                        help="CPU minutes of the supervised multi-hot check (0: skip it)")
    parser.add_argument("--supervised-positions", choices=("model", "sincos"), default="model",
                        help="the supervised check's position embeddings: the model's own, or reset to 2-D "
                             "sine-cosine codes first (does layout need a better start?)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        import tempfile

        from http_latency import TINY_MODEL, build_random_model

        model_dir = Path(tempfile.mkdtemp()) / "model"
        build_random_model(model_dir, ["a red circle and a blue square", "a green star"] * 5, TINY_MODEL)
        args.model, args.scenes = str(model_dir), min(args.scenes, 20)
    if not args.model:
        parser.error("--model is required (or --tiny)")
    from vlmkit.models.hub import load

    model = load(args.model).eval()
    size = int(model.config.vision.image_size)
    report: dict[str, Any] = {"model": args.model, "scenes": args.scenes}
    report["joint"] = joint_checks(model, two_object_scenes(args.scenes, size, seed=11))
    report["linear"] = linear_checks(model, two_object_scenes(args.scenes, size, seed=12,
                                                              fixed=("red", "circle", "blue", "square")),
                                     folds=5 if args.scenes >= 50 else 2)
    if getattr(model, "phrase_heads", None) is not None:
        report["heads"] = head_checks(model, two_object_scenes(args.scenes, size, seed=14))
    if args.supervised_minutes > 0:
        report["supervised"] = supervised_check(model, args.supervised_minutes,
                                                two_object_scenes(args.scenes, size, seed=13), size,
                                                positions=args.supervised_positions)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else "\n".join(
        f"{section:11} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        for section, values in report.items() if isinstance(values, dict)))
    return report


if __name__ == "__main__":
    main()
