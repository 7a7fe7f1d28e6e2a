"""benchmarks/probes_hardneg.py end to end at a tiny size."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "probes_hardneg.py"
sys.path.insert(0, str(SCRIPT.parent))  # binding_diagnostics is imported in-process
TINY = ["model.vision.image_size=32", "model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2",
        "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.embed_dim=16",
        "tokenizer.vocab_size=300", "train.precision=fp32"]


def test_probes_benchmark_reports_the_targets_and_an_extra_arm_joins_the_finished_round(tmp_path):
    base = [sys.executable, str(SCRIPT), "--minutes", "0.03", "--train-size", "120", "--eval-size", "60",
            "--workdir", str(tmp_path), "--sequential", "--json"]
    for item in TINY:
        base += ["--set", item]
    first = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert set(report["results"]) == {"clip-tiny", "clip-tiny-hardneg"}
    for result in report["results"].values():
        assert "aro_relation" in result["probes"] and 0 <= result["zeroshot_acc1"] <= 1
    assert len(report["targets"]) == 3
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu_capability"]  # results vary with the machine
    import probes_hardneg

    printed = probes_hardneg.table(report).splitlines()
    assert printed[0].startswith("machine: ") and printed[2].split()[0] == "steps"
    assert [int(n) for n in printed[2].split()[1:]] == [report["training"][m]["steps"] for m in probes_hardneg.MODELS]

    # a third arm joins that round: the finished two are scored, not trained again
    weights = {arm: (tmp_path / "runs" / arm / "model" / "model.safetensors").stat().st_mtime_ns
               for arm in ("clip-tiny", "clip-tiny-hardneg")}
    run = subprocess.run(base + ["--reuse", "--arm", "seed1", "train.seed=1", "data.hard_negatives=1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert list(report["results"]) == ["clip-tiny", "clip-tiny-hardneg", "seed1"]
    assert {arm: report["training"][arm]["reused"] for arm in report["training"]} == {
        "clip-tiny": True, "clip-tiny-hardneg": True, "seed1": False}
    for arm, mtime in weights.items():  # the finished arms were scored, not trained again
        assert (tmp_path / "runs" / arm / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    import yaml

    config = yaml.safe_load((tmp_path / "runs" / "seed1" / "config.yaml").read_text())
    assert config["train"]["seed"] == 1 and config["data"]["hard_negatives"] == 1  # its own overrides ...
    assert config["model"]["vision"]["image_size"] == 32  # ... on top of --set's
    assert report["training"]["seed1"]["overrides"] == ["train.seed=1", "data.hard_negatives=1"]
    assert set(report["arm_targets"]) == {"clip-tiny-hardneg", "seed1"} and len(report["arm_targets"]["seed1"]) == 3
    printed = probes_hardneg.table(report)
    assert "seed1" in printed.splitlines()[1] and "[seed1]" in printed
    changed = subprocess.run(base + ["--reuse", "--arm", "seed1", "train.seed=2", "data.hard_negatives=1"],
                             capture_output=True, text=True, timeout=600)  # not what seed1 was trained with
    assert changed.returncode == 2 and "trained with other settings (overrides" in changed.stderr, changed.stderr
    assert json.loads((tmp_path / "runs" / "seed1" / "benchmark_arm.json").read_text())["overrides"][-2:] == [
        "train.seed=1", "data.hard_negatives=1"]


def test_extra_arms_need_names_of_their_own(tmp_path, capsys):
    import probes_hardneg
    import pytest

    for arm, says in ((["clip-tiny"], "its own name"), (["warm-start"], "its own name"), (["a/b"], "its own name"),
                      (["x", "--arm", "x"], "its own name"), (["x", "train.seed"], "is not KEY=VALUE")):
        with pytest.raises(SystemExit) as stopped:
            probes_hardneg.main(["--workdir", str(tmp_path), "--arm", *arm])
        assert stopped.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before any work


def test_probes_benchmark_warm_start_fine_tunes_both_from_one_plain_run(tmp_path):
    command = [sys.executable, str(SCRIPT), "--minutes", "0.05", "--warm-start", "0.05", "--clock", "cpu",
               "--train-size", "120", "--eval-size", "60", "--workdir", str(tmp_path), "--sequential", "--json"]
    for item in TINY:
        command += ["--set", item]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["clock"] == "cpu" and report["warm_start"]["steps"] > 0
    warm = str(tmp_path / "runs" / "warm-start" / "model")
    for model in ("clip-tiny", "clip-tiny-hardneg"):  # both arms start from the warm run (train.init)
        assert warm in (tmp_path / "runs" / model / "config.yaml").read_text()
    assert report["warm_start"]["positions"] == "sincos"
    assert report["warm_start"]["pool"] == "moments"
    warm_config = (tmp_path / "runs" / "warm-start" / "config.yaml").read_text()
    assert "position_init: sincos" in warm_config and "pool: moments" in warm_config
    assert "phrase_heads" in report["results"]["clip-tiny-hardneg"]  # the recipe pre-trains on phrases
    stage = report["training"]["clip-tiny-hardneg"]["relation_text_stage"]  # the recipe's text stage ran first
    assert stage["steps"] >= 1 and "relation_text_stage" not in report["training"]["clip-tiny"]


def test_binding_diagnostics_run_every_check_on_a_tiny_model(tmp_path):
    import binding_diagnostics

    report = binding_diagnostics.main(["--tiny", "--supervised-minutes", "0.02", "--out", str(tmp_path / "b.json")])
    for section, keys in (("joint", {"sentence", "phrase_sum", "phrase_min"}), ("linear", {"binding", "left_of"}),
                          ("supervised", {"steps", "final_loss", "binding", "left_right"})):
        assert keys <= set(report[section])
    assert all(0.0 <= report["joint"][k] <= 1.0 for k in report["joint"])
    assert report["supervised"]["steps"] >= 1 and 0.0 <= report["supervised"]["binding"] <= 1.0
    assert 0.0 <= report["supervised"]["left_right"] <= 1.0 and report["supervised"]["positions"] == "model"


def test_supervised_check_labels_classes_and_clear_sides_and_can_reset_positions():
    import binding_diagnostics
    import torch
    from vlmkit.data.scenes import SceneObject
    from vlmkit.modules.vision import VisionConfig, VisionTransformer, sincos_2d

    left = SceneObject("red", "circle", "large", 0.2, (0.2, 0.5))
    middle = SceneObject("blue", "square", "small", 0.1, (0.5, 0.8))
    assert binding_diagnostics.scene_labels([left, middle]) == [
        "blue square", "blue square@bottom", "red circle", "red circle@left"]
    tower = VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, pool="cls"))
    class_token = tower.positional_embedding[0].detach().clone()
    binding_diagnostics.reset_positions_sincos(tower)
    assert torch.equal(tower.positional_embedding[1:], sincos_2d(4, 32))  # the 16 patches; the class token kept
    assert torch.equal(tower.positional_embedding[0], class_token)


def test_two_object_scenes_are_what_the_checks_assume():
    import binding_diagnostics

    scenes = binding_diagnostics.two_object_scenes(6, 32, seed=0, fixed=("red", "circle", "blue", "square"))
    assert [(s["c1"], s["s1"], s["c2"], s["s2"]) for s in scenes[:2]] == [
        ("red", "circle", "blue", "square"), ("blue", "circle", "red", "square")]
    free = binding_diagnostics.two_object_scenes(20, 32, seed=1)
    assert all(s["c1"] != s["c2"] and s["s1"] != s["s2"] and s["image"].size == (32, 32) for s in free)


def test_head_checks_read_each_towers_phrase_head_and_skip_labels_it_lacks(tmp_path):
    import binding_diagnostics
    from http_latency import TINY_MODEL, build_random_model
    from vlmkit.data.scenes import CLASS_NAMES
    from vlmkit.models.hub import load

    texts = [f"a {name} to the left of a {name}" for name in CLASS_NAMES]
    model = load(build_random_model(tmp_path / "model", texts, TINY_MODEL)).eval()
    items = binding_diagnostics.two_object_scenes(6, int(model.config.vision.image_size), seed=3)
    roles = [f"{name} | {side}" for name in CLASS_NAMES for side in ("left of", "right of")]
    model.set_phrase_labels(list(CLASS_NAMES) + roles)
    report = binding_diagnostics.head_checks(model, items)
    kinds = ("text_binding", "text_roles", "image_binding", "image_left_right")
    assert report["counted"] == dict.fromkeys(kinds, 6) and all(0.0 <= report[kind] <= 1.0 for kind in kinds)
    model.set_phrase_labels(list(CLASS_NAMES))  # no role labels: the role checks have nothing to count
    classes_only = binding_diagnostics.head_checks(model, items)
    assert classes_only["counted"]["text_roles"] == classes_only["counted"]["image_left_right"] == 0
    assert "text_roles" not in classes_only and classes_only["counted"]["text_binding"] == 6
