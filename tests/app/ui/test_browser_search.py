"""The Search tab in Chromium, on a small server of its own (six sample photos, one file of the visitor's):
what only a browser shows of the query image, the gallery's highlight, the budget boxes and the examples."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from tests.app.ui.test_browser import (
    ARGS,
    CHROMIUM,
    TIMEOUT,
    captions,
    free_port,
    model_checkpoint,
    open_tab,
    wait_for_new_captions,
)
from tests.helpers import EXAMPLES

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")]
# "hills" ranks these differently at the small budgets (the bundled checkpoint): the highlight test needs that.
SAMPLES = ("owl.jpg", "boats-at-sunset.jpg", "hot-air-balloon-in-the-sky.jpg", "mountain-lake.jpg", "green-hills.jpg",
           "niagara-falls.jpg")


@pytest.fixture(scope="module")
def app(tmp_path_factory, test_checkpoint):
    from playwright.sync_api import sync_playwright

    from app.server import create_app, launch

    root = tmp_path_factory.mktemp("search-browser")
    samples = root / "samples"
    samples.mkdir()
    for name in SAMPLES:
        shutil.copy(EXAMPLES / name, samples / name)
    shutil.copy(EXAMPLES / "tabby-cat.jpg", root / "tabby-cat.jpg")
    (root / "broken.jpg").write_text("a text file, not a picture")
    studio, demo = create_app(model_checkpoint(test_checkpoint), root / "data", sample_dir=samples,
                              wait_for_samples=True, log=lambda *a: None)
    studio.index_files(studio.local, [root / "tabby-cat.jpg"])  # the visitor's own file: samples off by default
    port = free_port()
    launch(studio, demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT)
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith((f"http://127.0.0.1:{port}/",
                                                                                 "data:", "blob:")) else r.abort())
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#me-query textarea")
        # The page's load event unticks the samples box (the visitor has a file): wait for it, or a test that
        # ticks the box first has it unticked under it.
        page.wait_for_function("() => document.querySelector('#me-search-samples input')?.checked === false")
        yield SimpleNamespace(page=page, studio=studio, root=root)
        browser.close()
    demo.close()
    studio.close()


def samples_box(page):
    return page.locator("#me-search-samples input")  # the Scaling tab has a box of that name too


def search(page, text: str) -> list[str]:
    before = captions(page)
    page.fill("#me-query textarea", text)
    page.click("#me-search")
    page.wait_for_function("(t) => document.querySelector('#me-results-caption').innerText.includes(t)", arg=text)
    return wait_for_new_captions(page, before) if before else captions(page)


def test_an_example_searches_the_samples_it_is_about(app):
    """Item 8: with files of their own the box starts unticked, and an example found nothing close."""
    page = app.page
    from playwright.sync_api import expect

    expect(samples_box(page)).not_to_be_checked(timeout=TIMEOUT)  # turned off: the visitor has a file
    # The Scaling tab measures the same collections, so its box starts the same (it stayed ticked).
    open_tab(page, "Scaling")
    expect(page.locator("#me-scaling-samples input")).not_to_be_checked(timeout=TIMEOUT)
    open_tab(page, "Search")
    page.get_by_role("button", name="hot air balloon").first.click()
    page.wait_for_function("document.querySelector('#me-results-caption').innerText.includes('hot air balloon')")
    page.wait_for_function(f"document.querySelectorAll('#me-results .caption-label').length === {len(SAMPLES) + 1}")
    assert samples_box(page).is_checked()
    assert any(c.endswith("· sample") for c in captions(page))


def test_the_highlight_follows_the_open_result(app):
    """Item 3: the outline stayed on tile #2 after a budget change re-ranked another item there."""
    page = app.page
    presets = app.studio.engine.presets
    if not samples_box(page).is_checked():  # ticked by the example test before; this test also runs alone
        samples_box(page).check()
    full = search(page, "hills")
    page.locator("#me-results .thumbnail-item").nth(1).click()
    page.wait_for_selector("#me-why-table table", state="visible")
    opened = full[1].split(" · ")[1]

    def highlighted() -> list[str]:
        return page.evaluate("[...document.querySelectorAll('#me-results .thumbnail-item.selected')]"
                             ".map(e => e.querySelector('.caption-label').innerText.trim())")

    assert [c.split(" · ")[1] for c in highlighted()] == [opened]
    seen = set()
    for index in range(len(presets) - 1):  # every budget: the highlight is on the opened item, or nowhere
        page.locator("#me-preset input[type=range]").fill(str(index))
        rq, rc = presets[index]
        page.wait_for_function(f"document.querySelector('#me-why-title').innerText.includes('({rq}, {rc})')")
        page.wait_for_timeout(300)
        now = [c.split(" · ")[1] for c in highlighted()]
        on_page = any(opened in c for c in captions(page))
        assert now == ([opened] if on_page else []), (presets[index], now, captions(page))
        seen.add(next((i for i, c in enumerate(captions(page)) if opened in c), None))
    assert seen - {1}, seen  # the re-ranks moved the opened item (or it left the page): the test means something
    assert opened in page.inner_text("#me-why-title")


