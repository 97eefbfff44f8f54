"""SA-1B samples as Meta distributes them: ``sa_<id>.jpg`` + ``sa_<id>.json`` with COCO-RLE masks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from samclip.data.bad_samples import BadSample

# What a malformed annotation file raises on its way through json, int() and our checks: RecursionError
# for deeply nested json, OverflowError for a size of 1e999 (inf) given to int(), the rest for wrong types.
SAMPLE_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError)
_SA_KEY = re.compile(r"(?:^|/)sa_(\d+)$")


def image_id_from_key(key: str) -> int | None:
    """``sa_123`` (or ``./sa_123``) -> 123; None for a key that is not an SA-1B image."""
    match = _SA_KEY.search(key)
    return int(match.group(1)) if match else None


def rle_counts(counts: str | bytes) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' ``rleToString``).

    Written out because pycocotools exposes no way to read the runs, and its decoder does not check
    them: runs summing to less than h*w leave uninitialised pixels in the mask.
    """
    data = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (data < 48).any() or (data > 48 + 63).any():
        raise ValueError("RLE string has characters outside the 6-bit alphabet")
    chars = data.astype(np.int64) - 48
    ends = np.flatnonzero((chars & 0x20) == 0)  # a number ends at the first char without the 'more' bit
    if ends.size == 0 or ends[-1] != chars.size - 1:
        raise ValueError("RLE string ends inside a number")
    number = np.repeat(np.arange(ends.size), np.diff(np.concatenate([[-1], ends])))
    first = np.concatenate([[0], ends[:-1] + 1])
    position = np.arange(chars.size) - first[number]
    values = np.add.reduceat((chars & 0x1F) << (5 * position), first)
    negative = (chars[ends] & 0x10) != 0  # sign bit of each number's last 5-bit group
    values[negative] -= np.int64(1) << (5 * (position[ends][negative] + 1))
    # From the fourth run on, runs are stored as differences to the run two before.
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:] if values.size > 3 else runs[3::2]
    runs[4::2] = np.cumsum(values[2::2])[1:] if values.size > 4 else runs[4::2]
    return runs


def _segmented_cumsum(values: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each index of ``segment_starts`` (sorted, starting with 0)."""
    total = np.cumsum(values)
    before = total[segment_starts] - values[segment_starts]
    lengths = np.diff(np.append(segment_starts, values.size))
    return total - np.repeat(before, lengths)


def rle_counts_many(counts: list[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`rle_counts` of several strings at once: (all runs concatenated, number of runs per string).

    One pass of array operations for a whole image's masks instead of one per mask. None when any string
    is malformed (empty, outside the alphabet, ending inside a number): :func:`rle_counts` then says which.
    """
    lengths = np.array([len(c) for c in counts], dtype=np.int64)
    if lengths.size == 0 or (lengths == 0).any():
        return None
    data = np.frombuffer(b"".join(counts), dtype=np.uint8)
    if (data < 48).any() or (data > 48 + 63).any():
        return None
    chars = data.astype(np.int64) - 48
    string_last = np.cumsum(lengths) - 1
    if (chars[string_last] & 0x20).any():
        return None
    ends = np.flatnonzero((chars & 0x20) == 0)
    first = np.concatenate([[0], ends[:-1] + 1])
    position = np.arange(chars.size) - np.repeat(first, ends - first + 1)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), first)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends][negative] + 1))
    per_string = np.bincount(np.searchsorted(string_last, ends), minlength=len(counts))
    index = np.arange(values.size) - np.repeat(np.cumsum(per_string) - per_string, per_string)
    runs = values.copy()
    # From the fourth run of each string on: differences to the run two before, i.e. sums along the
    # odd runs from run 1 and along the even runs from run 2, restarting at every string.
    for parity, chain_start in ((1, 1), (0, 2)):
        chain = np.flatnonzero((index % 2 == parity) & (index >= chain_start))
        if chain.size:
            starts = np.flatnonzero(index[chain] == chain_start)
            runs[chain] = _segmented_cumsum(values[chain], starts)
    return runs, per_string


def check_rle(segmentation: object, height: int, width: int) -> dict:
    """A valid compressed RLE of an ``height x width`` mask, or ``BadSample('malformed_rle')``."""
    return check_rle_runs(segmentation, height, width)[0]


