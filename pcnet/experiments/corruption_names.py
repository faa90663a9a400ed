"""The names of the corruptions (Hendrycks & Dietterich 2019) and their check, below both the generator
(:mod:`pcnet.experiments.corruptions`) and the published sets (:mod:`pcnet.experiments.published`)."""
from __future__ import annotations

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
          "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
          "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + EXTRA
FAMILIES = {"noise": COMMON[0:3], "blur": COMMON[3:7], "weather": COMMON[7:10], "digital": COMMON[10:15],
            "extra": EXTRA}
SEVERITIES = (1, 2, 3, 4, 5)


def check(name, severity) -> None:
    """Raise a ValueError unless ``name`` is one of :data:`ALL` and ``severity`` one of 1..5."""
    if name not in ALL:
        raise ValueError(f"unknown corruption {name!r}; choose one of pcnet.experiments.corruptions.ALL: {ALL}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