def test_typed_budgets_are_clamped_and_a_preset_moves_the_slider(app):
    """Item 4: 99 or 0 typed into r_q showed "Error" and logged a traceback."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = app.page
    engine = app.studio.engine
    search(page, "an owl")
    page.get_by_text("Advanced: any budget").click()
    box = page.locator("#me-rq input[type=number]")
    for typed, expected in (("99", engine.num_query_vectors), ("0", 1)):
        # A late update from the search before can put the old value back into the box between the fill and
        # Enter (seen 1 run in 9), so the typing is retried; the clamped value must still show within 3 tries.
        for attempt in range(3):
            box.fill(typed)
            box.press("Enter")
            try:
                page.wait_for_function("(v) => document.querySelector('#me-rq input[type=number]').value === v",
                                       arg=str(expected), timeout=10_000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        assert "Error" not in page.inner_text("body")
        assert f"Budget ({expected}," in page.inner_text(".me-budget")
    # A trained preset typed into both boxes moves the main slider's handle to it.
    index = 1
    rq, rc = engine.presets[index]
    page.locator("#me-rc input[type=number]").fill(str(rc))
    page.locator("#me-rc input[type=number]").press("Enter")
    box.fill(str(rq))
    box.press("Enter")
    page.wait_for_function("(v) => document.querySelector('#me-preset input[type=range]').value === v",
                           arg=str(index))
    assert "a trained preset" in page.inner_text(".me-budget")


def test_more_like_this_closes_the_old_explanation(app):
    """Item 1: after "Search for more like this result" the panel still explained the old query's result.
    Issue 17: a new search, or more like this, left the old open result's tile outlined."""
    page = app.page
    photo = search(page, "a hot air balloon")[0].split(" · ")[1]
    page.locator("#me-results .thumbnail-item").nth(0).click()
    page.wait_for_selector("#me-why-table table", state="visible")
    page.get_by_role("button", name="Search for more like this result").click()
    # Issue 17: the photo is named (it said "your image"), and no tile keeps the old outline.
    page.wait_for_function("(t) => document.querySelector('#me-results-caption').innerText.includes(t)",
                           arg=f"the photo {photo}")
    page.wait_for_function("document.querySelector('#me-why-title').innerText.includes('Click a result')")
    assert page.locator("#me-results .thumbnail-item.selected").count() == 0
    page.wait_for_selector("#me-why-table", state="hidden")
    page.locator("#me-query-chip").scroll_into_view_if_needed()  # the chip's picture loads lazily, on screen
    page.wait_for_function("[...document.querySelectorAll('#me-chip-image img')].some(i => i.complete && "
                           "i.naturalWidth > 0)")
    page.get_by_role("button", name="✕ Remove image").click()
    page.wait_for_selector("#me-query-chip", state="hidden")
    # Issue 17: a new search, too, leaves no tile outlined where the open result was.
    page.locator("#me-results .thumbnail-item").nth(0).click()
    page.wait_for_selector("#me-why-table table", state="visible")
    search(page, "a mountain lake")
    page.wait_for_function("document.querySelector('#me-why-title').innerText.includes('Click a result')")
    assert page.locator("#me-results .thumbnail-item.selected").count() == 0


def test_a_broken_query_image_gets_a_calm_message(app, capfd):
    """Item 2: Gradio's "Could not preprocess input component ... UnidentifiedImageError" and a traceback."""
    page = app.page
    page.get_by_text("More like this: search with an image").click()
    page.locator("#me-query-image input[type=file]").set_input_files(str(app.root / "broken.jpg"))
    page.wait_for_function("document.body.innerText.includes('broken.jpg is not a readable image')")
    body = page.inner_text("body")
    assert "preprocess" not in body and "UnidentifiedImageError" not in body
    page.wait_for_selector("#me-query-chip", state="hidden")  # taken out of the query
    page.fill("#me-query textarea", "an owl")
    page.click("#me-search")
    page.wait_for_function("document.querySelector('#me-results-caption').innerText.includes('an owl')")
    assert "your image" not in page.inner_text("#me-results-caption")
    assert "Traceback" not in capfd.readouterr().err


