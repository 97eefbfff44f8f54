"""One module per recipe task: the student, its frozen teachers and its losses (the loop's only contract)."""

from samclip.train.tasks.sam_clip import SamClipTask

__all__ = ["SamClipTask"]
