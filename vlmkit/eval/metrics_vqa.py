"""VQA accuracy exactly as the official VQA evaluation (GT-Vision-Lab ``vqaEval.py``) computes it.

Per question, with the 10 human answers a_1..a_10 and the prediction p:

    accuracy = mean over i of min(1, #{j != i : a_j == p} / 3)

(the mean over the 10 leave-one-out subsets of 9 annotators; 3 agreeing annotators give full credit). Before
comparing, the prediction and the answers have line breaks/tabs turned into spaces and are stripped; then, *only
when the human answers are not all identical*, both are normalised: punctuation (:func:`process_punctuation`),
then lower case, number words -> digits ("none" -> "0"), articles dropped and contractions restored
(:func:`process_digit_article`). So when all 10 annotators wrote "yes", "Yes" scores 0: the official script
skips normalisation there on purpose (to keep OCR answers verbatim).

Reported as percentages (x100), overall and per question type and answer type, unrounded (the official script
rounds to 2 decimals for display). The official script drops annotator answers by comparing whole answer dicts;
with VQAv2's distinct ``answer_id`` that is the same as leaving out one position, which is what this does.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])
PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
# Verbatim from vqaEval.py, typo included: "(?!<=\d)" is a lookahead, so any "." not followed by a digit goes.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval.py passes re.UNICODE (= 32) where sub() takes its count: at most 32 periods are removed.
_PERIOD_COUNT = int(re.UNICODE)


def strip_answer(text: str) -> str:
    """Line breaks and tabs to spaces, then strip (applied to every answer and prediction)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """vqaEval's punctuation rule: a mark next to a space (or any text with a digit,digit comma) is deleted,
    otherwise replaced by a space ("yes/no" -> "yes no"); then periods not followed by a digit are deleted."""
    out = text
    comma_between_digits = _COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or comma_between_digits:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower case; number words zero..ten and "none" to digits; drop a/an/the; restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The full official normalisation of one answer: strip, punctuation, digits/articles/contractions."""
    return process_digit_article(process_punctuation(strip_answer(text)))


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (10 in VQAv2), by the official rule."""
    if not answers:
        raise ValueError("a question needs at least one ground-truth answer")
    answers = [strip_answer(answer) for answer in answers]
    prediction = strip_answer(prediction)
    if len(set(answers)) > 1:
        answers = [process_digit_article(process_punctuation(answer)) for answer in answers]
        prediction = process_digit_article(process_punctuation(prediction))
    matches = [answer == prediction for answer in answers]
    total = sum(matches)
    per_subset = [min(1, float(total - left_out) / 3) for left_out in matches]
    return float(sum(per_subset)) / len(per_subset)


@dataclass
class VQAScores:
    """``metrics``: ``accuracy`` and, per type, ``accuracy_per_answer_type`` / ``accuracy_per_question_type``
    (percentages); ``per_question``: question_id -> accuracy in percent."""

    metrics: dict
    per_question: dict


def vqa_accuracy(predictions: Mapping[Hashable, str], answers: Mapping[Hashable, Sequence[str]], *,
                 question_types: Mapping[Hashable, str | None] | None = None,
                 answer_types: Mapping[Hashable, str | None] | None = None) -> VQAScores:
    """Official VQA accuracy over the questions in ``predictions``, overall and per question/answer type.

    Args:
        predictions: question_id -> predicted answer.
        answers: question_id -> the human answers; every predicted question must be here.
        question_types, answer_types: question_id -> type (questions without one are left out of that breakdown).
    """
    if not predictions:
        raise ValueError("no predictions to score")
    unknown = [key for key in predictions if key not in answers]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name questions without ground-truth answers, "
                         f"e.g. {unknown[:5]}")
    per_question: dict[Hashable, float] = {}
    accuracies: list[float] = []
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    for key, prediction in predictions.items():
        accuracy = question_accuracy(str(prediction), answers[key])
        accuracies.append(accuracy)
        per_question[key] = 100 * accuracy
        if question_types and question_types.get(key) is not None:
            by_question_type[str(question_types[key])].append(accuracy)
        if answer_types and answer_types.get(key) is not None:
            by_answer_type[str(answer_types[key])].append(accuracy)
    metrics: dict = {"accuracy": 100 * float(sum(accuracies)) / len(accuracies)}
    if by_answer_type:
        metrics["accuracy_per_answer_type"] = {name: 100 * float(sum(values)) / len(values)
                                               for name, values in sorted(by_answer_type.items())}
    if by_question_type:
        metrics["accuracy_per_question_type"] = {name: 100 * float(sum(values)) / len(values)
                                                 for name, values in sorted(by_question_type.items())}
    return VQAScores(metrics=metrics, per_question=per_question)
