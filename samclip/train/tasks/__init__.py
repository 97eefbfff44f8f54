"""One module per recipe task: the student, its frozen teachers and its losses (the loop's only contract).

SAM-CLIP and any N-teacher merge: :class:`DistillationTask`, a list of terms (:mod:`.terms`), with
:class:`SamClipTask` its two-term constructor (head_probe, multitask, res_adapt). Open-Vocabulary SAM:
:class:`Sam2ClipTask` (sam2clip) and :class:`Clip2SamTask` (clip2sam). All follow :class:`Task`.
"""

from samclip.train.tasks.base import StreamLoss, Task
from samclip.train.tasks.clip2sam import Clip2SamTask
from samclip.train.tasks.dense_term import DenseFeatureTerm
from samclip.train.tasks.distill import DistillationTask
from samclip.train.tasks.registry import Registry
from samclip.train.tasks.sam2clip import Sam2ClipTask
from samclip.train.tasks.sam_clip import SamClipTask
from samclip.train.tasks.streams import STREAM_KINDS, Micro
from samclip.train.tasks.terms import TERM_KINDS, DistillTerm, EmbeddingTerm, MaskTerm, StudentRequest

__all__ = [
    "STREAM_KINDS",
    "TERM_KINDS",
    "Clip2SamTask",
    "DenseFeatureTerm",
    "DistillTerm",
    "DistillationTask",
    "EmbeddingTerm",
    "MaskTerm",
    "Micro",
    "Registry",
    "Sam2ClipTask",
    "SamClipTask",
    "StreamLoss",
    "StudentRequest",
    "Task",
]
