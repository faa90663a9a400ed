"""The names of the corruptions (Hendrycks & Dietterich 2019) and their check, below both the generator
(:mod:`pcnet.experiments.corruptions`) and the published sets (:mod:`pcnet.experiments.published`)."""
from __future__ import annotations

import numbers

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
          "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
          "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + EXTRA
FAMILIES = {"noise": COMMON[0:3], "blur": COMMON[3:7], "weather": COMMON[7:10], "digital": COMMON[10:15],
            "extra": EXTRA}
SEVERITIES = (1, 2, 3, 4, 5)


def check(name, severity) -> None:
    """Raise a ValueError unless ``name`` is one of :data:`ALL` and ``severity`` an integer in 1..5 (3.0 is
    refused: it equals 3 but cannot index the constants or seed the generator)."""
    if not isinstance(name, str) or name not in ALL:
        raise ValueError(f"unknown corruption {name!r}; choose one of pcnet.experiments.corruptions.ALL: {ALL}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        fix = f"; pass int(severity)" if isinstance(severity, float) and severity in SEVERITIES else ""
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}{fix}")


def check_names(names, *, severities=SEVERITIES) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``names`` and ``severities`` as tuples, each entry checked (:func:`check`); a single string (which would be
    read letter by letter) and an empty list are refused with the fix."""
    if isinstance(names, str):
        raise ValueError(f"names must be a list of corruption names, got the string {names!r} (it would be read "
                         f"letter by letter); pass names=[{names!r}]")
    names, severities = tuple(names), tuple([severities] if isinstance(severities, numbers.Integral) else severities)
    if not names or not severities:
        raise ValueError(f"names and severities must each hold at least one entry, got names={names!r}, "
                         f"severities={severities!r}; e.g. names=['contrast'], severities=(1, 2, 3, 4, 5)")
    for name in names:
        check(name, 1)
    for severity in severities:
        check(names[0], severity)
    return names, severities
