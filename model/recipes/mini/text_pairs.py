"""Query/passage pairs from offline prose, so the model keeps reading documents well.

Passages are paragraphs of the Python standard library's docstrings (present wherever Python is) and
WordNet glosses; queries are made the ways people search documents: a sentence taken out of the passage
(the inverse cloze task), a few of its rarer words, or the name of what a gloss defines.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
STOP = set(
    "the a an and or of to in on for with by from as at is are was were be been being this that these those it its "
    "if then else when which who whom whose what where why how not no but can may might will would should could "
    "has have had do does did there their them they you your we our us he she his her him than so such into over "
    "also any all each other more most some only same very just one two use used using returns return value values "
    "default none true false object objects function method class argument arguments given see new".split()
)


def stdlib_passages(max_words: int = 80) -> list[tuple[str, str]]:
    """(group, passage) pairs from stdlib docstrings; group = module file, for same-source hard negatives."""
    root = Path(os.__file__).parent
    files = sorted(list(root.glob("*.py")) + list(root.glob("*/*.py")))
    out = []
    for f in files:
        if any(part in f.parts for part in ("test", "tests", "idlelib", "site-packages", "lib2to3")):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in _paragraphs(doc):
                words = para.split()
                for i in range(0, len(words), max_words):
                    chunk = " ".join(words[i:i + max_words])
                    if len(chunk.split()) >= 20 and len(_WORD.findall(chunk)) >= 15:
                        out.append((f.stem, chunk))
    return out


def _paragraphs(doc: str) -> list[str]:
    keep, skip = [], False
    for line in doc.splitlines():
        s = line.strip()
        if s.startswith(">>>"):
            skip = True
            continue
        if skip and s:
            continue
        skip = False
        keep.append(s)
    text = "\n".join(keep)
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if p]


def _idf(passages: list[str]) -> dict[str, float]:
    df = Counter()
    for p in passages:
        df.update({w.lower() for w in _WORD.findall(p)})
    n = len(passages)
    return {w: math.log(n / (1 + c)) for w, c in df.items()}


def ict_pairs(passages: list[tuple[str, str]], n: int, rng: random.Random) -> list[dict]:
    """Inverse-cloze and keyword queries over passages; hard negative from the same source."""
    idf = _idf([p for _, p in passages])
    by_group: dict[str, list[int]] = {}
    for i, (g, _) in enumerate(passages):
        by_group.setdefault(g, []).append(i)
    rows = []
    while len(rows) < n:
        i = rng.randrange(len(passages))
        group, text = passages[i]
        sentences = [s for s in _SENT.split(text) if len(s.split()) >= 5]
        mode = rng.random()
        if sentences and mode < 0.45:
            s = rng.choice(sentences)
            query = " ".join(s.split()[: rng.randint(5, 14)]).rstrip(".,;:")
            if rng.random() < 0.5 and len(sentences) > 1:
                text = " ".join(x for x in _SENT.split(text) if x != s)  # the ICT positive lacks the sentence
        else:
            words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text) if w.lower() not in STOP))
            if len(words) < 3:
                continue
            words.sort(key=lambda w: -idf.get(w, 0) * rng.uniform(0.6, 1.0))
            query = " ".join(rng.sample(words[:8], k=min(len(words[:8]), rng.randint(2, 4))))
        siblings = [j for j in by_group[group] if j != i]
        neg = passages[rng.choice(siblings)][1] if siblings else passages[rng.randrange(len(passages))][1]
        rows.append({"query": query, "positive": text, "negative": neg, "source": "stdlib"})
    return rows


def gloss_pairs(synsets: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Name -> definition pairs from WordNet: {"names": [...], "gloss": str, "parent": key}."""
    by_parent: dict[str, list[int]] = {}
    for i, s in enumerate(synsets):
        by_parent.setdefault(s.get("parent") or "", []).append(i)
    rows = []
    while len(rows) < n:
        i = rng.randrange(len(synsets))
        s = synsets[i]
        name = rng.choice(s["names"]).replace("_", " ")
        if rng.random() < 0.5:
            query, positive = name, s["gloss"]
        else:  # the reverse direction: a description finds the named thing
            query, positive = " ".join(s["gloss"].split(";")[0].split()[:12]), ", ".join(
                x.replace("_", " ") for x in s["names"][:3]) + ": " + s["gloss"]
        siblings = [j for j in by_parent.get(s.get("parent") or "", []) if j != i]
        j = rng.choice(siblings) if siblings else rng.randrange(len(synsets))
        neg = synsets[j]["gloss"] if positive == s["gloss"] else (
            ", ".join(x.replace("_", " ") for x in synsets[j]["names"][:3]) + ": " + synsets[j]["gloss"])
        rows.append({"query": query, "positive": positive, "negative": neg, "source": "wordnet"})
    return rows
