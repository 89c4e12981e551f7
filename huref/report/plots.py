"""Inline SVG plots for the report: no external assets, no JavaScript, every label escaped."""

from __future__ import annotations

from html import escape


def _color(v: float, lo: float = -20.0, hi: float = 100.0) -> str:
    """Similarity -> colour: white at/below ``lo``, deep blue at ``hi``."""
    t = min(1.0, max(0.0, (v - lo) / (hi - lo)))
    r = int(255 - t * (255 - 24))
    g = int(255 - t * (255 - 64))
    b = int(255 - t * (255 - 160))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(
    matrix: list[list[float]],
    row_label: str,
    col_label: str,
    cell: int = 30,
    highlight: list[tuple[int, int]] | None = None,
) -> str:
    """Layer-by-layer similarity (rows: model A's layers, columns: model B's), values in cells."""
    rows = len(matrix)
    cols = len(matrix[0]) if rows else 0
    cell = max(8, min(cell, 560 // max(cols, 1), 560 // max(rows, 1)))
    left, top = 30, 22
    w, h = left + cols * cell + 10, top + rows * cell + 10
    hi = set(highlight or [])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="layer similarity: rows {escape(row_label)}, columns {escape(col_label)}">'
    ]
    for i, row in enumerate(matrix):
        parts.append(
            f'<text x="{left - 6}" y="{top + i * cell + cell * 0.62:.1f}" font-size="10" text-anchor="end">{i}</text>'
        )
        for j, v in enumerate(row):
            x, y = left + j * cell, top + i * cell
            stroke = ' stroke="#d33" stroke-width="2"' if (i, j) in hi else ' stroke="#fff" stroke-width="1"'
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_color(v)}"{stroke}>'
                f"<title>{escape(row_label)} {i} vs {escape(col_label)} {j}: {v:.1f}</title></rect>"
            )
            if cell >= 26:
                ink = "#fff" if v > 55 else "#223"
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell * 0.62:.1f}" font-size="9" fill="{ink}" '
                    f'text-anchor="middle">{v:.0f}</text>'
                )
    for j in range(cols):
        parts.append(
            f'<text x="{left + j * cell + cell / 2:.1f}" y="{top - 7}" font-size="10" text-anchor="middle">{j}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def alignment_svg(alignment: list[list[float]], n_a: int, n_b: int, label_a: str, label_b: str) -> str:
    """Two columns of layers joined by the monotone alignment, each line labelled by its score."""
    n = max(n_a, n_b, 1)
    step = max(12, min(28, 420 // n))
    h = 40 + n * step
    xa, xb, w = 120, 340, 460
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="layer alignment">'
    ]
    parts.append(f'<text x="{xa}" y="16" font-size="11" text-anchor="middle">{escape(label_a)}</text>')
    parts.append(f'<text x="{xb}" y="16" font-size="11" text-anchor="middle">{escape(label_b)}</text>')
    for i in range(n_a):
        parts.append(
            f'<circle cx="{xa}" cy="{32 + i * step}" r="4" fill="#345"/>'
            f'<text x="{xa - 10}" y="{36 + i * step}" font-size="10" text-anchor="end">{i}</text>'
        )
    for j in range(n_b):
        parts.append(
            f'<circle cx="{xb}" cy="{32 + j * step}" r="4" fill="#345"/>'
            f'<text x="{xb + 10}" y="{36 + j * step}" font-size="10">{j}</text>'
        )
    for a, b, s in alignment:
        a, b = int(a), int(b)
        col = _color(float(s), 0, 100)
        parts.append(
            f'<line x1="{xa}" y1="{32 + a * step}" x2="{xb}" y2="{32 + b * step}" stroke="{col}" stroke-width="3">'
            f"<title>{a} → {b}: {float(s):.1f}</title></line>"
        )
        mx, my = (xa + xb) / 2, 32 + (a + b) * step / 2
        parts.append(
            f'<text x="{mx:.0f}" y="{my - 3:.0f}" font-size="9" text-anchor="middle">{float(s):.1f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
