"""One module per recipe task: the student, its frozen teachers and its losses (the loop's only contract).

SAM-CLIP: :class:`SamClipTask` (head_probe, multitask, res_adapt). Open-Vocabulary SAM:
:class:`Sam2ClipTask` (sam2clip) and :class:`Clip2SamTask` (clip2sam). All follow :class:`Task`.
"""

from samclip.train.tasks.base import StreamLoss, Task
from samclip.train.tasks.clip2sam import Clip2SamTask
from samclip.train.tasks.sam2clip import Sam2ClipTask
from samclip.train.tasks.sam_clip import SamClipTask

__all__ = ["Clip2SamTask", "Sam2ClipTask", "SamClipTask", "StreamLoss", "Task"]
