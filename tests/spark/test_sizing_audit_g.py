"""Audit G, sizing rules: a file is measured by its whole size (footer, page indexes, magic included) when the
sizing job knows it, so files whose row groups fit the block but whose bytes do not are rewritten."""

from __future__ import annotations

from etl.sizing_rules import keep_cut_files, next_bytes_per_row, too_big

BLOCK = 64 << 10
# What parquet-mr wrote to webhdfs:// for a 64 KiB block (3 columns, 150-byte blobs): each file's row groups
# total 62,4xx bytes, under the block, but the file is 65,9xx bytes, and parquet-mr cut it into 380 + 12 rows.
CUT = [[(380, 60316), (12, 2176)], [(380, 60303), (12, 2199)], [(380, 60324), (12, 2186)], [(380, 60258), (12, 2189)]]
CUT_SIZES = [65903, 65913, 65921, 65858]


def test_files_over_the_block_with_their_footers_are_too_big():
    assert too_big(CUT, BLOCK) == []  # the row groups alone fit: what the job measured before
    bad = too_big(CUT, BLOCK, sizes=CUT_SIZES)
    assert bad == [(392, size) for size in CUT_SIZES]
    # The rewrite is sized from the whole files, so its files leave room for their footers.
    following = next_bytes_per_row(159.0, bad, 159.4)
    assert following > 65921 / 392
    # Cut into a group and a tail of a few rows: a rewrite fills more, so the attempt is not kept.
    assert not keep_cut_files(CUT, BLOCK, shrink=159.0 / following, sizes=CUT_SIZES)


def test_a_file_that_fits_with_its_footer_is_not_too_big():
    assert too_big([[(380, 60316)]], BLOCK, sizes=[62000]) == []
    assert too_big([[(1, 70000)]], BLOCK, sizes=[72000]) == []  # one row over the block: no layout splits it
    # One group under the block whose footer spills over: too big, but kept rather than rewritten smaller.
    one_group = [[(392, 62492)]] * 4
    assert too_big(one_group, BLOCK, sizes=CUT_SIZES) == [(392, size) for size in CUT_SIZES]
    assert keep_cut_files(one_group, BLOCK, shrink=0.93, sizes=CUT_SIZES)
