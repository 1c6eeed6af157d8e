"""Draw docs/icon.png, the pack's icon on the Comfy Registry and in ComfyUI-Manager ([tool.comfy] Icon).

The Registry asks for a square SVG / PNG / JPG / GIF of at most 400 x 400 px. Three linked nodes
over "3.5", drawn with Pillow, so the file is reproducible:

    .tools/bin/python -m tools.make_icon
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PATH = Path(__file__).resolve().parents[1] / "docs" / "icon.png"
SIZE = 256


def draw(size: int = SIZE) -> Image.Image:
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size / 256
    d.rounded_rectangle([0, 0, size - 1, size - 1], radius=int(44 * s), fill=(32, 44, 64, 255))
    boxes = [(28, 36, 100, 84), (156, 36, 228, 84), (92, 108, 164, 156)]
    for a, b in ((0, 2), (1, 2)):  # links from the two upper nodes into the lower one
        (x0, _, x1, y1), (u0, v0, u1, _) = boxes[a], boxes[b]
        d.line([((x0 + x1) / 2 * s, y1 * s), ((u0 + u1) / 2 * s, v0 * s)], fill=(120, 200, 255, 255), width=int(6 * s))
    for x0, y0, x1, y1 in boxes:
        d.rounded_rectangle([x0 * s, y0 * s, x1 * s, y1 * s], radius=int(10 * s), fill=(70, 110, 160, 255),
                            outline=(200, 230, 255, 255), width=int(3 * s))
    font = ImageFont.load_default(size=int(64 * s))
    d.text((size / 2, 206 * s), "3.5", font=font, fill=(240, 246, 255, 255), anchor="mm")
    return im


def main() -> None:
    draw().save(PATH, optimize=True)
    print(f"{PATH.relative_to(PATH.parents[1])}: {SIZE} x {SIZE}")


if __name__ == "__main__":
    main()
