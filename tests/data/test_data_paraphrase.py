"""Unseen phrasings of the built-in scenes: new words and templates that training captions never produce."""
import re

import numpy as np

from vlmkit.data import paraphrase
from vlmkit.data.scenes import CLASS_NAMES
from vlmkit.data.synth import make_scene


def _scenes(count: int = 60):
    return [make_scene(3, index, index % 2 == 0, 32, 2, str(index))[1] for index in range(count)]


def test_synonyms_are_words_training_never_uses():
    vocabulary = paraphrase.training_vocabulary()
    words = {w for names in paraphrase.COLOR_SYNONYMS.values() for w in names}
    words |= {w for names in paraphrase.SIZE_SYNONYMS.values() for w in names}
    for names in paraphrase.SHAPE_SYNONYMS.values():
        for singular, plural in names.items():
            # each shape synonym holds a new word and never the training word itself
            assert set(re.findall(r"[a-z]+", singular)) - vocabulary, singular
            assert set(re.findall(r"[a-z]+", plural)) - vocabulary, plural
    assert not {w for w in words if w in vocabulary}


def test_paraphrases_are_unseen_and_describe_the_scene():
    rng = np.random.default_rng(0)
    vocabulary = paraphrase.training_vocabulary()
    for meta in _scenes():
        seen = paraphrase.training_captions(meta)
        assert set(meta["captions"]) <= seen  # the enumeration covers what training wrote
        for words in (True, False):
            captions = paraphrase.paraphrase_scene(meta, rng, 2, words=words)
            assert len(captions) == 2 and not set(captions) & seen
            for caption in captions:
                used = set(re.findall(r"[a-z]+", caption))
                if words:  # no colour or shape is named by its training word
                    assert not used & ({o["color"] for o in meta["objects"]} | {o["shape"] for o in meta["objects"]})
                else:
                    assert {o["color"] for o in meta["objects"]} & used


def test_class_prompts():
    for name in CLASS_NAMES:
        unseen = paraphrase.class_prompts(name)
        training = paraphrase.training_class_prompts(name)
        assert len(unseen) == len(paraphrase.SINGLE_TEMPLATES) * 4 and len(training) == 14
        assert not set(unseen) & set(training)
        assert not set(paraphrase.class_prompts(name, words=False)) & set(training)
        assert all(name.split()[0] not in prompt.split() for prompt in unseen)
    assert "a picture showing a crimson disk" in paraphrase.class_prompts("red circle")
