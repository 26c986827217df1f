"""The app with a vision-language checkpoint (what a user with a GPU and the Hub runs): a tiny random Qwen2.5-VL
or Idefics3 MetaEmbed indexes photos, a PDF and a text file through the product's own ingest, searches at every
preset budget, explains every result (with the photo overlay) and finds more like a photo. The model tests
check the encoder; this checks that the product around it takes a VLM as it takes MetaEmbed-Mini."""

from __future__ import annotations

import shutil

import pytest
import torch

from app.server import create_app
from app.ui.model_tab import model_info
from app.ui.search_tab import explain_panel
from model.metaembed import MetaEmbed
from tests.helpers import EXAMPLES, make_pdf
from tests.model.backbones.test_vlm import build_idefics3, build_qwen, make_config, perturb_trained

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["qwen2.5-vl", "idefics3"])
def test_a_vlm_checkpoint_indexes_searches_and_explains_in_the_app(family, tmp_path):
    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    build_idefics3(backbone) if family == "idefics3" else build_qwen(backbone, family)
    model = MetaEmbed.from_config(make_config(family, str(backbone)), device="cpu")
    perturb_trained(model)  # trained-looking LoRA and meta tokens, so the vectors differ by content
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    files = tmp_path / "files"
    files.mkdir()
    for name in ("owl.jpg", "tabby-cat.jpg"):
        shutil.copy(EXAMPLES / name, files / name)
    (files / "guide.pdf").write_bytes(make_pdf([[(72, 700, 20, "Harbour guide"),
                                                 (72, 650, 12, "Boats rest in the harbour at sunset.")]]))
    (files / "note.txt").write_text("A red cat sleeps on the roof of the house.")

    studio, demo = create_app(str(checkpoint), tmp_path / "data", sample_dir=None, wait_for_samples=True,
                              log=lambda *a: None)
    try:
        assert studio.engine.config.backbone == family
        assert "| images read by | its own vision tower |" in model_info(studio)  # not "none (text only)"
        report = studio.index_files(studio.local, sorted(files.iterdir()))
        assert len(report["indexed"]) == 4 and report["errors"] == []
        assert studio.stats(studio.local)["kinds"] == {"image": 2, "pdf_page": 1, "text": 1}

        query = studio.encode_query("a red cat")
        assert query.vectors.shape == (4, 32)  # R_q x D of the tiny config
        rankings = []
        for budget in studio.engine.presets:
            hits = studio.search(query, None, *budget)
            assert sorted(h.title for h in hits) == ["guide.pdf", "note.txt", "owl.jpg", "tabby-cat.jpg"]
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            rankings.append([round(h.score, 4) for h in hits])
        assert len(set(map(tuple, rankings))) == len(rankings)  # every budget scores with its own vectors

        budget = studio.engine.presets[-1]
        for hit in studio.search(query, None, *budget):
            (title, _, overlay, _, heat, bars, _, _), table = explain_panel(studio, hit.collection, hit.id, query,
                                                                         *budget, None)
            assert hit.title in title and heat is not None and bars is not None and "<table" in table
            # Photos and rendered pages get their overlay; a text file has no picture.
            assert (overlay["value"] is not None) == (not hit.title.endswith(".txt"))

        photo = next(h for h in studio.search(query, None, *budget) if h.title == "owl.jpg")
        similar = studio.search(studio.more_like_this(photo.collection, photo.id, None), None, *budget)
        assert len(similar) == 3 and photo.id not in [h.id for h in similar]  # not the photo itself
    finally:
        demo.close()
        studio.close()