def check_rle_runs(segmentation: object, height: int, width: int) -> tuple[dict, np.ndarray]:
    """:func:`check_rle` and the run lengths it checked (column-major, starting with background)."""
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise BadSample("malformed_rle", f"segmentation is not an RLE dict: {str(segmentation)[:80]}")
    size, counts = segmentation["size"], segmentation["counts"]
    if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
        raise BadSample("malformed_rle", f"RLE size {size} is not the image's {[height, width]}")
    if not isinstance(counts, (str, bytes)):
        raise BadSample("malformed_rle", "uncompressed RLE counts (SA-1B stores compressed strings)")
    try:
        runs = rle_counts(counts)
    except ValueError as exn:
        raise BadSample("malformed_rle", str(exn)) from exn
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise BadSample("malformed_rle", f"run lengths sum to {int(runs.sum())}, not h*w = {height * width}")
    rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return rle, runs


def check_rles_runs(
    segmentations: list[object], height: int, width: int
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """:func:`check_rle_runs` of several masks at once: (RLEs, runs concatenated, runs per mask).

    Raises ``BadSample('malformed_rle')`` with the message of the first bad one.
    """
    rles = []
    for segmentation in segmentations:
        ok = isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes))
        if (
            not ok
            or not isinstance(segmentation.get("size"), (list, tuple))
            or list(segmentation["size"]) != [height, width]
        ):
            check_rle_runs(segmentation, height, width)  # raises the precise error
        counts = segmentation["counts"]
        rles.append(
            {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        )
    decoded = rle_counts_many([r["counts"] for r in rles])
    if decoded is not None:
        runs, per_mask = decoded
        starts = np.cumsum(per_mask) - per_mask
        if not (runs < 0).any() and (np.add.reduceat(runs, starts) == height * width).all():
            return rles, runs, per_mask
    for segmentation in segmentations:
        check_rle_runs(segmentation, height, width)
    raise AssertionError("rle_counts_many refused strings that rle_counts accepts")


@dataclass
class Sa1bRecord:
    image_id: int
    height: int
    width: int
    annotations: list[dict]


def parse_annotation_file(data: bytes) -> Sa1bRecord:
    """``sa_<id>.json`` -> its image entry and annotations, or ``BadSample('malformed_json')``."""
    try:
        doc = json.loads(data)
        image = doc["image"]
        record = Sa1bRecord(
            int(image["image_id"]), int(image["height"]), int(image["width"]), doc["annotations"]
        )
    except SAMPLE_ERRORS as exn:
        raise BadSample("malformed_json", f"{type(exn).__name__}: {str(exn)[:200]}") from exn
    if not isinstance(record.annotations, list) or record.height <= 0 or record.width <= 0:
        raise BadSample("malformed_json", "annotations is not a list or the image size is not positive")
    return record


def annotation_area(annotation: dict) -> float:
    area = annotation.get("area")
    if isinstance(area, (int, float)):
        return float(area)
    return float(mask_utils.area(annotation["segmentation"]))


def nearest_indices(source_size: int, target_size: int) -> np.ndarray:
    """Source index of each target pixel under centre-aligned nearest neighbour (torch's ``nearest-exact``)."""
    return np.minimum(
        ((np.arange(target_size) + 0.5) * (source_size / target_size)).astype(np.int64), source_size - 1
    )


def decode_masks(rles: list[dict], height: int, width: int, out_height: int, out_width: int) -> np.ndarray:
    """pycocotools-decoded masks resized by centre-aligned nearest neighbour: [N, out_height, out_width] bool.

    Centre-aligned so mask pixels stay on the pixels of the bilinear-resized image. One mask at a time:
    32 full-resolution SA-1B masks at once would be ~110 MB per image.
    """
    rows = nearest_indices(height, out_height)
    cols = nearest_indices(width, out_width)
    out = np.empty((len(rles), out_height, out_width), dtype=np.uint8)
    for i, rle in enumerate(rles):
        column_major = mask_utils.decode([rle])[:, :, 0].T  # pycocotools decodes Fortran order: [w, h] C view
        out[i] = column_major[cols][:, rows].T  # whole source columns first: contiguous copies
    return out.view(bool)
