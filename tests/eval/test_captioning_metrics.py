"""Captioning metrics: hand-computed cases, agreement with pycocoevalcap's own scorers, and the command."""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from vlmkit.cli import main
from vlmkit.eval import coco_java
from vlmkit.eval.captioning import caption_metrics, evaluate_caption_files
from vlmkit.eval.coco_java import java_ptb_tokenize, ptb_tokenize, simple_ptb_tokenize
from vlmkit.eval.metrics_captioning import bleu_scores, cider_d_scores, rouge_l_scores

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="no java on PATH")

CAPTION_LIKE = [
    "A dog, running on the beach.", "Don't stop -- café \"naïve\" (x) {y} [z] 3.5 U.S. can't", "  ", "",
    "The END!!", "A man's hat isn't red; it's blue: really?", "two red circles and a blue star on a grey background",
    "A group of people standing around a table with food.", "It's 5:30 p.m. and the 1,000 cats' toys are here...",
    "A \"quoted\" word and 'single' quotes", "Mr. Smith's dog won't go cannot go", "a t-shirt and a 3-year-old kid",
    "Wow!!! Is this a cat?!", "A Man Riding A Wave On Top Of A Surfboard .", "I'd say they'll we've you're I'm",
    "rock & roll", "a photo of an orange triangle near the top left of the image", "50% of $5 is a/b",
]


