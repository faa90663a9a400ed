"""Write book/_extra/favicon.ico (the site's root icon, requested by browsers as /favicon.ico), drawn like
book/_static/favicon.svg.   python scripts/make_favicon.py"""
import pathlib

from PIL import Image, ImageDraw

OUT = pathlib.Path(__file__).resolve().parents[1] / "book" / "_extra" / "favicon.ico"


def main() -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((0, 0, 63, 63), radius=12, fill="#0173b2")
    draw.line([(16, 44), (16, 20), (28, 20)], fill="white", width=6)
    draw.arc((20, 20, 36, 36), start=-90, end=90, fill="white", width=6)
    draw.line([(28, 36), (16, 36)], fill="white", width=6)
    draw.ellipse((42, 38, 54, 50), fill="#de8f05")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    img.save(tmp, format="ICO", sizes=[(32, 32), (16, 16)])
    tmp.replace(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
