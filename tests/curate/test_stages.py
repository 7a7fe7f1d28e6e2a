"""Each curation stage alone, on hand-made sample tables (no pass 1): what it drops, why, and what it keeps."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from vlmkit.curate import SampleTable, apply_stages, pipeline_from_dict
from vlmkit.curate.balance import ClusterBalance, ImageBasedFilter
from vlmkit.curate.clip_score import ClipScore
from vlmkit.curate.dedup import Decontaminate, EmbeddingDedup, ExactDedup, PhashDedup
from vlmkit.curate.features import (image_features, image_format, language_features, perceptual_hash,
                                    text_features)
from vlmkit.curate.stages_image import Decodable, ImageSize
from vlmkit.curate.stages_text import Boilerplate, CaptionLength, Language, RepeatedChars


def make_table(captions=None, n=None, embeddings=None, **columns) -> SampleTable:
    """A table of n decoded samples with the given feature columns (text features from the captions)."""
    n = n or len(captions or next(iter(columns.values())))
    captions = captions or [f"caption number {i}" for i in range(n)]
    data = {"source": np.array(["x.tar"] * n, object), "offset": np.full(n, -1), "size": np.full(n, -1),
            "caption": np.array(captions, object), "decoded": np.ones(n, bool),
            "bad_reason": np.full(n, "", object), "bad_detail": np.full(n, "", object)}
    features = [{**text_features(c), **language_features(c)} for c in captions]
    for name in features[0]:
        values = [f[name] for f in features]
        data[name] = np.array(values, object if isinstance(values[0], str) else None)
    for name, values in columns.items():
        data[name] = np.asarray(values, object if isinstance(values[0], str) else None)
    vectors = None if embeddings is None else np.asarray(embeddings, np.float32)
    return SampleTable([f"s{i}" for i in range(n)], data, vectors)


def drops(stage, table, alive=None, references=None):
    stage.validate()
    alive = np.ones(len(table), bool) if alive is None else alive
    return stage.decide(table, alive, references or {})


def test_caption_length_is_datacomps_basic_rule():
    table = make_table(["two words", "a red circle", "a b c", "ab cd ef", "one two three four five six"])
    result = drops(CaptionLength(), table)  # more than 2 words and more than 5 characters
    assert result == {0: ("too_few_words", "2 words < 3"), 2: ("too_few_chars", "5 characters < 6")}
    assert set(drops(CaptionLength(max_words=4), table)) == {0, 2, 4}
    with pytest.raises(ValueError, match="min_words must be an integer"):
        CaptionLength(min_words=2.5).validate()


def test_repeated_characters_and_boilerplate():
    table = make_table(["a red circle", "wowwwwww a circle", "a---b---c---d", "see www.shop.com now",
                        "IMG_2041.jpg", "a blue square for sale"])
    assert {i: r for i, (r, _) in drops(RepeatedChars(), table).items()} == {1: "character_run",
                                                                             2: "repeated_characters"}
    assert {i: r for i, (r, _) in drops(Boilerplate(), table).items()} == {3: "url", 4: "boilerplate"}
    custom = drops(Boilerplate(urls=False, builtin=False, patterns=[r"for sale"]), table)
    assert list(custom) == [5] and "for sale" in custom[5][1]
    with pytest.raises(ValueError, match="bad pattern"):
        Boilerplate(patterns=["(unclosed"]).validate()


def test_language_identification_keeps_the_wanted_languages():
    table = make_table(["a red circle to the left of a blue square", "un cercle rouge à gauche d'un carré bleu",
                        "ein roter Kreis links von einem blauen Quadrat", ""])
    assert {i: r for i, (r, _) in drops(Language(), table).items()} == {1: "language", 2: "language", 3: "language"}
    assert set(drops(Language(languages=["en", "fr"]), table)) == {2, 3}
    unsure = drops(Language(min_probability=0.99999), table)
    assert unsure[0][0] == "language_unsure"
    with pytest.raises(ValueError, match="languages"):
        Language(languages=[]).validate()


def test_image_size_side_aspect_and_pixels():
    table = make_table(n=4, width=[256, 199, 800, 300], height=[256, 400, 250, 300],
                       pixels=[65536, 79600, 200000, 90000], aspect=[1.0, 2.01, 3.2, 1.0])
    assert {i: r for i, (r, _) in drops(ImageSize(), table).items()} == {1: "too_small", 2: "aspect_ratio"}
    assert set(drops(ImageSize(min_side=None, max_aspect=None, max_pixels=80000), table)) == {2, 3}
    assert drops(ImageSize(min_side=None, max_aspect=None, min_pixels=70000), table)[0][0] == "too_few_pixels"


def test_decodable_drops_what_pass_one_could_not_decode():
    table = make_table(n=3, width=[32, 32, 32])
    table.columns["decoded"][1] = False
    table.columns["bad_reason"][1], table.columns["bad_detail"][1] = "truncated_image", "cut short"
    assert drops(Decodable(), table) == {1: ("truncated_image", "cut short")}


def test_clip_score_threshold_and_top_fraction():
    table = make_table(n=6, clip_score=[0.30, 0.10, np.nan, 0.25, 0.25, 0.05])
    assert set(drops(ClipScore(threshold=0.2), table)) == {1, 2, 5}
    top = drops(ClipScore(top_fraction=0.5), table)  # 3 of 6: 0.30 and the two 0.25s
    assert set(top) == {1, 2, 5} and top[2][0] == "no_clip_score"
    # ties break by input order: the top third keeps 0.30 and the first 0.25
    assert set(drops(ClipScore(top_fraction=1 / 3), table)) == {1, 2, 4, 5}
    alive = np.array([False, True, True, True, True, True])  # only what earlier stages left counts
    assert set(drops(ClipScore(top_fraction=0.4), table, alive)) == {1, 2, 5}
    with pytest.raises(ValueError, match="exactly one"):
        ClipScore().validate()


def test_exact_and_perceptual_dedup_keep_the_first():
    table = make_table(n=5, sha256=["a", "b", "a", "c", "b"],
                       phash=["ffff0000ffff0000", "ffff0000ffff0001", "0000ffff0000ffff", "ffff0000ffff00ff",
                              "0000ffff0000ffff"])
    assert drops(ExactDedup(), table) == {2: ("duplicate", "same bytes as s0"), 4: ("duplicate", "same bytes as s1")}
    near = drops(PhashDedup(max_distance=1), table)
    assert set(near) == {1, 4} and near[1] == ("near_duplicate", "pHash 1 bits from s0")
    assert set(drops(PhashDedup(max_distance=8), table)) == {1, 3, 4}
    alive = np.array([False, True, True, True, True])
    assert set(drops(PhashDedup(max_distance=8), table, alive)) == {3, 4}


def test_embedding_dedup_is_greedy_keep_first():
    angle = np.deg2rad([0.0, 10.0, 20.0, 90.0])  # cos(10 deg) = 0.985, cos(20 deg) = 0.94
    vectors = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    table = make_table(n=4, embeddings=vectors)
    result = drops(EmbeddingDedup(min_similarity=0.95), table)
    assert list(result) == [1] and result[1][0] == "semantic_duplicate"  # s2 is close to s1 only, which went
    assert set(drops(EmbeddingDedup(min_similarity=0.9), table)) == {1, 2}
    with pytest.raises(ValueError, match="needs image embeddings"):
        drops(EmbeddingDedup(), make_table(n=2, width=[1, 2]))


def test_decontamination_against_an_evaluation_set():
    angle = np.deg2rad([0.0, 45.0, 90.0, 180.0])
    pool = make_table(n=4, sha256=["x", "e1", "y", "z"], phash=["0" * 16, "f" * 16, "00000000000000ff", "0f" * 8],
                      embeddings=np.stack([np.cos(angle), np.sin(angle)], axis=1))
    evaluation = make_table(n=2, sha256=["e1", "e2"], phash=["00000000000000f0", "aaaaaaaaaaaaaaaa"],
                            embeddings=[[-1.0, 0.01], [0.0, 1.0]])
    references = {"eval_set": evaluation}
    exact = drops(Decontaminate(eval_set="eval", max_distance=None), pool, references=references)
    assert exact == {1: ("contaminated", "same bytes as eval image s0")}
    hashed = drops(Decontaminate(eval_set="eval", exact=False, max_distance=4), pool, references=references)
    assert set(hashed) == {0, 2}
    embedded = drops(Decontaminate(eval_set="eval", exact=False, max_distance=None, min_similarity=0.99), pool,
                     references=references)
    assert set(embedded) == {2, 3}
    with pytest.raises(ValueError, match="eval_set is required"):
        Decontaminate().validate()


def _clustered(counts: list[int], seed: int = 0) -> np.ndarray:
    """Unit vectors around len(counts) well separated directions, counts[k] of them around direction k."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[: len(counts)]
    vectors = np.concatenate([centres[k] + 0.05 * rng.standard_normal((count, 8)) for k, count in enumerate(counts)])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_cluster_balance_caps_each_cluster():
    vectors = _clustered([30, 5, 5])
    table = make_table(n=40, embeddings=vectors)
    result = drops(ClusterBalance(clusters=3, max_per_cluster=8, seed=0), table)
    assert set(result) == set(range(8, 30)) and result[8][0] == "cluster_full"  # the first 8 of the big one stay
    again = drops(ClusterBalance(clusters=3, max_per_cluster=8, seed=0), table)
    assert again == result


