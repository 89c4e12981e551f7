"""Contact sheets: many dog portraits side by side, each captioned, for comparison by eye.

A person judges "derived or independent" by looking at a base model's dog next to its suspects'
dogs, so the sheet puts them in one image with the model name and relation under each. Captions
use Pillow's built-in bitmap font: it ships with Pillow and needs no font file or FreeType, so a
sheet looks the same everywhere. That font covers Latin-1 only; other characters become "?".
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from huref.errors import UsageError

PAD = 8  # pixels around the sheet, between cells, and between a thumbnail and its caption
LINE_HEIGHT = 12  # pixels per caption line in the bitmap font (glyphs are 11 pixels tall)
ELLIPSIS = "..."  # three dots: the bitmap font has no U+2026
PAPER = (255, 255, 255)
INK = (24, 24, 24)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def caption_font() -> Font:
    """Pillow's bitmap font (the FreeType default of newer Pillows would depend on FreeType)."""
    loader = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1
    return loader() if loader is not None else ImageFont.load_default()


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) for n cells: as square as possible unless columns is given."""
    if n < 1:
        raise UsageError("a contact sheet needs at least one image")
    if columns is not None and columns < 1:
        raise UsageError(f"columns must be at least 1, got {columns}")
    cols = min(n, columns if columns is not None else math.ceil(math.sqrt(n)))
    return cols, math.ceil(n / cols)


def sheet_size(
    n: int, columns: int | None = None, cell: int = 256, label_lines: int = 1, header_lines: int = 0
) -> tuple[int, int]:
    """(width, height) in pixels of the sheet that contact_sheet draws.

    Each cell is a cell x cell thumbnail over a caption band of label_lines lines; the header
    (caption_lines) sits above the grid; PAD pixels separate everything.
    """
    cols, rows = grid_shape(n, columns)
    band = label_lines * LINE_HEIGHT + PAD
    header = header_lines * LINE_HEIGHT + PAD if header_lines else 0
    return cols * cell + (cols + 1) * PAD, header + rows * (cell + band) + (rows + 1) * PAD


def fit_text(text: str, font: Font, width: float) -> str:
    """text, shortened with an ellipsis until it is at most width pixels wide."""
    text = text.encode("latin-1", "replace").decode("latin-1")
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + ELLIPSIS) > width:
        text = text[:-1]
    return text + ELLIPSIS if font.getlength(text + ELLIPSIS) <= width else ""


def contact_sheet(
    items: Sequence[tuple[str, Image.Image]],
    columns: int | None = None,
    cell: int = 256,
    caption_lines: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of captioned thumbnails, row by row, in the order given.

    items: (label, image) pairs; a label may hold several lines separated by newlines (say the
    model name, then its relation to the base), and every line is truncated to the cell width.
    caption_lines: lines written above the grid (say what was compared, with which renderer).
    Images of any size are scaled to fit a cell x cell square, keeping their aspect ratio.
    """
    if cell < 16:
        raise UsageError(f"cell must be at least 16 pixels, got {cell}")
    header = list(caption_lines or [])
    labels = [label.splitlines() or [""] for label, _ in items]
    n_lines = max((len(lines) for lines in labels), default=1)
    width, height = sheet_size(len(items), columns, cell, n_lines, len(header))
    cols, _ = grid_shape(len(items), columns)
    font = caption_font()
    sheet = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((PAD, PAD + i * LINE_HEIGHT), fit_text(line, font, width - 2 * PAD), INK, font)
    top = len(header) * LINE_HEIGHT + PAD if header else 0
    band = n_lines * LINE_HEIGHT + PAD
    for k, ((_, img), lines) in enumerate(zip(items, labels, strict=True)):
        x = PAD + (k % cols) * (cell + PAD)
        y = top + PAD + (k // cols) * (cell + band + PAD)
        thumb = ImageOps.contain(img.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        for j, line in enumerate(lines):
            text = fit_text(line, font, cell)
            dx = (cell - font.getlength(text)) / 2  # centred under the thumbnail
            draw.text((x + round(dx), y + cell + PAD // 2 + j * LINE_HEIGHT), text, INK, font)
    return sheet


def save_png_atomic(img: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write img as a PNG at path so that readers see the old file or the whole new one.

    The image goes to a temporary file in the same folder (so the rename stays on one file
    system), is flushed to disk, then renamed over path; on any failure the temporary file is
    removed and path is left as it was.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a picture is for sharing
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target