def test_show_ranks_one_kind_at_a_time_and_says_so(app):
    """Pages win many photo queries on their words (model card, session 29): *Show* ranks photos or documents
    alone, re-ranking at once as the budget slider does, and a new search keeps the choice."""
    page = app.page

    def caption_has(text: str) -> None:
        page.wait_for_function("(t) => document.querySelector('#me-results-caption').innerText.includes(t)",
                               arg=text)

    shown = search(page, "a blue sky")  # not the search the test before ended with: new captions to wait for
    assert "among the" not in page.inner_text("#me-results-caption")
    page.locator("#me-only").get_by_label("Documents").check()  # this collection has photos only
    caption_has("there are no documents in the collection")
    assert captions(page) == []
    page.locator("#me-only").get_by_label("Photos").check()
    caption_has("among the photos")
    assert captions(page) == shown  # every item is a photo: the same ranking as among everything
    search(page, "a cat")
    caption_has("for “a cat” among the photos")
    page.locator("#me-only").get_by_label("Everything").check()
    page.wait_for_function("!document.querySelector('#me-results-caption').innerText.includes('among the')")
    assert "Error" not in page.inner_text("body")


def test_opening_a_result_brings_its_explanation_into_view(app):
    """UX review (s33): the explanation opened ~1,100 px below the clicked result, out of sight, with no cue."""
    page = app.page
    search(page, "snow on a mountain ridge")  # no other test's query: the captions change
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#me-results .thumbnail-item").nth(0).click()
    # The heading's top within the window once the (smooth) scroll has ended.
    page.wait_for_function("""() => {
        const r = document.getElementById('me-why-heading').getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight;
    }""", timeout=5_000)
    page.wait_for_selector("#me-why-table table", state="visible")
    # A review: the budget slider stayed 1,100 px above, so moving it and watching the explanation follow could
    # not go together. On a desktop its row stays pinned at the top, the heading resting below it.
    page.wait_for_timeout(800)  # the smooth scroll has ended
    row = page.locator("#me-budget-row").bounding_box()
    heading = page.locator("#me-why-heading").bounding_box()
    assert page.evaluate("window.scrollY") > 0 and row["y"] >= -1 and heading["y"] >= row["y"] + row["height"] - 1, (
        row, heading)


def test_a_query_sent_while_a_search_runs_is_searched_next(app, monkeypatch):
    """Gradio's default trigger mode dropped a press made while the last search ran: the new words sat above the
    old query's results. Encoding is slowed here so that the second press lands while the first search runs."""
    import time

    page = app.page
    encode = app.studio.encode_query

    def slow(*args, **kwargs):
        time.sleep(2)
        return encode(*args, **kwargs)

    monkeypatch.setattr(app.studio, "encode_query", slow)
    page.fill("#me-query textarea", "an owl")
    page.click("#me-search")
    page.fill("#me-query textarea", "boats at sunset")
    page.click("#me-search")  # while "an owl" is being searched
    page.wait_for_function("() => document.querySelector('#me-results-caption').innerText.includes('boats at sunset')",
                           timeout=30_000)


def assert_rests_below_the_pinned_row(page) -> None:
    """After a scroll to the results on a desktop: the caption just below the pinned budget row, or, where the
    page ends too soon to scroll that far, lower but below the row and in view."""
    row = page.locator("#me-budget-row").bounding_box()
    at = page.evaluate("""() => [document.getElementById('me-results-caption').getBoundingClientRect().top,
        window.scrollY >= document.documentElement.scrollHeight - window.innerHeight - 1, window.innerHeight]""")
    caption, at_bottom, height = at
    below = row["y"] >= -1 and caption >= row["y"] + row["height"] - 1
    assert below and (caption <= row["y"] + row["height"] + 40 or (at_bottom and caption <= height - 160)), (
        row, at)


