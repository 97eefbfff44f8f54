"""SA-1B masks as resized run pieces: boxes, points and masks in the resized frame, straight from COCO RLE runs.

Distillation only places prompts on the masks, so a 1500x2250 mask is never materialised: its runs are cut
at column boundaries into pieces ``(source column, rows [r0, r1))``, and each piece maps to a rectangle of
the resized frame under the same centre-aligned nearest neighbour as ``sa1b.decode_masks`` (target pixel
(i, j) samples source pixel (rows[i], cols[j])). The rectangles are exactly the resized mask's pixels, so
boxes are exact, points are uniform over the resized mask, and a mask is painted only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from samclip.data.sa1b import nearest_indices


@dataclass(frozen=True)
class ResizedFrame:
    """Source size, target size and the source row/column behind each target row/column."""

    height: int
    width: int
    out_height: int
    out_width: int
    rows: np.ndarray  # [out_height] source row of each target row (nondecreasing)
    cols: np.ndarray  # [out_width] source column of each target column (nondecreasing)

    @classmethod
    def of(cls, height: int, width: int, out_height: int, out_width: int) -> ResizedFrame:
        return cls(
            height,
            width,
            out_height,
            out_width,
            nearest_indices(height, out_height),
            nearest_indices(width, out_width),
        )


@dataclass(frozen=True)
class RunMask:
    """One mask in the resized frame as disjoint rectangles rows [i0, i1) x columns [j0, j1)."""

    i0: np.ndarray
    i1: np.ndarray
    j0: np.ndarray
    j1: np.ndarray

    @property
    def num_pixels(self) -> int:
        return int(((self.i1 - self.i0) * (self.j1 - self.j0)).sum())

    def box(self) -> np.ndarray:
        """Tight xyxy box, inclusive pixel indices (``prompts_sampling.mask_boxes``' convention)."""
        return np.array(
            [self.j0.min(), self.i0.min(), self.j1.max() - 1, self.i1.max() - 1], dtype=np.float32
        )

    def points(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` (x, y) pixels drawn uniformly (distinct when the mask is large enough): [count, 2].

        The same ``rng`` call as ``prompts_sampling.points_in_mask`` (an index among the mask's pixels),
        so both consume the generator alike; the pixels are enumerated rectangle by rectangle instead.
        """
        heights = self.i1 - self.i0
        sizes = heights * (self.j1 - self.j0)
        total = int(sizes.sum())
        picks = rng.choice(total, size=count, replace=total < count)
        ends = np.cumsum(sizes)
        piece = np.searchsorted(ends, picks, side="right")
        offset = picks - (ends[piece] - sizes[piece])
        xs = self.j0[piece] + offset // heights[piece]
        ys = self.i0[piece] + offset % heights[piece]
        return np.stack([xs, ys], axis=1).astype(np.float32)

    def paint(self, out_height: int, out_width: int) -> np.ndarray:
        """The mask as [out_height, out_width] bool."""
        column_major = np.zeros(out_width * out_height, dtype=bool)
        widths = self.j1 - self.j0
        if widths.size:
            # One column-major interval per (rectangle, column): +1 where it starts, -1 where it ends,
            # summed over the span the mask covers only.
            piece = np.repeat(np.arange(widths.size), widths)
            column = self.j0[piece] + (np.arange(piece.size) - np.repeat(np.cumsum(widths) - widths, widths))
            starts, ends = column * out_height + self.i0[piece], column * out_height + self.i1[piece]
            low, high = int(starts.min()), int(ends.max())
            toggles = (
                np.bincount(starts - low, minlength=high - low)
                - np.bincount(ends - low, minlength=high - low + 1)[: high - low]
            )
            column_major[low:high] = np.cumsum(toggles) > 0
        return column_major.reshape(out_width, out_height).T


def resize_runs_many(runs: np.ndarray, per_mask: np.ndarray, frame: ResizedFrame) -> list[RunMask]:
    """:func:`resize_runs` of several masks whose runs are concatenated (``per_mask`` runs each).

    The masks are laid end to end as one mask of ``len(per_mask) * width`` columns: each one's runs sum
    to h*w, so its pixels keep their column-major order; a mask with an odd number of runs (ending on
    background) gets an empty foreground run, so that the next one starts on background.
    """
    height, width = frame.height, frame.width
    odd = np.flatnonzero(per_mask % 2 == 1)
    runs = np.insert(runs, (np.cumsum(per_mask))[odd], 0)
    bounds = np.cumsum(runs)
    starts, ends = bounds[0::2], bounds[1::2]
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    first_col, last_col = starts // height, (ends - 1) // height
    spans = last_col - first_col + 1
    run = np.repeat(np.arange(starts.size), spans)
    global_col = first_col[run] + (np.arange(run.size) - np.repeat(np.cumsum(spans) - spans, spans))
    r0 = np.where(global_col == first_col[run], starts[run] - global_col * height, 0)
    r1 = np.where(global_col == last_col[run], ends[run] - global_col * height, height)
    mask, col = np.divmod(global_col, width)
    i0, i1 = np.searchsorted(frame.rows, r0), np.searchsorted(frame.rows, r1)
    j0, j1 = np.searchsorted(frame.cols, col), np.searchsorted(frame.cols, col, side="right")
    visible = (i1 > i0) & (j1 > j0)
    mask, i0, i1, j0, j1 = mask[visible], i0[visible], i1[visible], j0[visible], j1[visible]
    cuts = np.searchsorted(mask, np.arange(per_mask.size + 1))
    return [RunMask(i0[a:b], i1[a:b], j0[a:b], j1[a:b]) for a, b in pairwise(cuts)]


def resize_runs(runs: np.ndarray, frame: ResizedFrame) -> RunMask:
    """COCO run lengths of a ``frame.height x frame.width`` mask -> its nearest-resized rectangles."""
    return resize_runs_many(runs, np.array([runs.size]), frame)[0]
