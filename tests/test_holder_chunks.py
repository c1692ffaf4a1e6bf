"""How a block read is cut into spans for the compute threads."""

from node.work.holder import _chunks


def test_spans_cover_every_tile_row_once_and_are_even():
    for n in range(1, 70):
        for workers in (1, 2, 4):
            spans = _chunks(n, workers)
            covered = [t for a, b in spans for t in range(a, b)]
            assert covered == list(range(n))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1
            assert len(spans) <= max(1, 2 * workers)


def test_small_blocks_stay_whole():
    assert _chunks(1, 2) == [(0, 1)]
    assert _chunks(3, 2) == [(0, 3)]
