"""VQA accuracy: normalisation, the leave-one-out rule by hand, agreement with the official script's logic,
the file readers and the command."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from vlmkit.cli import main
from vlmkit.eval.metrics_vqa import (normalize_answer, process_digit_article, process_punctuation,
                                     question_accuracy, vqa_accuracy)
from vlmkit.eval.vqa import evaluate_vqa_files, load_vqa_ground_truth, read_vqa_results


# ---------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("a dog.", "dog"), ("dont", "don't"), ("none", "0"), ("The Cat!", "cat"), ("ten", "10"),
    ("yes/no", "yes no"), ("3.5", "3.5"), ("1,000", "1000"), ("hello, world", "hello world"),
    ("  an apple\t", "apple"), ("isnt", "isn't"), ("it's", "it's"), ("red, white", "red white"),
    ("right-handed", "right handed"), ("#1", "#1"), ("a.b.c.", "abc"),
])
def test_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_punctuation_rules_follow_vqa_eval():
    # a mark beside a space is deleted, elsewhere replaced by a space; a digit,digit comma deletes them all
    assert process_punctuation("yes - no") == "yes  no"
    assert process_punctuation("x-y, 1,2") == "xy 12"
    # the periodStrip typo: any "." not followed by a digit goes, even after a digit
    assert process_punctuation("2. 3.5") == "2 3.5"
    assert process_digit_article("The Two Dogs") == "2 dogs"


# ---------------------------------------------------------------- the accuracy rule by hand

@pytest.mark.parametrize("agreeing, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy(agreeing, expected):
    # k of 10 annotators gave the prediction: leaving out one of them leaves k-1 matches, another leaves k
    answers = ["cat"] * agreeing + ["dog", "bird", "fish", "cow", "pig", "hen", "owl", "elk", "emu", "yak"][agreeing:]
    assert question_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_normalisation_only_when_the_annotators_disagree():
    # all ten identical: the prediction is only stripped, so case and punctuation count
    assert question_accuracy("yes", ["yes"] * 10) == 1.0
    assert question_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0
    assert question_accuracy("two", ["2"] * 10) == 0.0
    # mixed answers: both sides normalised
    assert question_accuracy("YES", ["yes"] * 9 + ["Yes!"]) == 1.0
    assert question_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert question_accuracy("a dog.", ["dog", "Dog", "the dog", "cat", "cat", "cat", "cat", "cat", "cat",
                                        "cat"]) == pytest.approx(0.9)


def test_overall_and_per_type_breakdown():
    answers = {1: ["yes"] * 10, 2: ["no"] * 10, 3: ["2"] * 10, 4: ["red"] * 2 + ["blue"] * 8}
    predictions = {1: "yes", 2: "yes", 3: "2", 4: "red"}
    scores = vqa_accuracy(predictions, answers, answer_types={1: "yes/no", 2: "yes/no", 3: "number", 4: "other"},
                          question_types={1: "is the", 2: "is the", 3: "how many", 4: "what color is the"})
    assert scores.per_question == pytest.approx({1: 100.0, 2: 0.0, 3: 100.0, 4: 60.0})
    assert scores.metrics["accuracy"] == pytest.approx(65.0)
    assert scores.metrics["accuracy_per_answer_type"] == pytest.approx({"number": 100.0, "other": 60.0,
                                                                         "yes/no": 50.0})
    assert scores.metrics["accuracy_per_question_type"]["is the"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="without ground-truth"):
        vqa_accuracy({9: "x"}, answers)


# ---------------------------------------------------------------- agreement with the official script's logic

class OfficialVQAEval:
    """The accuracy loop of GT-Vision-Lab's vqaEval.py (current master), transcribed statement by statement:
    mutable answer dicts, whole-dict comparison to leave one annotator out, rounding left out."""

    def __init__(self) -> None:
        from vlmkit.eval import metrics_vqa as m

        self.contractions, self.manualMap, self.articles = m.CONTRACTIONS, dict(m.NUMBER_WORDS), ["a", "an", "the"]
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = list(m.PUNCTUATION)

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) is not None):
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        return self.periodStrip.sub("", outText, re.UNICODE)

    def processDigitArticle(self, inText):
        outText = []
        for word in inText.lower().split():
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return " ".join(outText)

    def accuracy(self, gts: dict, res: dict) -> dict:
        accQA = []
        for quesId in gts:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ansDic["answer"].replace("\n", " ").replace("\t", " ").strip()
            resAns = res[quesId]["answer"].replace("\n", " ").replace("\t", " ").strip()
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]
            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                    ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
                resAns = self.processDigitArticle(self.processPunctuation(resAns))
            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                gtAcc.append(min(1, float(len(matchingAns)) / 3))
            accQA.append(float(sum(gtAcc)) / len(gtAcc))
        return {"overall": 100 * float(sum(accQA)) / len(accQA), "per_question": accQA}


def random_vqa(seed: int, questions: int = 400) -> tuple[dict, dict]:
    rng = random.Random(seed)
    pool = ["yes", "Yes", "no", "2", "two", "Two.", "a dog", "dog", "the dog!", "red", "red/white", "1,000", "1000",
            "dont", "don't", "none", "0", "3.5", "left-hand", "(left)", " yes\t", "it's", "a b c", "?"]
    answers, predictions = {}, {}
    for question_id in range(questions):
        if rng.random() < 0.3:
            answers[question_id] = [rng.choice(pool)] * 10
        else:
            choices = rng.sample(pool, rng.randint(2, 5))
            answers[question_id] = [rng.choice(choices) for _ in range(10)]
        predictions[question_id] = rng.choice(pool)
    return answers, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_official_script(seed):
    answers, predictions = random_vqa(seed)
    gts = {q: {"answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                           for i, a in enumerate(values)]} for q, values in answers.items()}
    official = OfficialVQAEval().accuracy(gts, {q: {"answer": a} for q, a in predictions.items()})
    ours = vqa_accuracy(predictions, answers)
    assert ours.metrics["accuracy"] == official["overall"]  # same operations in the same order: exact
    assert [ours.per_question[q] / 100 for q in answers] == pytest.approx(official["per_question"], abs=1e-12)
    assert 0 < official["overall"] < 100


# ---------------------------------------------------------------- files and command

def write_vqa_files(folder: Path) -> dict[str, Path]:
    (folder / "val2014").mkdir()
    (folder / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"jpeg")
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 42000},
        {"image_id": 42, "question": "How many people?", "question_id": 42001},
        {"image_id": 42, "question": "Is it raining?", "question_id": 42002}]}

    def annotation(qid, answers, qtype, atype):
        return {"question_id": qid, "image_id": 42, "question_type": qtype, "answer_type": atype,
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(answers)]}

    annotations = {"annotations": [
        annotation(42000, ["red"] * 8 + ["Red", "dark red"], "what color is the", "other"),
        annotation(42001, ["2"] * 3 + ["3"] * 7, "how many", "number"),
        annotation(42002, ["no"] * 10, "is it", "yes/no")]}
    results = [{"question_id": 42000, "answer": "Red."}, {"question_id": 42001, "answer": "two"}]
    paths = {"questions": folder / "questions.json", "annotations": folder / "annotations.json",
             "results": folder / "results.json"}
    for name, data in (("questions", questions), ("annotations", annotations), ("results", results)):
        paths[name].write_text(json.dumps(data))
    return paths


def test_vqa_files_are_read_and_scored(tmp_path):
    paths = write_vqa_files(tmp_path)
    result = evaluate_vqa_files(paths["results"], paths["annotations"], paths["questions"])
    # "Red." -> "red": 9 of 10 agree -> 1.0; "two" -> "2": 3 of 10 -> 0.9
    assert result.per_question == pytest.approx({42000: 100.0, 42001: 90.0})
    assert result.metrics["accuracy"] == pytest.approx(95.0)
    assert result.num_questions == 2 and result.num_unanswered == 1
    ground_truth = load_vqa_ground_truth(paths["annotations"], paths["questions"])
    assert ground_truth[0].image.path == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert ground_truth[0].question == "What color is the bus?"
    # without the questions file the annotations alone suffice; string ids in results also match
    (tmp_path / "strings.json").write_text(json.dumps([{"question_id": "42002", "answer": "no"}]))
    assert evaluate_vqa_files(tmp_path / "strings.json", paths["annotations"]).metrics["accuracy"] == 100.0


def test_vqa_results_are_checked(tmp_path):
    paths = write_vqa_files(tmp_path)
    (tmp_path / "twice.json").write_text(json.dumps([{"question_id": 1, "answer": "a"}] * 2))
    with pytest.raises(ValueError, match="answered twice"):
        read_vqa_results(tmp_path / "twice.json")
    (tmp_path / "unknown.json").write_text(json.dumps([{"question_id": 7, "answer": "a"}]))
    with pytest.raises(ValueError, match="no annotated answers"):
        evaluate_vqa_files(tmp_path / "unknown.json", paths["annotations"])
    (tmp_path / "dict.json").write_text(json.dumps({"42000": "red"}))
    with pytest.raises(ValueError, match="JSON list"):
        read_vqa_results(tmp_path / "dict.json")


def test_vqa_command_end_to_end(tmp_path, capsys):
    paths = write_vqa_files(tmp_path)
    code = main(["eval", "vqa", "--results", str(paths["results"]), "--questions", str(paths["questions"]),
                 "--annotations", str(paths["annotations"]), "--json", "--out", str(tmp_path / "out")])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert record["task"] == "vqa" and record["metrics"]["accuracy"] == pytest.approx(95.0)
    assert record["metrics"]["accuracy_per_answer_type"] == pytest.approx({"number": 90.0, "other": 100.0})
    assert record["num_questions"] == 2 and record["num_unanswered"] == 1
    assert json.loads((tmp_path / "out/vqa.json").read_text()) == record
    assert json.loads((tmp_path / "out/vqa_per_item.json").read_text()) == pytest.approx({"42000": 100.0,
                                                                                          "42001": 90.0})
    assert main(["eval", "vqa", "--results", str(paths["results"]), "--annotations", str(paths["annotations"])]) == 0
    table = capsys.readouterr().out
    assert "accuracy: 95.00" in table and "1 annotated questions without a prediction" in table


def test_vqa_command_takes_jsonl_and_gives_one_line_errors(tmp_path, capsys):
    rows = [{"image": "a.png", "question": "what color?", "answer": "red"},
            {"image": "b.png", "question": "how many?", "answers": ["2"] * 4 + ["3"] * 6, "answer_type": "number"}]
    (tmp_path / "vqa.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "results.json").write_text(json.dumps([{"question_id": 0, "answer": "red"},
                                                       {"question_id": 1, "answer": "2"}]))
    assert main(["eval", "vqa", "--results", str(tmp_path / "results.json"), "--annotations",
                 str(tmp_path / "vqa.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(100.0)
    assert main(["eval", "vqa", "--model", "m"]) == 2
    assert "give --annotations" in capsys.readouterr().err
    assert main(["eval", "vqa", "--annotations", str(tmp_path / "vqa.jsonl")]) == 2
    assert "--results" in capsys.readouterr().err
    assert main(["eval", "vqa", "--results", str(tmp_path / "results.json"), "--annotations",
                 str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
