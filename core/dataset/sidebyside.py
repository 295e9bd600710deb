"""One picture of a duplicate pair, side by side and labelled, for the artist to choose from."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

HEIGHT = 512
GAP = 16
LABEL = 40


def side_by_side(left: Path, right: Path, out: Path, labels: tuple[str, str] = ("Left", "Right")) -> Path:
    """Both pictures at the same height (orientation applied, transparency on white) with their
    labels above, saved as a JPEG small enough for any chat upload limit."""
    tiles = []
    for path in (left, right):
        with Image.open(path) as im:
            im.draft("RGB", (HEIGHT, HEIGHT))
            im = ImageOps.exif_transpose(im).convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")
            tiles.append(flat.resize((max(1, round(flat.width * HEIGHT / flat.height)), HEIGHT)))
    canvas = Image.new("RGB", (tiles[0].width + tiles[1].width + GAP * 3, HEIGHT + LABEL + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=24)
    x = GAP
    for tile, label in zip(tiles, labels, strict=True):
        draw.text((x, 8), label, fill="black", font=font)
        canvas.paste(tile, (x, LABEL))
        x += tile.width + GAP
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, "JPEG", quality=85)
    return out
