"""Build assets/vocab/imagenet_wordnet.json: names, gloss and hypernym chain for the 1000 ImageNet-1k classes.

    python -m model.recipes.mini.build_vocab [--timm-wheel PATH] [--wordnet-dir DIR] [--common-words PATH]
                                             [--out PATH]

Sources (both offline once fetched; nothing is downloaded by this script):
- class order: `timm/data/_info/imagenet_synsets.txt` read from inside a timm wheel
  (`pip download --no-deps timm==1.0.31 -d /tmp/timm`; timm is NOT installed). It lists the 1000 WordNet ids
  sorted, which is the output order of ImageNet-1k classifiers (checked on real photos with ours).
- WordNet 3.0 noun database from Debian's `wordnet-base` (`/usr/share/wordnet/data.noun`, `index.noun`,
  `cntlist.rev`). ImageNet ids are WordNet 3.0 noun offsets ("n" + 8 digits).
- everyday English words: SCOWL's size-35 list (Kevin Atkinson's Spell Checker Oriented Word Lists), Debian's
  `wamerican-small` (`/usr/share/dict/american-english-small`, ~51,000 words, the smallest of its sizes).

Hypernym chains follow the first `@` (or instance `@i`) pointer of each synset upward and stop before the
first node in STOP_NODES: the abstract top of WordNet ("entity", "physical entity", "object", "whole",
"living thing", "organism", "matter", "artifact", "instrumentality", ...) and a few hubs that would end
hundreds of chains with a near-empty word ("device", "covering", "substance", "solid", "commodity",
"article"). Kept on purpose: "animal", "person", "plant", "structure", "equipment", "container",
"conveyance", "food", "geological formation".

Per hypernym node the asset stores its common lemma names, `freq` (WordNet semantic-concordance tag count of
the synset, from cntlist.rev: how often annotators met that sense in running text) and `head_freq` (the best
noun tag count of the last word of its name in any sense, e.g. "cat" for "domestic cat"). The renderer uses them
to pick the hypernyms people actually say. `common` marks a node whose first name is made only of words in the
everyday list ("duck" yes, "anseriform bird" no): the renderer's entry-level name (`concept_terms`). Latin
binomials ("Felis catus") go to `scientific`, not `names`.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import zipfile
from pathlib import Path

from model.files import write_atomic
from model.visual.vocab import ASSET_PATH

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_COMMON_WORDS = Path("/usr/share/dict/american-english-small")
DEFAULT_TIMM_GLOB = "/tmp/timm/timm-*.whl"
SYNSET_LIST = "timm/data/_info/imagenet_synsets.txt"
SCHEMA_VERSION = 1

# WordNet 3.0 noun offsets of nodes that end a chain (they are excluded, and so is everything above them).
# Chosen by looking at the top of all 1000 chains: these say nothing a searcher would type.
STOP_NODES: dict[str, str] = {
    # the abstract top of WordNet
    "n00001740": "entity",
    "n00001930": "physical entity",
    "n00002137": "abstraction, abstract entity",
    "n00002452": "thing",
    "n00002684": "object, physical object",
    "n00003553": "whole, unit",
    "n00004258": "living thing, animate thing",
    "n00004475": "organism, being",
    "n00007347": "causal agent, cause, causal agency",
    "n00019128": "natural object",
    "n00020827": "matter",
    "n00023271": "cognition, knowledge, noesis",
    "n00024264": "attribute",
    "n00027167": "location",
    "n00029677": "process, physical process",
    "n00031264": "group, grouping",
    "n00033020": "communication",
    "n13809207": "part, portion, component part, component, constituent",
    # artefact hubs above every man-made class
    "n00021939": "artifact, artefact",
    "n03575240": "instrumentality, instrumentation",
    # generic hubs that would otherwise end hundreds of chains with a near-meaningless word
    "n03183080": "device",
    "n03122748": "covering",
    "n00019613": "substance",
    "n00020090": "substance",
    "n15046900": "solid",
    "n03076708": "commodity, trade good, good",
    "n00022903": "article",
}


class SourceError(RuntimeError):
    """A build input is missing or malformed."""


def read_imagenet_synsets(timm_wheel: Path) -> list[str]:
    if not timm_wheel.is_file():
        raise SourceError(
            f"timm wheel not found at {timm_wheel}. Fetch it with "
            "`pip download --no-deps timm==1.0.31 -d /tmp/timm` (do not install it)."
        )
    with zipfile.ZipFile(timm_wheel) as zf:
        try:
            text = zf.read(SYNSET_LIST).decode("utf-8")
        except KeyError as exc:
            raise SourceError(f"{timm_wheel} has no {SYNSET_LIST}") from exc
    wnids = text.split()
    if len(wnids) != 1000 or any(not re.fullmatch(r"n\d{8}", w) for w in wnids):
        raise SourceError(f"{timm_wheel}:{SYNSET_LIST}: expected 1000 ids like n01440764, got {len(wnids)}")
    if wnids != sorted(wnids):
        raise SourceError(f"{timm_wheel}:{SYNSET_LIST}: ids are not sorted; the classifier order assumes sorted")
    return wnids


class WordNetNouns:
    """Minimal reader for WordNet 3.0 data.noun / index.noun / cntlist.rev."""

    def __init__(self, wordnet_dir: Path):
        self.dir = wordnet_dir
        data_path = wordnet_dir / "data.noun"
        index_path = wordnet_dir / "index.noun"
        for path in (data_path, index_path):
            if not path.is_file():
                raise SourceError(f"WordNet file missing: {path}. Install it with `apt-get install -y wordnet-base`.")
        self.synsets: dict[str, dict] = {}
        with open(data_path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                self._parse_data_line(line)
        self.counts, self.lemma_counts = self._read_tag_counts(index_path, wordnet_dir / "cntlist.rev")

    def _parse_data_line(self, line: str) -> None:
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        offset, n_words = fields[0], int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        # Adjective markers like "(a)" only occur on adjectives, but strip any "(...)" suffix defensively.
        words = [re.sub(r"\(.*\)$", "", w) for w in words]
        pos = 4 + 2 * n_words
        n_ptrs = int(fields[pos])
        hypernyms: list[str] = []
        instance_of: list[str] = []
        for i in range(n_ptrs):
            symbol, target, target_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
            if target_pos != "n":
                continue
            if symbol == "@":
                hypernyms.append("n" + target)
            elif symbol == "@i":
                instance_of.append("n" + target)
        self.synsets["n" + offset] = {
            "words": words,
            "hypernyms": hypernyms or instance_of,
            "gloss": gloss.strip(),
        }

    @staticmethod
    def _read_tag_counts(index_path: Path, cntlist_path: Path) -> tuple[dict[str, int], dict[str, int]]:
        """Semantic-concordance tag counts, a proxy for how familiar a word is: summed per synset, and the
        best noun sense per lemma."""
        if not cntlist_path.is_file():
            raise SourceError(f"WordNet file missing: {cntlist_path}. Install `wordnet-base`.")
        by_sense: dict[tuple[str, int], int] = {}
        with open(cntlist_path, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3 or "%1:" not in parts[0]:
                    continue
                lemma = parts[0].split("%", 1)[0]
                by_sense[(lemma, int(parts[1]))] = int(parts[2])
        counts: dict[str, int] = {}
        lemma_counts: dict[str, int] = {}
        for (lemma, _), c in by_sense.items():
            lemma_counts[lemma] = max(c, lemma_counts.get(lemma, 0))
        with open(index_path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                fields = line.split()
                lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
                offsets = fields[6 + p_cnt : 6 + p_cnt + synset_cnt]
                for sense, off in enumerate(offsets, start=1):
                    c = by_sense.get((lemma, sense), 0)
                    if c:
                        counts["n" + off] = counts.get("n" + off, 0) + c
        return counts, lemma_counts

    def head_word_count(self, name: str) -> int:
        """Familiarity of the head (last) word of a name in any noun sense: "domestic cat" -> count of "cat"."""
        return self.lemma_counts.get(name.lower().split(" ")[-1], 0)

    def chain(self, wnid: str) -> list[str]:
        """Hypernym ids from the direct parent upward, cut before the first stop node."""
        out: list[str] = []
        seen = {wnid}
        node = wnid
        while True:
            parents = self.synsets[node]["hypernyms"]
            if not parents:
                return out
            node = parents[0]
            if node in STOP_NODES or node in seen:
                return out
            seen.add(node)
            out.append(node)


def _is_scientific(name: str, genus_words: set[str]) -> bool:
    """Latin binomials ("Felis catus", "Ailuropoda melanoleuca") are poor search words: a multi-word name whose
    first word is a WordNet genus."""
    tokens = name.split(" ")
    return len(tokens) >= 2 and tokens[0][:1].isupper() and tokens[0].lower() in genus_words


def _genus_words(wn: WordNetNouns) -> set[str]:
    """Genus names, from synsets that carry a "genus X" lemma (e.g. "Felis, genus Felis")."""
    words: set[str] = set()
    for syn in wn.synsets.values():
        for w in syn["words"]:
            if w.startswith("genus ") and len(w.split(" ")) == 2:
                words.add(w.split(" ")[1].lower())
    return words


def _short_gloss(gloss: str, limit: int = 160) -> str:
    # WordNet glosses append quoted examples after "; "; keep the definition only.
    text = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text


def read_common_words(path: Path) -> frozenset[str]:
    """The everyday words: one per line, lower-cased; entries that are not all letters (possessives such as
    "duck's") are left out."""
    if not path.is_file():
        raise SourceError(f"word list missing: {path}. Install `wamerican-small`.")
    with open(path, encoding="utf-8") as fh:
        words = frozenset(w.strip().lower() for w in fh if w.strip().isalpha())
    if not words:
        raise SourceError(f"{path} holds no words")
    return words


def is_common(name: str, words: frozenset[str]) -> bool:
    """Whether every word of `name` (split at spaces and hyphens) is an everyday word."""
    return all(w.lower() in words for w in name.replace("-", " ").split())


def build(timm_wheel: Path, wordnet_dir: Path, common_words: Path = DEFAULT_COMMON_WORDS) -> dict:
    words = read_common_words(common_words)
    print(f"everyday words: {common_words} ({len(words)} words)", file=sys.stderr)
    wnids = read_imagenet_synsets(timm_wheel)
    print(f"class order: {timm_wheel}:{SYNSET_LIST} ({len(wnids)} ids)", file=sys.stderr)
    wn = WordNetNouns(wordnet_dir)
    print(f"WordNet: {wordnet_dir} ({len(wn.synsets)} noun synsets)", file=sys.stderr)
    for stop in STOP_NODES:
        if stop not in wn.synsets:
            raise SourceError(f"stop node {stop} ({STOP_NODES[stop]}) not in {wordnet_dir}/data.noun")
    genus = _genus_words(wn)
    classes = []
    nodes: dict[str, dict] = {}
    for wnid in wnids:
        if wnid not in wn.synsets:
            raise SourceError(f"ImageNet class {wnid} is not a noun synset in {wordnet_dir}/data.noun")
        syn = wn.synsets[wnid]
        names = list(dict.fromkeys(syn["words"]))
        common = [n for n in names if not _is_scientific(n, genus)] or names[:1]
        scientific = [n for n in names if n not in common]
        chain = wn.chain(wnid)
        classes.append(
            {
                "wnid": wnid,
                "names": common,
                "scientific": scientific,
                "gloss": _short_gloss(syn["gloss"]),
                "hypernyms": chain,
            }
        )
        for node in chain:
            if node not in nodes:
                node_names = list(dict.fromkeys(wn.synsets[node]["words"]))
                node_common = [n for n in node_names if not _is_scientific(n, genus)] or node_names[:1]
                nodes[node] = {
                    "names": node_common,
                    "freq": wn.counts.get(node, 0),
                    "head_freq": wn.head_word_count(node_common[0]),
                    "common": is_common(node_common[0], words),
                }
    return {
        "version": SCHEMA_VERSION,
        "sources": {
            "class_order": f"timm wheel {timm_wheel.name}:{SYNSET_LIST}",
            "wordnet": "WordNet 3.0 (Princeton University), Debian package wordnet-base",
            "common_words": "SCOWL size 35 (Kevin Atkinson), Debian package wamerican-small",
        },
        "stop_nodes": STOP_NODES,
        "classes": classes,
        "nodes": dict(sorted(nodes.items())),
    }


def _default_wheel() -> Path:
    found = sorted(glob.glob(DEFAULT_TIMM_GLOB))
    return Path(found[-1]) if found else Path(DEFAULT_TIMM_GLOB.replace("*", "1.0.31-py3-none-any"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-wheel", type=Path, default=None, help="path to a timm wheel (not installed)")
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--common-words", type=Path, default=DEFAULT_COMMON_WORDS,
                        help="everyday English words, one per line (Debian wamerican-small)")
    parser.add_argument("--out", type=Path, default=ASSET_PATH)
    args = parser.parse_args(argv)
    try:
        data = build(args.timm_wheel or _default_wheel(), args.wordnet_dir, args.common_words)
    except SourceError as exc:
        print(f"build_vocab: {exc}", file=sys.stderr)
        return 2
    write_atomic(args.out, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, {len(data['nodes'])} hypernym nodes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