def test_image_based_filter_keeps_clusters_of_reference_images():
    vectors = _clustered([10, 10, 10])
    table = make_table(n=30, embeddings=vectors)
    reference = make_table(n=4, embeddings=_clustered([2, 0, 2], seed=1))  # directions 0 and 2 only
    result = drops(ImageBasedFilter(clusters=3, reference="ref"), table, references={"reference": reference})
    assert set(result) == set(range(10, 20)) and result[10][0] == "off_reference"


def test_stages_run_in_order_and_each_sample_has_one_fate():
    table = make_table(["ok caption here", "no", "ok caption here", "ok caption too"], sha256=["a", "b", "a", "a"])
    pipeline = pipeline_from_dict({"stages": ["caption_length", "exact_dedup"]})
    assert [stage.name for stage in pipeline.stages] == ["decodable", "caption_length", "exact_dedup"]
    decisions = apply_stages(pipeline.stages, table)
    assert list(decisions.kept) == [True, False, False, False]
    assert list(decisions.dropped_by) == ["", "caption_length", "exact_dedup", "exact_dedup"]
    assert [entry["dropped"] for entry in decisions.stages] == [0, 1, 2]
    assert decisions.stages[2]["input"] == 3


def test_pipeline_files_are_checked():
    with pytest.raises(ValueError, match="unknown stage 'clipscore'; stages: decodable, caption_length"):
        pipeline_from_dict({"stages": ["clipscore"]})
    with pytest.raises(ValueError, match="no parameter.* min_word; allowed: min_words, min_chars"):
        pipeline_from_dict({"stages": [{"caption_length": {"min_word": 3}}]})
    with pytest.raises(ValueError, match="listed twice"):
        pipeline_from_dict({"stages": ["exact_dedup", "exact_dedup"]})
    with pytest.raises(ValueError, match="unknown key.* steps"):
        pipeline_from_dict({"steps": []})
    with pytest.raises(ValueError, match="decodable must be the first"):
        pipeline_from_dict({"stages": ["exact_dedup", "decodable"]})
    with pytest.raises(ValueError, match="has no stage 'clip_score'"):
        pipeline_from_dict({"stages": ["exact_dedup"]}, overrides=["clip_score.threshold=0.3"])
    pipeline = pipeline_from_dict({"stages": [{"clip_score": {"top_fraction": 0.3}}]},
                                  overrides=["clip_score.top_fraction=0.5", "model=runs/x"])
    assert pipeline.stages[1].top_fraction == 0.5 and pipeline.model == "runs/x" and pipeline.needs_model


