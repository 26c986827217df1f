"""app.ui.explain: the "Mostly because of" words of a result, the chips of what each vector read, and how a
photo's visual tokens are painted."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np

from app.ui.explain import (
    SKY_TINT,
    Explanation,
    Unit,
    kind_mark,
    photo_marks,
    short_label,
    summary_units,
    top_units,
)
from model.visual.tokenizer import VisualToken
from model.visual.vocab import load_vocab


def test_the_summary_names_content_words_not_stopwords_or_punctuation():
    """Tester report: "Mostly because of: file (11%), and (11%), positions (11%), the (9%)" on a PDF page."""
    labels = ["file", "and", "positions", "the", ",", "Of", "header", "keywords", "(", "HDU"]
    units = [Unit(label=w, kind="word", tokens=[i], span=(i, i + 1)) for i, w in enumerate(labels)]
    relevance = np.array([0.11, 0.11, 0.11, 0.09, 0.08, 0.08, 0.07, 0.06, 0.05, 0.04], dtype=np.float32)
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int),
                     contributions=np.ones(1), score=1.0, c_units=units, c_relevance=relevance)
    named = [label for label, _, _ in summary_units(ex)]
    assert named == ["file", "positions", "header", "keywords", "HDU"]
    shares = [share for _, _, share in summary_units(ex)]
    assert shares[0] == np.float32(0.11) and shares == sorted(shares, reverse=True)


def test_chips_leave_out_tokens_the_vector_hardly_read():
    """Tester report: rows ending in "a 0.00", "and 0.00", "colors 0.00" after a vector that read one word."""
    units = [Unit(label=w, kind="word", tokens=[i], span=(i, i + 1)) for i, w in enumerate(["sky", "a", "and", "hill"])]
    html = top_units(np.array([0.97, 0.001, 0.0, 0.029]), units)
    assert ">sky <" in html and ">hill <" in html  # 0.029 is 3 % of the top token: kept
    assert ">a <" not in html and ">and <" not in html
    assert html.count("<span") == 2
    # The most-read token is always shown, however little it was read.
    assert top_units(np.array([0.0, 0.0, 0.0, 0.0]), units).count("<span") == 1


def _visual_unit(kind: str, label: str, region: np.ndarray) -> Unit:
    return Unit(label=label, kind=kind, tokens=[0], span=(0, len(label)),
                visual=VisualToken(label, kind, 0.5, (0, len(label)), region=region.astype(np.float16)))


def test_scene_words_are_painted_as_a_sky_outline_or_not_at_all():
    """Tester report: the sky was washed in the heat map's magenta (the blue it names disappeared), and a black
    and white photo was painted solid red, hiding the dog that made up half the match."""
    sky = np.zeros((32, 32), np.float32)
    sky[:12] = 1.0
    units = [_visual_unit("scene", "sky", sky), _visual_unit("scene", "black and white, monochrome", np.ones((32, 32))),
             _visual_unit("concept", "golden retriever, dog", np.eye(32))]
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=units, c_relevance=np.array([0.3, 0.4, 0.3], dtype=np.float32))
    marks = photo_marks(ex)
    assert len(marks) == 2  # the sky's outline and the dog's heat; nothing for the whole frame
    outline = [m for m in marks if m.mask is not None]
    assert len(outline) == 1 and outline[0].tint == SKY_TINT and outline[0].heat is None
    assert [m.heat is not None for m in marks].count(True) == 1
    assert kind_mark("scene", "sky") == "☁ " and kind_mark("scene", "black and white, monochrome") == "◐ "
    assert kind_mark("concept", "dog") == "◆ " and kind_mark("word") == ""


def test_the_summary_names_a_word_once_with_its_shares_added():
    """Tester report: "install (27%), packages (27%), packages (4%)" and "Debian (5%), Debian (5%), …, Debian (5%)"."""
    labels = ["Debian", "install", "Debian", "packages", "Debian", "packages"]
    units = [Unit(label=w, kind="word", tokens=[i], span=(i, i + 1)) for i, w in enumerate(labels)]
    relevance = np.array([0.05, 0.27, 0.05, 0.27, 0.05, 0.04], dtype=np.float32)
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int),
                     contributions=np.ones(1), score=1.0, c_units=units, c_relevance=relevance)
    summary = summary_units(ex)
    assert [label for label, _, _ in summary] == ["packages", "install", "Debian"]
    assert [round(share, 2) for _, _, share in summary] == [0.31, 0.27, 0.15]
    relevance[1] = np.nan  # a NaN share (a zero-sum attention row) is no reason
    assert "install" not in [label for label, _, _ in summary_units(ex)]


def test_a_concept_chip_shows_the_general_words_a_query_matches_through():
    """Tester report: the chip said "◆ lorikeet …" while the query's "bird" was what matched."""
    def label(text: str) -> str:
        return short_label(Unit(label=text, kind="concept", tokens=[0], span=(0, len(text))))

    assert label("lorikeet, bird, animal") == "lorikeet (bird, animal)"
    assert label("lesser panda, red panda, mammal, animal") == "lesser panda (… mammal, animal)"
    assert label("seashore, coast") == "seashore (coast)" and label("sky") == "sky"
    assert label("dog,") == "dog" and label(",") == ","  # malformed labels are shown as they are, never an error