def random_corpus(seed: int, images: int = 150) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Tokenised references (1-5 per image) and predictions drawn from a small vocabulary, with empty sentences."""
    rng = random.Random(seed)
    words = "a the dog cat man red blue circle star on of in with beach two three large small near".split()

    def sentence(low: int = 1) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, 12)))

    references = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(images)}
    predictions = {i: sentence(low=0) if i % 17 else "" for i in references}
    return references, predictions


# ---------------------------------------------------------------- hand-computed cases

def test_bleu_perfect_match_and_brevity_penalty():
    scores, _ = bleu_scores({1: ["a b c d"]}, {1: "a b c d"})
    assert scores == pytest.approx([1.0] * 4, abs=1e-9)
    # every n-gram matches, but 3 words against a 6-word reference: BP = exp(1 - 6/3)
    scores, per_image = bleu_scores({1: ["the cat sat on the mat"]}, {1: "the cat sat"})
    assert scores[:3] == pytest.approx([math.exp(-1)] * 3, abs=1e-9)
    # no 4-gram in a 3-word caption: pycocoevalcap's smoothing gives (1e-15 / 1e-9) ** (1/4), not 0
    assert scores[3] == pytest.approx(math.exp(-1) * (1e-15 / 1e-9) ** 0.25, rel=1e-9)
    assert per_image[1] == pytest.approx(scores)


def test_bleu_closest_reference_length_ties_go_to_the_shorter():
    # a 4-word prediction, references of 3 and 5 words: both 1 away; the 3-word one is taken, so no penalty
    scores, _ = bleu_scores({1: ["a b c", "a b c d e"]}, {1: "a b c d"})
    assert scores[0] == pytest.approx(1.0, abs=1e-9)
    # corpus level: clipped matches and lengths are summed over images before the ratio
    scores, _ = bleu_scores({1: ["a b"], 2: ["c d e f"]}, {1: "a x", 2: "c d e f"})
    assert scores[0] == pytest.approx(5 / 6, abs=1e-9)


def test_rouge_l_by_hand():
    score, per_image = rouge_l_scores({1: ["a x b y c", "q"]}, {1: "a b c"})
    precision, recall = 1.0, 3 / 5
    expected = (1 + 1.44) * precision * recall / (recall + 1.44 * precision)
    assert score == pytest.approx(expected, abs=1e-12) and per_image[1] == score
    assert rouge_l_scores({1: ["a b"]}, {1: "c"})[0] == 0.0


def test_cider_d_by_hand():
    # two images, each predicted exactly: every n-gram has df 1, idf log 2; unigram and bigram cosines are 1,
    # there are no 3- and 4-grams, no length penalty: (1 + 1 + 0 + 0) / 4 * 10
    score, per_image = cider_d_scores({1: ["a b"], 2: ["c d"]}, {1: "a b", 2: "c d"})
    assert score == pytest.approx(5.0, abs=1e-12) and per_image == pytest.approx({1: 5.0, 2: 5.0})
    # one image: idf = log(1) - log(1) = 0, so CIDEr-D is 0 whatever the caption
    assert cider_d_scores({1: ["a b"]}, {1: "a b"})[0] == 0.0
    # the Gaussian penalty counts bigrams: 6 extra words cost exp(-36 / 72)
    long_score, _ = cider_d_scores({1: ["a b"], 2: ["c d"]}, {1: "a b x x x x x x", 2: "c d"})
    assert long_score < score


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="different images"):
        bleu_scores({1: ["a"]}, {2: "a"})
    with pytest.raises(ValueError, match="without reference"):
        caption_metrics({9: "a dog"}, {1: ["a dog"]}, java=False)
    with pytest.raises(ValueError, match="one predicted caption"):
        caption_metrics({1: ["a", "b"]}, {1: ["a dog"]}, java=False)


# ---------------------------------------------------------------- agreement with pycocoevalcap

@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_rouge_cider_match_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    references, predictions = random_corpus(seed)
    theirs_input = {key: [predictions[key]] for key in references}
    bleu, bleu_images = Bleu(4).compute_score(references, theirs_input, verbose=0)
    ours, ours_images = bleu_scores(references, predictions)
    assert max(abs(a - b) for a, b in zip(bleu, ours)) < 1e-12
    assert max(abs(bleu_images[k][i] - ours_images[key][k]) for k in range(4)
               for i, key in enumerate(references)) < 1e-12
    for scorer, ours_function in ((Rouge(), rouge_l_scores), (Cider(), cider_d_scores)):
        theirs, theirs_images = scorer.compute_score(references, theirs_input)
        ours, ours_images = ours_function(references, predictions)
        assert abs(theirs - ours) < 1e-9
        assert max(abs(theirs_images[i] - ours_images[key]) for i, key in enumerate(references)) < 1e-9


@needs_java
def test_ptb_tokenizer_matches_pycocoevalcap_and_the_python_fallback_is_close():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTION_LIKE)})
    ours = java_ptb_tokenize(CAPTION_LIKE)
    assert ours == [theirs[i][0] for i in range(len(CAPTION_LIKE))]
    assert [simple_ptb_tokenize(c) for c in CAPTION_LIKE] == ours
    # a line break inside a caption must not shift the following captions
    assert java_ptb_tokenize(["a dog\nrunning", "Two cats."]) == ["a dog running", "two cats"]
    assert java_ptb_tokenize(["a\r\nb", "c"]) == ["a b", "c"]


@needs_java
def test_meteor_and_the_full_pipeline_match_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    rng = random.Random(3)
    references, predictions = random_corpus(3, images=60)
    raw_refs = {k: [r.capitalize() + rng.choice([".", "!", ",", "", " ."]) for r in v] for k, v in references.items()}
    raw_preds = {k: p.capitalize() + "." for k, p in predictions.items()}
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in raw_refs.items()})
    res = tokenizer.tokenize({k: [{"caption": raw_preds[k]}] for k in raw_refs})
    expected = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    meteor, meteor_images = Meteor().compute_score(gts, res)
    expected.update(METEOR=meteor, ROUGE_L=Rouge().compute_score(gts, res)[0],
                    CIDEr=Cider().compute_score(gts, res)[0])

    result = caption_metrics(raw_preds, raw_refs)
    assert result.tokenizer == "ptb-java" and set(result.unavailable) == {"SPICE"}
    assert set(result.metrics) == set(expected)
    assert max(abs(result.metrics[name] - expected[name]) for name in expected) < 1e-9
    assert max(abs(result.per_image[k]["METEOR"] - meteor_images[i]) for i, k in enumerate(gts)) < 1e-9


def test_without_java_meteor_is_unavailable_and_tokens_come_from_python(monkeypatch):
    monkeypatch.setattr(coco_java.shutil, "which", lambda name: None)
    result = caption_metrics({1: "A dog runs.", 2: "Two cats!"},
                             {1: ["A dog is running.", "a dog runs"], 2: ["two cats sleeping", "Cats."]})
    assert "java" in result.unavailable["METEOR"] and "SPICE" in result.unavailable
    assert result.tokenizer.startswith("python") and result.notes
    assert set(result.metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert result.metrics["Bleu_1"] > 0.5
    tokens, name = ptb_tokenize({1: ["Don't!"]})
    assert tokens == {1: ["do n't"]} and "java" in name


# ---------------------------------------------------------------- files and command

def write_caption_files(folder: Path) -> tuple[Path, Path]:
    annotations = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                              {"id": 3, "file_name": "c.png"}],
                   "annotations": [{"id": 0, "image_id": 1, "caption": "A red circle."},
                                   {"id": 1, "image_id": 1, "caption": "one red circle"},
                                   {"id": 2, "image_id": 2, "caption": "Two blue stars on a grey background."},
                                   {"id": 3, "image_id": 3, "caption": "a green square"}]}
    results = [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "two blue stars"}]
    (folder / "captions.json").write_text(json.dumps(annotations))
    (folder / "results.json").write_text(json.dumps(results))
    return folder / "results.json", folder / "captions.json"


def test_caption_files_are_read_and_scored(tmp_path):
    results, annotations = write_caption_files(tmp_path)
    result = evaluate_caption_files(results, annotations, meteor=False)
    assert result.num_images == 2 and result.num_unscored_images == 1
    assert set(result.per_image) == {"1", "2"}
    # all 6 predicted words match, but the closest references have 3 + 7 words: BP = exp(1 - 10/6)
    assert result.metrics["Bleu_1"] == pytest.approx(math.exp(1 - 10 / 6), rel=1e-9)
    assert result.unavailable["METEOR"] == "not requested"
    (tmp_path / "twice.json").write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1,
                                                                                       "caption": "b"}]))
    with pytest.raises(ValueError, match="more than one caption"):
        evaluate_caption_files(tmp_path / "twice.json", annotations, meteor=False)


def test_captioning_command_end_to_end(tmp_path, capsys):
    results, annotations = write_caption_files(tmp_path)
    code = main(["eval", "captioning", "--results", str(results), "--annotations", str(annotations), "--no-meteor",
                 "--json", "--out", str(tmp_path / "out")])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert record["task"] == "captioning" and record["num_images"] == 2
    assert set(record["metrics"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert "SPICE" in record["unavailable"] and "METEOR" in record["unavailable"]
    assert json.loads((tmp_path / "out/captioning.json").read_text()) == record
    assert set(json.loads((tmp_path / "out/captioning_per_item.json").read_text())) == {"1", "2"}

    assert main(["eval", "captioning", "--results", str(results), "--annotations", str(annotations),
                 "--no-meteor"]) == 0
    table = capsys.readouterr().out
    assert "CIDEr" in table and "SPICE: unavailable" in table and "1 annotated images without a prediction" in table


def test_captioning_command_errors_are_one_line(tmp_path, capsys):
    _, annotations = write_caption_files(tmp_path)
    assert main(["eval", "captioning", "--model", "some-model"]) == 2
    assert "give --annotations" in capsys.readouterr().err
    assert main(["eval", "captioning", "--annotations", str(annotations)]) == 2
    assert "--results" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 7, "caption": "a cat"}]))
    assert main(["eval", "captioning", "--results", str(tmp_path / "bad.json"), "--annotations",
                 str(annotations), "--no-meteor"]) == 2
    assert "without reference captions" in capsys.readouterr().err
