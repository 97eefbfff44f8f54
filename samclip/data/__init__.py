"""The two training streams: D_CLIP (img2dataset webdataset shards) and D_SAM (SA-1B tars), read as stored."""

from samclip.data.bad_samples import SKIP_KINDS, BadSample, SkipRateExceeded
from samclip.data.batches import ClipBatch, SamBatch
from samclip.data.clip_stream import ClipStream, clip_eval_transform, clip_train_transform
from samclip.data.device_prefetch import DevicePrefetcher
from samclip.data.manifest import read_manifest, split_subset, write_manifest
from samclip.data.resolution import VariableResolutionSchedule, per_rank_batch_size
from samclip.data.sam_stream import SamStream
from samclip.data.synth import SyntheticData, make_synthetic_data

__all__ = [
    "SKIP_KINDS",
    "BadSample",
    "ClipBatch",
    "ClipStream",
    "DevicePrefetcher",
    "SamBatch",
    "SamStream",
    "SkipRateExceeded",
    "SyntheticData",
    "VariableResolutionSchedule",
    "clip_eval_transform",
    "clip_train_transform",
    "make_synthetic_data",
    "per_rank_batch_size",
    "read_manifest",
    "split_subset",
    "write_manifest",
]