def test_a_concept_chip_shows_its_entry_level_name():
    """v3.4 writes what people call a class ("duck" for a drake), which is what a query's "duck" matches."""
    def label(text: str, class_index: int | None) -> str:
        visual = SimpleNamespace(class_index=class_index)
        return short_label(Unit(label=text, kind="concept", tokens=[0], span=(0, len(text)), visual=visual))

    vocab = load_vocab()
    drake, lorikeet = vocab.index_of("n01847000"), vocab.index_of("n01820546")
    assert label("drake, duck, anseriform bird, bird, animal", drake) == "drake (duck … bird, animal)"
    assert label("lorikeet, parrot, bird, animal", lorikeet) == "lorikeet (parrot, bird, animal)"
    # Written without entry names (an older checkpoint), or not a classifier concept: as before.
    assert label("drake, anseriform bird, bird, animal", drake) == "drake (… bird, animal)"
    assert label("lorikeet, parrot, bird, animal", None) == "lorikeet (… bird, animal)"


def test_the_summary_names_a_concept_by_its_name():
    units = [Unit(label="canoe, boat, vessel, vehicle", kind="concept", tokens=[0], span=(0, 28)),
             Unit(label="dark blue", kind="colour", tokens=[1], span=(29, 38))]
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=units, c_relevance=np.array([0.87, 0.13], dtype=np.float32))
    assert [(label, kind) for label, kind, _ in summary_units(ex)] == [("canoe", "concept"), ("dark blue", "colour")]


def test_the_summary_says_which_word_of_a_concept_matched():
    """A teacher asked why "boats" found a photo "mostly because of canoe": the finest vectors read single words,
    and the one that matched read "boat" of "canoe, boat, vessel, vehicle"."""
    label = "canoe, boat, vessel, vehicle"
    offsets = [(0, 5), (7, 11), (13, 19), (21, 28), (30, 34)]  # canoe / boat / vessel / vehicle / then "dock"
    units = [Unit(label=label, kind="concept", tokens=[0, 1, 2, 3], span=(0, 28)),
             Unit(label="dock", kind="concept", tokens=[4], span=(30, 34))]

    def summary(token_relevance: list[float]) -> list[str]:
        ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                         score=1.0, c_units=units, c_relevance=np.array([0.8, 0.2], dtype=np.float32),
                         c_token_relevance=np.array(token_relevance, dtype=np.float32), c_offsets=offsets)
        return [name for name, _, _ in summary_units(ex)]

    assert summary([0.05, 0.7, 0.03, 0.02, 0.2]) == ["canoe (“boat”)", "dock"]
    assert summary([0.2, 0.2, 0.2, 0.2, 0.2]) == ["canoe", "dock"]  # a vector that read the whole concept
    assert summary([0.7, 0.05, 0.03, 0.02, 0.2]) == ["canoe", "dock"]  # the name itself matched
    assert summary([0.05, 0.35, 0.3, 0.1, 0.2]) == ["canoe", "dock"]  # no word stands out
    # The shipped vocabulary's canoe: "boat" stands in "small boat" and alone; the word is named, not its term.
    text = "canoe, small boat, boat, vessel"
    spans = [(0, 5), (7, 12), (13, 17), (19, 23), (25, 31)]
    canoe = [Unit(label=text, kind="concept", tokens=[0, 1, 2, 3, 4], span=(0, len(text)))]

    def named(token_relevance: list[float]) -> str:
        ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                         score=1.0, c_units=canoe, c_relevance=np.ones(1, dtype=np.float32), c_text=text,
                         c_token_relevance=np.array(token_relevance, dtype=np.float32), c_offsets=spans)
        return summary_units(ex)[0][0]

    assert named([0.0, 0.0, 1.0, 0.0, 0.0]) == "canoe (“boat”)"  # the "boat" of "small boat"
    assert named([0.0, 0.0, 0.6, 0.4, 0.0]) == "canoe (“boat”)"  # both of them
    assert named([0.0, 0.5, 0.5, 0.0, 0.0]) == "canoe"  # "small boat" read whole: no one word
    retriever = "golden retriever, retriever, dog"
    dog = [Unit(label=retriever, kind="concept", tokens=[0, 1, 2, 3], span=(0, len(retriever)))]
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=dog, c_relevance=np.ones(1, dtype=np.float32), c_text=retriever,
                     c_token_relevance=np.array([0.0, 0.1, 0.9, 0.0], dtype=np.float32),
                     c_offsets=[(0, 6), (7, 16), (18, 27), (29, 32)])
    assert summary_units(ex)[0][0] == "golden retriever"  # "retriever" is in its name already
    # Without token relevance (an explanation made without the item's attention), the name as before.
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=units, c_relevance=np.array([0.8, 0.2], dtype=np.float32))
    assert [name for name, _, _ in summary_units(ex)] == ["canoe", "dock"]


