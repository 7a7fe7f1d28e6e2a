"""The Java parts of pycocoevalcap: Stanford PTB tokenisation and METEOR 1.5, run from pycocoevalcap's jars.

pycocoevalcap ships the jars (``pip install vlmkit[eval]``); Java must be on PATH. vlmkit runs them itself rather
than through pycocoevalcap's wrappers, because those write temporary files into the installed package (which
fails on a read-only install) and hang or crash with an unreadable error when Java is missing. The commands and
options are pycocoevalcap's, so the tokens and scores are the same.

Without Java or pycocoevalcap: :func:`ptb_tokenize` falls back to :func:`simple_ptb_tokenize`, a Python
approximation of the PTB rules that matter for captions (lower case, split punctuation and clitics, then drop
punctuation), and METEOR is reported unavailable with the reason. SPICE is always reported unavailable: it needs
Stanford CoreNLP models that pycocoevalcap downloads at first use, and vlmkit never downloads anything.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Hashable, Mapping, Sequence

# pycocoevalcap's list, compared after lower-casing: so "-lrb-" (a lower-cased "(") is *kept*, as there.
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                             "-", "--", "...", ";"])
SPICE_UNAVAILABLE = ("SPICE needs Stanford CoreNLP 3.6.0 models, which pycocoevalcap downloads at first use; "
                     "vlmkit runs offline and never downloads")
_JAVA_TIMEOUT_S = 600


class JavaUnavailable(RuntimeError):
    """Java or a pycocoevalcap jar is missing, or the Java tool failed; the message says which."""


def _jar(*parts: str) -> str:
    try:
        import pycocoevalcap
    except ImportError:
        raise JavaUnavailable("pycocoevalcap is not installed (pip install 'vlmkit[eval]')") from None
    # pycocoevalcap has no __init__.py: it is a namespace package, found through __path__.
    for folder in getattr(pycocoevalcap, "__path__", []):
        path = os.path.join(folder, *parts)
        if os.path.isfile(path):
            return path
    raise JavaUnavailable(f"pycocoevalcap has no {'/'.join(parts)}")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaUnavailable("no 'java' on PATH (install a Java runtime, e.g. apt-get install default-jre)")
    return java


def _one_line(text: str) -> str:
    # The tokenizer reads one sentence per line: any line break inside a caption would shift every later line.
    return " ".join(text.splitlines())


def java_ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on a list of sentences: Stanford CoreNLP 3.4.1 ``PTBTokenizer
    -preserveLines -lowerCase``, then the punctuation tokens removed. One Java run for all sentences.

    Raises:
        JavaUnavailable: no Java, no pycocoevalcap, or the tokenizer failed.
    """
    if not sentences:
        return []
    command = [_java(), "-cp", _jar("tokenizer", "stanford-corenlp-3.4.1.jar"),
               "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    text = "\n".join(_one_line(sentence) for sentence in sentences)
    with tempfile.TemporaryDirectory(prefix="vlmkit-ptb-") as folder:
        path = os.path.join(folder, "sentences.txt")
        with open(path, "wb") as stream:
            stream.write(text.encode("utf-8", errors="replace"))
        try:
            done = subprocess.run([*command, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=_JAVA_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise JavaUnavailable(f"the PTB tokenizer did not run: {error}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise JavaUnavailable(f"the PTB tokenizer failed: {detail[0]}")
    lines = done.stdout.decode("utf-8", errors="replace").split("\n")
    lines += [""] * (len(sentences) - len(lines))  # an empty last sentence gives no last line
    return [" ".join(word for word in line.rstrip().split(" ") if word not in PTB_PUNCTUATION)
            for line in lines[:len(sentences)]]


_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "--",
                         "\u2014": "--", "\u2026": "..."})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = re.compile(r"(?i)\b(\w+)(n't)\b|\b(\w+)('s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"\.\.\.|--|-lrb-|-rrb-|-lsb-|-rsb-|-lcb-|-rcb-|``|''|n't|'(?:s|re|ve|ll|d|m)\b|"
                    r"\d+(?:[.,:/]\d+)+|(?:[a-z]\.){2,}|\b(?:mr|mrs|ms|dr|st|jr|sr|vs|etc)\.|"
                    r"[@#]?\w+(?:[-'/]\w+)*|[!?]+|[^\w\s]")


def simple_ptb_tokenize(sentence: str) -> str:
    """A Python approximation of :func:`java_ptb_tokenize` for one sentence (used when Java is missing).

    It agrees with the Java tokenizer on ordinary captions (words, commas, periods, quotes, clitics such as
    "don't" -> "do n't", brackets -> "-lrb-"); rarer PTB rules (some abbreviations, URLs, emoticons) differ.
    """
    text = _one_line(sentence).translate(_QUOTES).lower()
    text = re.sub(r'(^|[\s(\[{])"', r"\1 `` ", text)
    text = text.replace('"', " '' ")
    text = "".join(f" {_BRACKETS[char]} " if char in _BRACKETS else char for char in text)
    text = re.sub(r"\b(can)(not)\b", r"\1 \2", text)
    text = _CLITICS.sub(lambda m: f"{m.group(1)} {m.group(2)}" if m.group(1) else f"{m.group(3)} {m.group(4)}",
                        text)
    tokens = _TOKEN.findall(text)
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]], *, use_java: bool = True
                 ) -> tuple[dict[Hashable, list[str]], str]:
    """Tokenise ``{image_id: [caption, ...]}`` as pycocoevalcap does before scoring.

    Returns ``(tokenised, tokenizer)`` where ``tokenizer`` is ``"ptb-java"`` (exact) or
    ``"python (approximates PTB: <why Java was not used>)"``.
    """
    keys = list(captions)
    flat = [caption for key in keys for caption in captions[key]]
    try:
        if not use_java:
            raise JavaUnavailable("Java not requested")
        tokens, name = java_ptb_tokenize(flat), "ptb-java"
    except JavaUnavailable as why:
        tokens, name = [simple_ptb_tokenize(caption) for caption in flat], f"python (approximates PTB: {why})"
    tokenised: dict[Hashable, list[str]] = {}
    position = 0
    for key in keys:
        count = len(captions[key])
        tokenised[key] = tokens[position:position + count]
        position += count
    return tokenised, name