def test_on_a_phone_a_search_brings_its_results_into_view(app):
    """A review at 390 px: the results start ~1,100 px down, below the examples and the budget, and a search
    seemed to do nothing."""
    page = app.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.evaluate("window.scrollTo(0, 0)")
        search(page, "a mountain lake")
        page.wait_for_function("() => { const r = document.getElementById('me-results-caption')"
                               ".getBoundingClientRect(); return r.top >= 0 && r.top < window.innerHeight; }",
                               timeout=10_000)
        # A search refused with a notice (nothing typed) leaves the page where it is: no new results.
        page.wait_for_timeout(1000)
        page.evaluate("window.scrollTo(0, 0)")
        page.fill("#me-query textarea", "")
        page.click("#me-search")
        page.wait_for_selector("text=type a query", timeout=10_000)
        page.wait_for_timeout(1000)
        assert page.evaluate("window.scrollY") == 0
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1000)  # the phone's smooth scroll has ended
    before = page.evaluate("window.scrollY")
    search(page, "an owl")
    page.wait_for_timeout(1000)  # a smooth scroll would have ended
    after = page.evaluate("[window.scrollY, document.getElementById('me-results-caption').getBoundingClientRect()"
                          ".top]")
    # On a desktop the results end in view either way: left where they were when in view, else (pushed down by
    # the open image box of an earlier test) brought up just below the pinned budget row.
    if after[0] != before:
        assert_rests_below_the_pinned_row(page)
    else:
        assert 0 <= after[1] <= 900 - 160, (before, after)


def test_on_a_phone_results_run_on_in_the_page_and_the_budget_slider_has_the_width(app):
    """A review at 390 px: the results sat in a 430 px box that scrolled on its own (four of up to 24 in view),
    and the budget slider shared its row with the readout (180 px for five stops, the readout in nine lines)."""
    page = app.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        if not samples_box(page).is_checked():
            samples_box(page).check()  # the six sample photos beside the visitor's one
            page.wait_for_timeout(500)  # its re-rank is out
        search(page, "a photo")
        page.wait_for_function("document.querySelectorAll('#me-results .thumbnail-item').length >= 4")
        box = page.evaluate("""() => { const g = document.querySelector('#me-results .grid-wrap');
            return [g.scrollHeight, g.clientHeight, document.querySelectorAll('#me-results .thumbnail-item').length]; }""")
        assert box[2] >= 4 and box[0] <= box[1] + 1, box  # every result in the page's flow, none scrolled away
        slider = page.locator("#me-preset").bounding_box()
        readout = page.locator(".me-budget").first.bounding_box()
        # Below the slider, not beside it.
        assert slider["width"] >= 300 and readout["y"] > slider["y"] + slider["height"] / 2, (slider, readout)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
        samples_box(page).uncheck()


def test_on_a_short_desktop_results_scrolled_to_rest_below_the_pinned_budget_row(app):
    """The final UX pass at 1024x768: a search scrolled its results only ~150 px, to under the fold: the scroll
    took the budget row's place before scrolling for where it rests pinned."""
    page = app.page
    page.set_viewport_size({"width": 1024, "height": 768})
    try:
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        search(page, "a hot air balloon over green hills")
        page.wait_for_timeout(1200)  # the smooth scroll has ended
        # Judged by where things came to rest, not by a position read before the search (Gradio may still be
        # laying the page out for the new width then): a scroll brings the caption just below the pinned row,
        # and no scroll leaves it in view.
        if page.evaluate("window.scrollY") > 0:
            assert_rests_below_the_pinned_row(page)
        else:
            caption = page.evaluate("document.getElementById('me-results-caption').getBoundingClientRect().top")
            assert 0 <= caption <= 768 - 160, caption
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_clearing_ones_collection_ticks_the_samples_box_again(app):
    """UX review (s35): the box, unticked because the visitor had a file, stayed unticked after "Clear my
    collection", and "a cat" then found an empty collection beside six sample photos."""
    from playwright.sync_api import expect

    page = app.page
    open_tab(page, "Search")
    samples_box(page).uncheck()
    open_tab(page, "Collection")
    page.wait_for_function("document.querySelector('#me-stats').innerText.includes('1 photo')")
    try:
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Clear my collection").click()
        page.wait_for_function("document.querySelector('#me-report').innerText.includes('Cleared')")
        open_tab(page, "Search")
        expect(samples_box(page)).to_be_checked(timeout=TIMEOUT)
        assert len(search(page, "a cat")) == len(SAMPLES)  # the samples are searched, not an empty collection
    finally:
        app.studio.index_files(app.studio.local, [app.root / "tabby-cat.jpg"])  # the visitor's file, for tests after
