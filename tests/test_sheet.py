"""Contact sheets: grid arithmetic, captions that are really drawn, and atomic PNG writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from huref.errors import UsageError
from huref.render.sheet import (
    ELLIPSIS,
    LINE_HEIGHT,
    PAD,
    PAPER,
    caption_font,
    contact_sheet,
    fit_text,
    grid_shape,
    save_png_atomic,
    sheet_size,
)


def tiles(n: int, size: int = 64) -> list[tuple[str, Image.Image]]:
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30), (120, 40, 160)]
    images = [Image.new("RGB", (size, size), colours[i % 5]) for i in range(n)]
    return [(f"model-{i}\nderived", img) for i, img in enumerate(images)]


@pytest.mark.parametrize(
    ("n", "columns", "expected"),
    [(1, None, (1, 1)), (4, None, (2, 2)), (5, None, (3, 2)), (8, 4, (4, 2)), (3, 10, (3, 1))],
)
def test_grid_shape(n: int, columns: int | None, expected: tuple[int, int]) -> None:
    assert grid_shape(n, columns) == expected


def test_sheet_size_matches_the_drawn_sheet() -> None:
    img = contact_sheet(tiles(7), columns=3, cell=100, caption_lines=["title", "subtitle"])
    # 3 columns x 3 rows of 100 px cells, 2-line captions, a 2-line header, PAD everywhere
    band = 2 * LINE_HEIGHT + PAD
    header = 2 * LINE_HEIGHT + PAD
    assert img.size == (3 * 100 + 4 * PAD, header + 3 * (100 + band) + 4 * PAD)
    assert img.size == sheet_size(7, 3, 100, label_lines=2, header_lines=2)
    assert img.mode == "RGB"


def test_thumbnails_land_in_their_cells() -> None:
    items = tiles(4, size=300)  # larger than a cell: scaled down to fit
    img = np.asarray(contact_sheet(items, columns=2, cell=50))
    band = 2 * LINE_HEIGHT + PAD
    for k, (_, tile) in enumerate(items):
        x = PAD + (k % 2) * (50 + PAD)
        y = PAD + (k // 2) * (50 + band + PAD)
        assert tuple(img[y + 25, x + 25]) == tile.getpixel((0, 0))


def test_captions_are_drawn_under_each_thumbnail() -> None:
    cell = 80
    img = np.asarray(contact_sheet(tiles(2), columns=2, cell=cell))
    for k in range(2):
        x = PAD + k * (cell + PAD)
        caption = img[PAD + cell : PAD + cell + 2 * LINE_HEIGHT + PAD, x : x + cell]
        assert (caption != PAPER).any(axis=-1).sum() > 20  # ink in the caption band
    blank = contact_sheet([("", Image.new("RGB", (cell, cell)))], cell=cell)
    band = np.asarray(blank)[PAD + cell :, :]
    assert (band == PAPER).all()  # and no ink where there is no label


def test_long_labels_are_truncated_with_an_ellipsis() -> None:
    font = caption_font()
    label = "a-very-long-model-name-" * 10
    short = fit_text(label, font, 120)
    assert short.endswith(ELLIPSIS)
    assert font.getlength(short) <= 120
    assert label.startswith(short[: -len(ELLIPSIS)])
    assert fit_text("llama", font, 120) == "llama"
    assert fit_text("\u03a9mega", font, 120) == "?mega"  # the bitmap font is Latin-1 only
    contact_sheet([(label, Image.new("RGB", (10, 10)))], cell=64)  # draws without error


def test_bad_sheet_arguments_raise_usage_error() -> None:
    with pytest.raises(UsageError):
        contact_sheet([])
    with pytest.raises(UsageError):
        contact_sheet(tiles(2), columns=0)
    with pytest.raises(UsageError):
        contact_sheet(tiles(2), cell=4)


def test_save_png_atomic_writes_a_png_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    img = contact_sheet(tiles(3), cell=40)
    out = save_png_atomic(img, tmp_path / "sheet.png")
    assert out == tmp_path / "sheet.png"
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
    with Image.open(out) as back:
        assert back.format == "PNG"
        assert back.convert("RGB").tobytes() == img.tobytes()


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sheet.png"
    save_png_atomic(Image.new("RGB", (8, 8), (1, 2, 3)), target)
    before = target.read_bytes()

    def half_written(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG\r\n")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_png_atomic(Image.new("RGB", (8, 8)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


def test_save_into_a_missing_folder_raises_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        save_png_atomic(Image.new("RGB", (8, 8)), tmp_path / "absent" / "x.png")