def meteor_scores(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]
                  ) -> tuple[float, dict[Hashable, float]]:
    """METEOR 1.5 (``-l en -norm``) through pycocoevalcap's jar, in its ``-stdio`` protocol: one ``SCORE`` line per
    image for its statistics, then one ``EVAL`` line; the corpus score is METEOR's own aggregate over the summed
    statistics (not the mean of the per-image scores), as pycocoevalcap reports.

    Takes tokenised text. Raises :class:`JavaUnavailable` when it cannot run. Loading the paraphrase table takes
    ~10 s and up to 2 GB of Java heap.
    """
    keys = list(references)
    if not keys:
        raise ValueError("nothing to score")
    jar = _jar("meteor", "meteor-1.5.jar")
    command = [_java(), "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"]
    try:
        process = subprocess.Popen(command, cwd=os.path.dirname(jar), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as error:
        raise JavaUnavailable(f"METEOR did not start: {error}") from None
    assert process.stdin is not None and process.stdout is not None
    try:
        def ask(line: str) -> str:
            process.stdin.write((line + "\n").encode("utf-8", errors="replace"))
            process.stdin.flush()
            return read()

        def read() -> str:
            answer = process.stdout.readline()
            if not answer:
                raise JavaUnavailable(f"METEOR stopped unexpectedly (exit {process.poll()})")
            return answer.decode("utf-8", errors="replace").strip()

        eval_line = "EVAL"
        for key in keys:
            # pycocoevalcap's sanitising: '|||' separates fields, so it is removed from the hypothesis.
            hypothesis = predictions[key].replace("|||", "").replace("  ", " ")
            stats = ask(" ||| ".join(("SCORE", " ||| ".join(references[key]), hypothesis)))
            eval_line += f" ||| {stats}"
        first = ask(eval_line)
        per_image = {keys[0]: float(first)}
        for key in keys[1:]:
            per_image[key] = float(read())
        score = float(read())
    except (OSError, ValueError) as error:
        raise JavaUnavailable(f"METEOR failed: {error}") from None
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return score, per_image
