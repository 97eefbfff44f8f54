"""Training: config -> objects (``builder``), a recipe's task, the generic step and loop, checkpoints,
tracking and the one module that touches ``torch.distributed``.

A recipe is a task class in :mod:`samclip.train.tasks` plus its model parts and stage configs; the
loop never asks which recipe it runs.
"""

from samclip.train.runner import main, run

__all__ = ["main", "run"]
