"""ImageTextDataset and collation: determinism, caption choice, bad samples, DataLoader use."""
from __future__ import annotations

import pickle
import random

import pytest
import torch
from data_helpers import encode, noise_image, png_header_only
from PIL import Image

from vlmkit.data import (BadSample, BadSampleReport, Collator, ImageRef, ImageTextDataset,
                         ImageTransform, Sample, collate_image_text, sample_rng, train_bpe)


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    """Four good samples (one CMYK) and one of each bad kind."""
    def file(name: str, data: bytes) -> ImageRef:
        (tmp_path / name).write_bytes(data)
        return ImageRef(str(tmp_path / name))

    good = [Sample(f"good{i}", file(f"g{i}.png", encode(noise_image(40, 30, i))),
                   ["first caption", "second caption", "third caption"], label=f"class{i}")
            for i in range(3)]
    cmyk = Sample("cmyk", file("c.jpg", encode(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), "JPEG")),
                  ["a white square"])
    full = encode(noise_image(40, 30))
    bad = [
        Sample("missing", ImageRef(str(tmp_path / "nope.png")), ["x"]),
        Sample("empty", file("e.png", b""), ["x"]),
        Sample("corrupt", file("x.png", b"garbage" * 20), ["x"]),
        Sample("truncated", file("t.png", full[: len(full) // 2]), ["x"]),
        Sample("bomb", file("b.png", png_header_only(20000, 20000)), ["x"]),
        Sample("nocaption", file("n.png", full), []),
        Sample("blank", file("bl.png", full), ["   "]),
    ]
    return good + [cmyk] + bad


BAD_REASONS = {"missing": "missing_file", "empty": "empty_file", "corrupt": "corrupt_image",
               "truncated": "truncated_image", "bomb": "too_large",
               "nocaption": "missing_caption", "blank": "empty_caption"}


def test_good_item_fields(samples):
    item = ImageTextDataset(samples, ImageTransform(16))[0]
    assert set(item) == {"index", "key", "image", "caption", "question", "label", "converted"}
    assert item["question"] is None  # set only for VQA samples (meta["question"])
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert (item["index"], item["key"], item["label"]) == (0, "good0", "class0")
    assert item["caption"] == "first caption" and item["converted"] == []
    assert ImageTextDataset(samples, ImageTransform(16))[3]["converted"] == ["cmyk"]


def test_every_bad_sample_is_skipped_with_its_reason(samples):
    dataset = ImageTextDataset(samples, ImageTransform(16))
    for index in range(4, len(samples)):
        item = dataset[index]
        assert item == {"index": index, "key": samples[index].key,
                        "bad": BAD_REASONS[samples[index].key]}


def test_error_mode_raises_with_key_reason_and_hint(samples):
    dataset = ImageTextDataset(samples, ImageTransform(16), on_bad_sample="error")
    with pytest.raises(BadSample) as caught:
        dataset[6]
    message = str(caught.value)
    assert "corrupt" in message and "corrupt_image" in message
    assert "use --on-bad-sample skip to skip such samples" in message
    with pytest.raises(ValueError):
        ImageTextDataset(samples, ImageTransform(16), on_bad_sample="ignore")


def test_same_seed_epoch_index_gives_the_same_tensor(samples):
    transform = ImageTransform(16, train=True, crop_scale=(0.3, 1.0))
    first = ImageTextDataset(samples, transform, seed=5)
    second = ImageTextDataset(samples, transform, seed=5)
    first.set_epoch(3)
    second.set_epoch(3)
    a, b = first[1], second[1]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    second.set_epoch(4)
    assert not torch.equal(a["image"], second[1]["image"])
    assert not torch.equal(a["image"], ImageTextDataset(samples, transform, seed=6)[1]["image"])


def test_crop_does_not_depend_on_the_number_of_captions(samples):
    transform = ImageTransform(16, train=True, crop_scale=(0.3, 1.0))
    fewer = [Sample(s.key, s.image, s.captions[:1], s.label) for s in samples]
    assert torch.equal(ImageTextDataset(samples, transform)[2]["image"],
                       ImageTextDataset(fewer, transform)[2]["image"])


def test_train_picks_captions_at_random_eval_takes_the_first_valid(samples):
    train = ImageTextDataset(samples, ImageTransform(16, train=True))
    seen = set()
    for epoch in range(20):
        train.set_epoch(epoch)
        seen.add(train[0]["caption"])
    assert seen == {"first caption", "second caption", "third caption"}
    partly_blank = [Sample("k", samples[0].image, ["  ", "real caption"])]
    assert ImageTextDataset(partly_blank, ImageTransform(16))[0]["caption"] == "real caption"


def test_sample_rng_is_stable_and_distinct():
    assert sample_rng(0, 1, 2).random() == sample_rng(0, 1, 2).random()
    draws = {sample_rng(0, epoch, index).random() for epoch in range(3) for index in range(100)}
    assert len(draws) == 300


def test_collate_drops_bad_items_and_reports_them(samples):
    tokenizer = train_bpe([c for s in samples for c in s.captions] * 3, vocab_size=300)
    dataset = ImageTextDataset(samples, ImageTransform(16))
    batch = collate_image_text([dataset[i] for i in range(len(samples))], tokenizer, 12)
    assert batch["images"].shape == (4, 3, 16, 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 12)
    assert batch["indices"].tolist() == [0, 1, 2, 3]
    assert batch["keys"] == ["good0", "good1", "good2", "cmyk"]
    assert batch["labels"] == ["class0", "class1", "class2", None]
    assert batch["captions"][3] == "a white square"
    assert sorted(batch["bad"]) == sorted(BAD_REASONS.items())
    assert batch["converted"] == [("cmyk", "cmyk")]
    report = BadSampleReport()
    report.update_from_batch(batch)
    assert report.total_skipped == 7 and report.converted == {"cmyk": 1}


def test_all_bad_batch_has_no_images(samples):
    dataset = ImageTextDataset(samples, ImageTransform(16))
    batch = Collator(None)([dataset[4], dataset[5]])
    assert batch["images"] is None and batch["keys"] == [] and len(batch["indices"]) == 0
    assert batch["bad"] == [("missing", "missing_file"), ("empty", "empty_file")]
    assert "input_ids" not in batch


def test_dataloader_workers_give_the_same_batches(samples):
    tokenizer = train_bpe(["first caption", "second caption", "a white square"] * 3, 300)
    collator = pickle.loads(pickle.dumps(Collator(tokenizer, 8)))
    dataset = ImageTextDataset(samples, ImageTransform(16, train=True), seed=1)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                             collate_fn=collator)
        batches.append(list(loader))
    for serial, parallel in zip(*batches):
        assert serial["keys"] == parallel["keys"] and serial["bad"] == parallel["bad"]
        if serial["images"] is not None:
            assert torch.equal(serial["images"], parallel["images"])
            assert torch.equal(serial["input_ids"], parallel["input_ids"])


def test_error_mode_through_dataloader_worker_keeps_the_reason(samples):
    dataset = ImageTextDataset(samples[6:7], ImageTransform(16), on_bad_sample="error")
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1,
                                         collate_fn=Collator())
    iterator = iter(loader)
    try:
        next(iterator)
        fields = None
    except BadSample as error:
        fields = (error.reason, error.key, error.detail, str(error))
    finally:
        # torch's re-raised exception sits in a reference cycle with the iterator; left to the
        # garbage collector, its worker shutdown waits out a 5 s timeout. Shut down now.
        iterator._shutdown_workers()
    # torch rebuilds the exception from its traceback text; the fields are read back from it.
    assert fields is not None
    assert fields[:3] == ("corrupt_image", "corrupt", "not a recognised image format")
    assert fields[3].endswith("use --on-bad-sample skip to skip such samples")
    assert "\n" not in fields[3]


def test_unseeded_train_transform_leaves_global_rng_alone(samples):
    state = random.getstate()
    ImageTextDataset(samples, ImageTransform(16, train=True))[0]
    assert random.getstate() == state
