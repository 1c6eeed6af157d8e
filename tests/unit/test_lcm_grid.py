"""Unit tier: the labelled strip/grid drawn with Pillow (used by the LCM step sweep)."""

import pytest
from PIL import Image

from sd35wb.grid import BACKGROUND, labelled_strip, step_labels


def _solid(color, size=(32, 32)):
    return Image.new("RGB", size, color)


def test_one_row_by_default_with_each_image_under_its_label():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = labelled_strip([_solid(c) for c in colors], ["1 step", "2 steps", "3 steps"], padding=4, label_height=16)
    assert out.size == (3 * 32 + 4 * 4, 16 + 32 + 2 * 4)
    for i, c in enumerate(colors):
        x = 4 + i * 36 + 16
        assert out.getpixel((x, 4 + 16 + 16)) == c  # image centre
        band = [out.getpixel((xx, yy)) for xx in range(4 + i * 36, 4 + i * 36 + 32) for yy in range(4, 20)]
        assert any(p != BACKGROUND for p in band), f"label {i} drawn"


def test_columns_wrap_into_rows_and_mixed_sizes_are_centred():
    ims = [_solid((200, 0, 0), (32, 32)), _solid((0, 200, 0), (16, 16)), _solid((0, 0, 200), (32, 32))]
    out = labelled_strip(ims, ["a", "b", "c"], columns=2, padding=2, label_height=10)
    assert out.size == (2 * 32 + 3 * 2, 2 * (10 + 32) + 3 * 2)
    assert out.getpixel((2 + 34 + 16, 2 + 10 + 16)) == (0, 200, 0)  # small image centred in its cell
    assert out.getpixel((2 + 34 + 2, 2 + 10 + 2)) == BACKGROUND
    assert out.getpixel((2 + 16, 2 + 42 + 2 + 10 + 16)) == (0, 0, 200)  # third image on the second row


def test_long_labels_are_shortened_not_overflowing():
    out = labelled_strip([_solid((9, 9, 9))] * 2, ["a very long label that cannot fit in 32 px", "b"], padding=0,
                         label_height=14)
    assert out.size == (64, 46)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no images"):
        labelled_strip([], [])
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        labelled_strip([_solid((0, 0, 0))] * 2, ["x"])


def test_step_labels():
    assert step_labels([1, 2, 8]) == ["1 step", "2 steps", "8 steps"]
