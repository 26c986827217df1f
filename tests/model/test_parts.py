"""The `phrases` and `phrases+clusters` layouts: which part of the content each granular meta token reads
(model/parts.py)."""

import numpy as np
import pytest
import torch

from model.parts import (
    PUNCTUATION,
    clustered_mask,
    cuts,
    nested_parts,
    part_mask,
    readable_positions,
    token_clusters,
)

LEVELS = [1, 3, 4, 8, 48]  # the candidate side of the default groups


def wordpieces(text: str) -> list[str]:
    """A stand-in for WordPiece: words and punctuation apart, a word over 6 letters split as 'abcdef ##gh'."""
    out = ["[CLS]"]
    for raw in text.replace(",", " , ").replace(";", " ; ").replace(".", " . ").replace(":", " : ").split():
        out += [raw[:6], "##" + raw[6:]] if len(raw) > 6 else [raw]
    return out + ["[SEP]"]


PAGE = wordpieces("The files installed by base packages are defaults. Changes in the default files are not "
                  "important enough, as it is also policy that prompting should be reduced. In either case, "
                  "look at the postinst script and you will see how they are created")
PHOTO = wordpieces("tabby cat, tiger cat, cat, animal; sofa, couch, seat; remote control, device. colors: gray")


def test_first_part_is_the_whole_content_and_levels_nest():
    parts = nested_parts(PAGE, LEVELS, 64)
    assert parts[0] == (1, len(PAGE) - 1)  # [CLS] and [SEP] left out
    level_of = [s for s in LEVELS for _ in range(s)]
    starts = [sum(LEVELS[:i]) for i in range(len(LEVELS))]
    for coarse, fine in zip(starts, starts[1:]):
        for a, b in parts[fine:fine + level_of[fine]]:
            # Every part of a finer level lies inside one part of the coarser level.
            assert any(ca <= a and b <= cb for ca, cb in parts[coarse:coarse + level_of[coarse]]), (a, b)


def test_cuts_go_sentence_first_and_never_inside_a_word():
    order = cuts(PAGE, 40)
    assert order, "a page has boundaries to cut at"
    for c in order:
        assert not PAGE[c].startswith("##") and PAGE[c] not in PUNCTUATION
    # The first cuts are the two sentence ends, before any comma or word boundary.
    assert {PAGE[c - 1] for c in order[:2]} == {"."}


def test_photo_texts_are_cut_at_their_concepts_first():
    parts = nested_parts(PHOTO, LEVELS, 64)
    # Level 2 (3 parts) and level 3 (4 parts) cut at the concept groups (";" / "." / ":") before any comma.
    for a, _ in parts[1:8]:
        assert a == 1 or PHOTO[a - 1] in {";", ".", ":"}, PHOTO[a - 1]
    assert len(set(parts[16:])) > 10  # the finest level reaches the words


def test_punctuation_is_not_read_unless_a_part_has_nothing_else():
    tokens = ["[CLS]", "red", ",", "blue", ";", ";", "green", "[SEP]"]
    mask = part_mask([tokens], [1, 3], 4, len(tokens) + 2)[0]
    read = [[tokens[i] for i in range(len(tokens)) if mask[r, i]] for r in range(4)]
    assert read[0] == ["red", "blue", "green"]
    assert all(not set(r) & PUNCTUATION or set(r) <= PUNCTUATION for r in read)
    assert not mask[:, len(tokens):].any()  # padding is never read


def test_short_texts_repeat_their_parts():
    tokens = ["[CLS]", "fish", "[SEP]"]
    assert nested_parts(tokens, [1, 1, 2, 4, 8], 16) == [(1, 2)] * 16
    with pytest.raises(ValueError, match="fewer than"):
        nested_parts(tokens, [1, 2], 8)


def test_part_mask_shape_and_padding():
    mask = part_mask([PHOTO, PAGE], LEVELS, 64, len(PAGE) + 3)
    assert mask.dtype == torch.bool and mask.shape == (2, 64, len(PAGE) + 3)
    assert not mask[0, :, len(PHOTO):].any() and not mask[1, :, len(PAGE):].any()
    assert mask.any(-1).all()  # every meta token reads something


def _states(width: int, topic_of: dict[int, int], dim: int = 16, seed: int = 0) -> np.ndarray:
    """States whose positions in `topic_of` point near their topic's direction (others at random)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(max(topic_of.values(), default=0) + 1, dim))
    x = rng.normal(size=(width, dim))
    for pos, t in topic_of.items():
        x[pos] = topics[t] * 10 + rng.normal(size=dim) * 0.1
    return x


def test_token_clusters_group_alike_states_wherever_they_are():
    # Positions 1-6 hold three topics, interleaved: a b c a b c.
    x = _states(8, {1: 0, 2: 1, 3: 2, 4: 0, 5: 1, 6: 2})
    groups = token_clusters(x, [1, 2, 3, 4, 5, 6], 3)
    assert groups == [[1, 4], [2, 5], [3, 6]]  # not contiguous runs; ordered by first position
    assert token_clusters(x, [1, 2, 3], 5) == [[1], [2], [3]]  # no more positions than clusters: one each
    # The same states give the same groups; scaling a state (its length) changes nothing.
    y = x.copy()
    y[4] *= 3.0
    assert token_clusters(y, [1, 2, 3, 4, 5, 6], 3) == groups


def test_clustered_mask_changes_only_the_finest_level_of_the_rows_asked():
    levels = [1, 3, 4, 8, 48]
    tokens = [PAGE, PAGE]
    width = len(PAGE) + 2
    mask = part_mask(tokens, levels, 64, width)
    states = torch.from_numpy(np.stack([_states(width, {}, seed=1), _states(width, {}, seed=2)])).float()
    out = clustered_mask(mask, tokens, states, [1], levels)
    assert torch.equal(out[0], mask[0])  # a row not asked for keeps its phrase parts
    assert torch.equal(out[1, :16], mask[1, :16])  # coarser levels keep theirs
    fine = out[1, 16:]
    assert not torch.equal(fine, mask[1, 16:])
    readable = readable_positions(PAGE)
    assert len(readable) > 48
    # 48 clusters of the readable positions: each read by exactly one finest vector, nothing else read.
    assert fine.sum(0)[readable].tolist() == [1] * len(readable)
    assert fine.sum() == len(readable)
    assert all(PAGE[i] not in PUNCTUATION for i in fine.any(0).nonzero().flatten().tolist())
    # Fewer meta tokens than the finest level starts at: nothing to change.
    short = part_mask(tokens, levels, 8, width)
    assert torch.equal(clustered_mask(short, tokens, states, [0, 1], levels), short)


def test_clustered_mask_repeats_clusters_of_short_texts():
    levels = [1, 3, 4, 8, 48]
    tokens = [PHOTO]
    mask = part_mask(tokens, levels, 64, len(PHOTO))
    states = torch.from_numpy(_states(len(PHOTO), {}, seed=3)[None]).float()
    fine = clustered_mask(mask, tokens, states, [0], levels)[0, 16:]
    readable = readable_positions(PHOTO)
    assert len(readable) < 48
    assert fine.sum(-1).tolist() == [1] * 48  # one position each ...
    read = fine.nonzero()[:, 1].tolist()
    assert read == sorted(read) and sorted(set(read)) == readable  # ... in order, every one, repeated
