"""embed, classify, caption, ask and convert: as Python functions and as commands, with any capable model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vlmkit
from vlmkit.apps import classify, embed_image_files, embed_texts, write_embeddings
from vlmkit.capabilities import CapabilityError, capabilities_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from tiny_checkpoints import TEXTS, make_hf_clip, make_hf_siglip, random_images  # noqa: E402


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, timeout=timeout,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"})


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    return make_hf_clip(tmp_path_factory.mktemp("hf_clip"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for index, image in enumerate(random_images(4)):
        image.save(folder / f"image{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_embed_images_skips_and_reports_bad_files_and_matches_encode_image(tiny_run, image_files, tmp_path):
    model = vlmkit.load(tiny_run)
    result = embed_image_files(model, [image_files], batch_size=3)
    assert len(result.ids) == 4 and result.vectors.shape == (4, 16)
    assert result.report.total_skipped == 1
    from PIL import Image

    expected = model.encode_image([Image.open(image_files / "image2.png")])
    row = result.ids.index(str(image_files / "image2.png"))
    np.testing.assert_allclose(result.vectors[row], expected[0].numpy(), atol=1e-6)
    written = write_embeddings(result, tmp_path / "e.npy")
    assert np.load(written[0]).shape == (4, 16) and json.loads(written[1].read_text()) == result.ids
    pq = pytest.importorskip("pyarrow.parquet")
    write_embeddings(result, tmp_path / "e.parquet")
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column("id").to_pylist() == result.ids
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), result.vectors)


def test_embed_texts_in_batches_equals_one_call(tiny_run):
    model = vlmkit.load(tiny_run)
    result = embed_texts(model, TEXTS, batch_size=3)
    np.testing.assert_allclose(result.vectors, model.encode_text(TEXTS).numpy(), atol=1e-6)


def test_classify_softmax_for_clip_and_sigmoid_for_siglip(hf_clip, tmp_path):
    images = random_images(2)
    labels = ["red circle", "blue square", "green star"]
    clip = vlmkit.load(str(hf_clip))
    ranked = classify(clip, images, labels, templates=["{}"], top_k=3)
    for row in ranked:
        assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-5)
        assert [p for _, p in row] == sorted((p for _, p in row), reverse=True)
    best = clip.score(images, labels).argmax(dim=1)
    assert [row[0][0] for row in ranked] == [labels[int(i)] for i in best]
    siglip = vlmkit.load(str(make_hf_siglip(tmp_path / "siglip")))
    ranked = classify(siglip, images, labels, templates=["{}"], top_k=2)
    expected = torch.sigmoid(siglip.logits(images, labels))
    assert len(ranked[0]) == 2
    assert ranked[0][0][1] == pytest.approx(float(expected[0].max()), abs=1e-5)


def test_commands_say_plainly_when_a_model_lacks_the_capability(tiny_run, image_files):
    model = vlmkit.load(tiny_run)
    assert set(capabilities_of(model)) >= {"encode_image", "encode_text", "score", "loss"}
    with pytest.raises(CapabilityError, match="cannot caption images"):
        vlmkit.apps.caption(model, random_images(1))
    result = run_cli("ask", str(image_files / "image0.png"), "what color?", "--model", str(tiny_run))
    assert result.returncode == 2
    assert "cannot answer questions about images" in result.stderr and "ViLT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_embed_and_classify_commands(tiny_run, image_files, tmp_path):
    result = run_cli("embed", "--model", str(tiny_run), "--images", str(image_files), "--out",
                     str(tmp_path / "images.npy"), "--no-progress", "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr
    assert "embedded 4 images" in result.stdout and "skipped 1 sample" in result.stdout
    assert json.loads((tmp_path / "work" / "progress.json").read_text())["finished"]  # resumable job folder
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS))
    result = run_cli("embed", "--model", str(tiny_run), "--texts", str(tmp_path / "texts.txt"), "--out",
                     str(tmp_path / "texts.npy"), "--no-progress")
    assert result.returncode == 0 and np.load(tmp_path / "texts.npy").shape == (len(TEXTS), 16)
    result = run_cli("classify", str(image_files / "image0.png"), str(image_files / "image1.png"), "--model",
                     str(tiny_run), "--labels", "red circle,blue square,green star", "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [len(r["labels"]) for r in records] == [2, 2]
    result = run_cli("classify", str(image_files / "broken.jpg"), "--model", str(tiny_run), "--labels", "a,b")
    assert result.returncode == 2 and "broken.jpg" in result.stderr


def test_convert_hf_to_native_fine_tune_and_back_to_transformers(hf_clip, synth_data, tmp_path):
    native_dir = tmp_path / "native"
    result = run_cli("convert", str(hf_clip), "--to", "native", "--out", str(native_dir))
    assert result.returncode == 0, result.stderr
    converted = vlmkit.load(native_dir)
    reference = vlmkit.load(str(hf_clip))
    pixels = reference.preprocess(random_images(2))
    assert (converted.encode_image(pixels) - reference.encode_image(pixels)).abs().max() <= 1e-4
    # Fine-tune the real (here: tiny random) CLIP with vlmkit's trainer, then hand it back to transformers.
    run_dir = tmp_path / "run"
    result = run_cli("train", "--init", str(native_dir), "--data", str(synth_data / "captions.csv"), "--out",
                     str(run_dir), "--set", "train.steps=2", "--set", "train.batch_size=8", "--set",
                     "train.precision=fp32", "--set", "data.workers=0", "--set", "train.threads=1", "--no-progress",
                     timeout=600)
    assert result.returncode == 0, result.stderr
    tuned = vlmkit.load(run_dir)
    assert not torch.equal(tuned.visual.patch_embed.weight, converted.visual.patch_embed.weight)
    result = run_cli("convert", str(run_dir), "--to", "hf", "--out", str(tmp_path / "hf_back"))
    assert result.returncode == 0, result.stderr
    back = vlmkit.load(str(tmp_path / "hf_back"))
    assert (back.encode_text(TEXTS) - tuned.encode_text(TEXTS)).abs().max() <= 1e-4
    result = run_cli("convert", str(run_dir), "--to", "open_clip", "--out", str(tmp_path / "x.bin"))
    assert result.returncode == 2 and ".safetensors" in result.stderr


def test_evaluation_runs_on_an_external_checkpoint(hf_clip, heldout_data):
    """eval zeroshot / retrieval take any model with the capabilities (here a transformers CLIP, whose
    preprocessing runs in a DataLoader worker process)."""
    from vlmkit.data import load_samples
    from vlmkit.eval.retrieval import evaluate_retrieval
    from vlmkit.eval.zeroshot import evaluate_zeroshot, read_classes

    model = vlmkit.load(str(hf_clip))
    samples = load_samples(str(heldout_data / "captions.csv"))
    result = evaluate_zeroshot(model, samples, read_classes(heldout_data / "classes.txt"), batch_size=16, workers=1)
    assert 0.0 <= result.metrics["acc1"] <= 1.0 and result.num_samples > 0
    metrics = evaluate_retrieval(model, samples, batch_size=16, workers=1)
    assert 0.0 <= metrics["image_retrieval_recall@1"] <= 1.0
