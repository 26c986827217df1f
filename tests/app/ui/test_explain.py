"""app.ui.explain.summary_units: the "Mostly because of" words of a result."""

from __future__ import annotations

import numpy as np

from app.ui.explain import Explanation, Unit, summary_units


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
