"""The checkpoint's quality against budget in the Scaling tab's chart and the Model tab's tables: the evaluation
splits, and the sample collection's small judged set as its own, labelled line and table (issue 17.11)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.evaluation import SAMPLE_SPLIT, load_quality
from app.ui.model_tab import quality_info
from app.ui.scaling_tab import quality_lines, quality_plot
from model.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id_of_folder
from model.config import MetaEmbedConfig


def studio_with(reports: dict) -> SimpleNamespace:
    config = MetaEmbedConfig.load(DEFAULT_CHECKPOINT)
    engine = SimpleNamespace(quality=reports, presets=[tuple(p) for p in config.presets], config=config)
    return SimpleNamespace(engine=engine)


@pytest.fixture(scope="module")
def bundled() -> dict:
    return load_quality(DEFAULT_CHECKPOINT, checkpoint_id_of_folder(DEFAULT_CHECKPOINT))


def test_the_sample_collection_is_its_own_labelled_line(bundled):
    studio = studio_with(bundled)
    lines = quality_lines(studio)
    label = f"sample collection: {bundled[SAMPLE_SPLIT]['queries']['all']} queries written by the team — small, " \
            "for illustration"
    assert [(line.split.split(" (")[0], line.kind, line.illustrative) for line in lines] == [
        ("dev split", "photos", False), ("dev split", "documents", False),
        ("held-out split", "photos", False), ("held-out split", "documents", False),
        (label, "photos", True), (label, "documents", True)]
    samples = bundled[SAMPLE_SPLIT]["results"]
    assert lines[4].mrr == [samples["photo"][f"{q},{c}"]["mrr"] for q, c in studio.engine.presets]
    assert lines[5].baseline == samples["document"]["baseline"]["mrr"]

    fig = quality_plot(studio)
    solid = [t for t in fig.data if t.showlegend is not False and t.legendgroup != "baseline"]
    assert [t.name for t in fig.data if t.legendgroup == "baseline"] == ["one mean-pooled vector"]  # the dotted key
    assert [t.legendgrouptitle.text for t in solid][-2:] == [label, label]
    assert {t.line.dash for t in solid[-2:]} == {"dash"} and {t.line.dash for t in solid[:-2]} == {"solid"}
    assert "held-out split (839 queries)" in {t.legendgrouptitle.text for t in solid}
    assert len({t.line.color for t in solid}) == 6  # every line its own colour


def test_the_model_tab_shows_the_sample_collection_in_a_table_of_its_own(bundled):
    text = quality_info(studio_with(bundled))
    evaluation, _, samples = text.partition("**Sample collection: 69 queries written by the team — small, for "
                                            "illustration**")
    assert samples, text
    assert "| dev split (tests/data/devset), 110 photo |" in evaluation and "| held-out split" in evaluation
    assert "sample collection (assets/examples)" not in evaluation
    assert samples.count("| sample collection (assets/examples), ") == 4 and "| held-out" not in samples
    assert "12 photos, 5 pages" in samples and "evaluation splits above" in samples


def test_a_checkpoint_with_only_a_sample_report_or_none(bundled):
    only = {SAMPLE_SPLIT: bundled[SAMPLE_SPLIT]}
    text = quality_info(studio_with(only))
    assert "Sample collection: 69 queries" in text and "evaluation splits" not in text
    assert [line.illustrative for line in quality_lines(studio_with(only))] == [True, True]
    assert quality_info(studio_with({})) == "" and quality_plot(studio_with({})) is None
