"""``samclip-train``: the Hydra entry point lives beside the run it starts (:mod:`samclip.train.runner`), so
``python -m samclip.train`` and ``torchrun -m samclip.train`` need nothing above the training layer."""

from samclip.train.runner import main

__all__ = ["main"]