def test_the_summary_of_a_photo_leaves_out_the_formats_words_and_zero_shares():
    """Tester report: "Mostly because of: canoe 84%, dock 14%, boathouse 1%, dark blue 0%, colors 0%": "colors" is
    the prefix of a photo's colour words, and a 0 % share is no reason."""
    def visual(label: str, kind: str) -> Unit:
        return Unit(label=label, kind=kind, tokens=[0], span=(0, len(label)),
                    visual=VisualToken(label, kind, 0.5, (0, len(label))))

    units = [visual("canoe, boat", "concept"), visual("dock", "concept"), visual("boathouse", "concept"),
             visual("dark blue", "colour"), Unit(label="colors", kind="word", tokens=[1], span=(0, 6))]
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=units,
                     c_relevance=np.array([0.795, 0.14, 0.01, 0.005, 0.05], dtype=np.float32))
    assert [name for name, _, _ in summary_units(ex)] == ["canoe", "dock", "boathouse"]
    # On a page the same word is a word like any other.
    page = [Unit(label="colors", kind="word", tokens=[0], span=(0, 6)), Unit(label="theme", kind="word", tokens=[1],
                                                                             span=(7, 12))]
    ex = Explanation(budget=(1, 1), sim=np.ones((1, 1)), argmax=np.zeros(1, dtype=int), contributions=np.ones(1),
                     score=1.0, c_units=page, c_relevance=np.array([0.6, 0.4], dtype=np.float32))
    assert [name for name, _, _ in summary_units(ex)] == ["colors", "theme"]


def _words(text: str) -> list[Unit]:
    return [Unit(label=w, kind="word", tokens=[i], span=(i, i + 1)) for i, w in enumerate(text.split())]


def _chip_labels(html: str) -> list[str]:
    return re.findall(r">(?:[^\s<]+ )?([^<>]+?) <small", html)


def test_chips_of_a_vector_that_reads_every_word_alike_do_not_pick_the_first_four():
    """UX review (s35): q1 of "a dog on the beach" reads its five words evenly, and its chips showed "a, dog, on,
    the", leaving out "beach"; q1 of "boats at sunset on a calm lake" dropped "calm lake"."""
    units = _words("a dog on the beach")
    html = top_units(np.full(5, 0.2), units)
    assert _chip_labels(html) == ["a", "dog", "on", "the", "beach"]  # five: as short as four and "+1 more"
    units = _words("boats at sunset on a calm lake")
    html = top_units(np.full(7, 1 / 7), units)
    assert _chip_labels(html) == ["boats", "sunset", "calm", "lake"]  # content words first, in reading order
    assert ">+3 more</span>" in html and 'title="also read as much: at, on, a"' in html
    # A vector that reads some words more keeps its top four by weight, with nothing said to be left out.
    units = _words("the red canoe on a lake at dusk")
    html = top_units(np.array([0.02, 0.3, 0.28, 0.01, 0.01, 0.2, 0.1, 0.08]), units)
    assert _chip_labels(html) == ["red", "canoe", "lake", "at"]  # by weight: the cut is no tie, nothing left out
    assert "more</span>" not in html
