"""Skip-and-count for the bad samples every large crawl contains; a stop only when the skip rate says the data is broken."""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger(__name__)

# Counter keys are "skipped/<kind>"; the kinds a stream may report:
SKIP_KINDS = (
    "no_image",  # a sample without an image file
    "truncated_image",
    "undecodable_image",
    "missing_json",  # SA-1B image without its annotation file
    "malformed_json",  # annotation file that does not parse or lacks SA-1B's fields
    "malformed_rle",  # run lengths that do not sum to h*w, or a size that is not the image's
    "no_usable_annotation",  # no mask above the minimum area (after resizing)
    "unreadable_shard",  # a shard that fails to open or breaks mid-way; the rest of it is lost
)
NUM_LOGGED_PER_KIND = 10  # then only every 1000th, so a bad source cannot flood the log


class BadSample(Exception):
    """Raised by a sample decoder for input that should be skipped and counted."""

    def __init__(self, kind: str, detail: str = "") -> None:
        assert kind in SKIP_KINDS, kind
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


class SkipRateExceeded(RuntimeError):
    """The fraction of skipped samples is above the configured limit: the data, not a sample, is broken."""


class SkipTracker:
    """Counts samples seen and skipped in one worker; logs skips and enforces ``max_skip_fraction``.

    The rate is checked over this worker's samples once ``min_samples`` have been seen, so one bad sample
    early on cannot stop a run. This worker's view restarts every epoch; the trainer checks the same limit
    over the whole run, all workers and ranks (:func:`check_skip_rate` on the streams' run-long counts).
    """

    def __init__(self, stream_name: str, max_skip_fraction: float, min_samples: int) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.stream_name = stream_name
        self.max_skip_fraction = max_skip_fraction
        self.min_samples = max(1, min_samples)
        self.num_seen = 0
        self.num_skipped = 0
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._pending_seen = 0

    def seen(self) -> None:
        self.num_seen += 1
        self._pending_seen += 1

    def skip(self, kind: str, shard: str, key: str, detail: str = "") -> None:
        """Count one skipped sample (or one lost shard remainder) and stop the run if the rate is too high."""
        name = f"skipped/{kind}"
        self.totals[name] += 1
        self._pending[name] += 1
        self.num_skipped += 1
        count = self.totals[name]
        if count <= NUM_LOGGED_PER_KIND or count % 1000 == 0:
            logger.warning(
                "%s: skipped sample %r in shard %s (%s%s) [%d of this kind in this worker]",
                self.stream_name,
                key,
                shard,
                kind,
                f": {detail}" if detail else "",
                count,
            )
        seen = max(self.num_seen, self.num_skipped)
        if seen >= self.min_samples and self.num_skipped > self.max_skip_fraction * seen:
            raise SkipRateExceeded(
                f"{self.stream_name}: {self.num_skipped} of {seen} samples skipped "
                f"({self.num_skipped / seen:.1%} > max_skip_fraction={self.max_skip_fraction:.1%}); "
                f"last bad sample {key!r} in shard {shard} ({kind}{': ' + detail if detail else ''}); "
                f"counts: {dict(self.totals)}"
            )

    def take_pending(self) -> dict[str, int]:
        """Counts since the last call: they travel with each batch so only consumed batches are counted.

        ``"seen"`` is the number of samples read (good or bad) since the last call.
        """
        pending = dict(self._pending)
        if self._pending_seen:
            pending["seen"] = self._pending_seen
        self._pending.clear()
        self._pending_seen = 0
        return pending


def check_skip_rate(
    stream_name: str, num_seen: int, num_skipped: int, max_skip_fraction: float, min_samples: int
) -> None:
    """``SkipRateExceeded`` when ``num_skipped`` of ``num_seen`` (counts over the whole run) is above the limit."""
    if num_seen >= max(1, min_samples) and num_skipped > max_skip_fraction * num_seen:
        raise SkipRateExceeded(
            f"{stream_name}: {num_skipped} of {num_seen} samples skipped over the run, all ranks and workers "
            f"({num_skipped / num_seen:.1%} > data.{stream_name}.max_skip_fraction={max_skip_fraction:.1%}); "
            "the log names the shard and key of each bad sample"
        )