def test_builtin_datacomp_pipeline_needs_its_reference(tmp_path):
    from vlmkit.curate import load_pipeline

    with pytest.raises(ValueError, match="image_based.reference"):
        load_pipeline("datacomp")
    pipeline = load_pipeline("datacomp", [f"image_based.reference={tmp_path}"])
    assert [s.name for s in pipeline.stages][1:] == ["caption_length", "language", "image_size", "exact_dedup",
                                                      "embedding_dedup", "clip_score", "image_based"]
    assert pipeline.stages[6].top_fraction == 0.3 and pipeline.stages[3].min_side == 200
    with pytest.raises(ValueError, match="unknown pipeline 'nope'; built-in pipelines: basic, datacomp"):
        load_pipeline("nope")


def test_features_of_one_sample():
    assert text_features("Hellooo   world!!") == {"words": 2, "chars": 17, "longest_run": 3,
                                                 "repeat_ratio": round(6 / 17, 6), "has_url": False,
                                                 "boilerplate": False}
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((128, 96))
    brighter = ImageEnhance.Brightness(image).enhance(1.05)
    other = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((128, 96))

    def distance(a: Image.Image, b: Image.Image) -> int:
        return bin(int(perceptual_hash(a), 16) ^ int(perceptual_hash(b), 16)).count("1")

    assert distance(image, brighter) <= 4 and distance(image, other) > 16
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    features = image_features(image, buffer.getvalue())
    assert (features["width"], features["height"], features["aspect"], features["format"]) == (128, 96, 1.333333,
                                                                                                "jpg")
    assert image_format(b"RIFF\0\0\0\0WEBPVP8 ") == "webp" and image_format(b"??") == "img"
