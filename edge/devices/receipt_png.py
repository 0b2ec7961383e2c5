"""Draw receipt blocks onto a 384-px image, the way a 58 mm thermal printer lays them out.

Kept apart from ``receipt`` so that the layout (used by the printer on every payout) never
imports Pillow; this module depends on the layout, never the other way round.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from edge.devices.receipt import (
    COLUMNS,
    DOTS,
    Block,
    Line,
    Qr,
    Receipt,
    Refusal,
    _place,
    blocks_for,
    qr_dot_size,
    qr_matrix,
)

CELL_W = DOTS // COLUMNS  # 12 dots: font A on a 58 mm head
CELL_H = 24
MARGIN = 16
_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/TTF"))


@lru_cache(maxsize=4)
def _font(bold: bool) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    name = "DejaVuSansMono-Bold.ttf" if bold else "DejaVuSansMono.ttf"
    for d in _FONT_DIRS:
        if (d / name).is_file():
            return ImageFont.truetype(str(d / name), 19)
    # Pillow's own font is proportional, but each glyph is drawn in its own cell below
    return ImageFont.load_default(19)


def _draw_line(line: Line) -> Image.Image:
    text = _place(line)
    img = Image.new("L", (DOTS, CELL_H), 255)
    draw = ImageDraw.Draw(img)
    font = _font(line.bold)
    # one baseline for the whole line, from a tall and a deep glyph, so letters do not dance
    _, top, _, bottom = draw.textbbox((0, 0), "Hg", font=font)
    y = (CELL_H - (bottom - top)) // 2 - top
    for col, ch in enumerate(text):
        if ch != " ":
            x = col * CELL_W + (CELL_W - font.getlength(ch)) / 2
            draw.text((x, y), ch, fill=0, font=font)
    if line.tall:
        img = img.resize((DOTS, CELL_H * 2), Image.Resampling.NEAREST)
    return img


def _draw_qr(payload: str) -> Image.Image:
    matrix = qr_matrix(payload)
    size = qr_dot_size(payload)
    n = len(matrix)
    img = Image.new("L", (DOTS, (n + 4) * size), 255)
    x0 = (DOTS - n * size) // 2
    y0 = 2 * size
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = x0 + c * size, y0 + r * size
                draw.rectangle((x, y, x + size - 1, y + size - 1), fill=0)
    return img


def draw_blocks(blocks: list[Block]) -> Image.Image:
    """One greyscale image, 384 px wide, with a small paper margin top and bottom."""
    parts = [_draw_qr(b.payload) if isinstance(b, Qr) else _draw_line(b) for b in blocks]
    height = sum(p.height for p in parts) + 2 * MARGIN
    page = Image.new("L", (DOTS, height), 255)
    y = MARGIN
    for p in parts:
        page.paste(p, (0, y))
        y += p.height
    return page


def render_png(item: Receipt | Refusal, path: str | Path, reprint: bool = False) -> Path:
    """Draw the slip as a 384-px wide image (paper width at 203 dpi) with its QR code."""
    path = Path(path)
    draw_blocks(blocks_for(item, reprint=reprint)).save(path)
    return path
