"""Shard lists, their deterministic split across ranks and workers, and reading samples from them.

A *slot* is one (rank, dataloader worker) pair; there are ``world_size * num_workers`` slots. Each slot
reads an infinite, deterministic sequence of shards (see ``SlotShards``) and keeps a cursor
``(n, m)``: the n-th shard of its sequence, m raw samples into it. The cursor is all that exact resume
needs besides the step counter.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import braceexpand
import numpy as np
import webdataset as wds
from tqdm import tqdm

from samclip.data.bad_samples import SkipTracker

RawSample = dict  # webdataset's sample: {"__key__", "__url__", <extension>: bytes, ...}


def is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """A brace pattern, a shell glob or a list of paths/patterns/``pipe:`` URLs -> the flat shard list.

    Local shards must exist: a missing file in a shard list is a configuration error, reported with its
    path, not a bad sample. A local folder that holds tars (and no loose samples) stands for its tars.
    """
    items = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    expanded = [
        shard
        for item in items
        for url in braceexpand.braceexpand(item)
        for path in _glob(url)
        for shard in _tars_of_folder(path)
    ]
    if not expanded:
        raise ValueError(f"shard list {urls!r} is empty")
    missing = [u for u in expanded if is_local(u) and not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(
            f"shard list {urls!r}: {len(missing)} of {len(expanded)} shards not found, e.g. {missing[0]}"
        )
    return expanded


def _glob(url: str) -> list[str]:
    """A local shell pattern (``/data/cc3m/*.tar``) -> its sorted matches; anything else as it is."""
    # An existing path is itself, even when its name holds glob characters (Hydra's sweep dirs hold [...]).
    if not (is_local(url) and glob.has_magic(url)) or os.path.exists(url):
        return [url]
    matches = sorted(glob.glob(url))
    if not matches:
        raise FileNotFoundError(f"shard pattern {url} matches no file")
    return matches


def _tars_of_folder(url: str) -> list[str]:
    """``[url]``, or the sorted tars inside ``url`` when it is a folder of tars rather than of samples."""
    if not (is_local(url) and os.path.isdir(url)):
        return [url]
    names = sorted(os.listdir(url))
    tars = [os.path.join(url, n) for n in names if n.endswith(".tar")]
    loose = [
        n for n in names if not n.endswith(".tar") and _split_name(n)[1] in {"jpg", "jpeg", "png", "webp"}
    ]
    if not tars and not loose:
        raise ValueError(f"no shards in {url}: the folder holds neither .tar shards nor image samples")
    return tars if tars and not loose else [url]


@dataclass(frozen=True)
class SlotShards:
    """The shard sequence of one slot for one source.

    Epoch mode: the source's shards are permuted by (seed, epoch) and dealt to slots round-robin; a slot
    that exhausts its share before the epoch's last step starts it again (so every rank runs the same
    number of steps). With fewer shards than slots, every slot reads every shard but keeps only the
    samples whose index is its slot modulo the number of slots.
    Resampled mode: the n-th shard is drawn uniformly with replacement from (seed, slot, n).
    """

    shards: tuple[str, ...]
    source_index: int
    seed: int
    epoch: int
    slot: int
    num_slots: int
    resampled: bool

    @property
    def split_samples(self) -> bool:
        return len(self.shards) < self.num_slots

    def stride_offset(self) -> tuple[int, int]:
        return (self.num_slots, self.slot) if self.split_samples else (1, 0)

    def num_distinct(self) -> int:
        return len(self.shards) if self.split_samples or self.resampled else len(self._assigned())

    def _assigned(self) -> list[int]:
        perm = np.random.default_rng((self.seed, self.epoch, self.source_index)).permutation(len(self.shards))
        return (
            [int(i) for i in perm]
            if self.split_samples
            else [int(i) for i in perm[self.slot :: self.num_slots]]
        )

    def __getitem__(self, n: int) -> str:
        if self.resampled:
            draw = np.random.default_rng((self.seed, self.source_index, self.slot, n)).integers(
                len(self.shards)
            )
            return self.shards[int(draw)]
        assigned = _cached_assignment(self)
        return self.shards[assigned[n % len(assigned)]]


@lru_cache(maxsize=64)
def _cached_assignment(slot_shards: SlotShards) -> list[int]:
    return slot_shards._assigned()


def _split_name(name: str) -> tuple[str | None, str | None]:
    # The same key/extension split webdataset applies to tar members.
    return wds.tariterators.base_plus_ext(name)


def iter_tar(url: str) -> Iterator[RawSample]:
    """Samples of one tar (local path or ``pipe:`` URL) via webdataset, closing the stream at the end."""
    stream = wds.gopen(url)
    try:
        files = wds.tariterators.tar_file_expander(
            [{"url": url, "stream": stream}], handler=wds.reraise_exception, eof_value=None
        )
        yield from wds.tariterators.group_by_keys(files, handler=wds.reraise_exception)
    finally:
        stream.close()


@lru_cache(maxsize=8)
def list_directory_samples(directory: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(key, file names) of a plain directory of samples, sorted by key."""
    groups: dict[str, list[str]] = {}
    for name in sorted(os.listdir(directory)):
        key, ext = _split_name(name)
        if key is not None and ext is not None and os.path.isfile(os.path.join(directory, name)):
            groups.setdefault(key, []).append(name)
    return tuple((key, tuple(names)) for key, names in sorted(groups.items()))


def iter_directory(directory: str, start: int, stride: int, offset: int) -> Iterator[tuple[int, RawSample]]:
    # Read only the files of the samples this slot keeps; a tar has to be streamed through regardless.
    for index, (key, names) in enumerate(list_directory_samples(directory)):
        if index < start or index % stride != offset:
            continue
        sample: RawSample = {"__key__": key, "__url__": directory}
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                sample[_split_name(name)[1].lower()] = f.read()
        yield index, sample


def iter_shard(url: str, start: int, stride: int, offset: int) -> Iterator[tuple[int, RawSample]]:
    """(index in shard, sample) of the samples of ``url`` at index >= start with index % stride == offset."""
    if is_local(url) and os.path.isdir(url):
        yield from iter_directory(url, start, stride, offset)
        return
    for index, sample in enumerate(iter_tar(url)):
        if index >= start and index % stride == offset:
            yield index, sample


def count_samples(
    urls: Sequence[str], desc: str = "counting samples", keep_key: Callable[[str], bool] | None = None
) -> int:
    """Number of samples (distinct keys, those ``keep_key`` keeps) in local tars or directories, from tar headers."""
    total = 0
    for url in tqdm(urls, desc=desc, disable=len(urls) < 50, unit="shard"):
        if not is_local(url):
            raise ValueError(f"cannot count the samples of {url}: give num_samples for non-local shards")
        if os.path.isdir(url):
            keys = {key for key, _ in list_directory_samples(url)}
            total += len(keys if keep_key is None else [k for k in keys if keep_key(k)])
            continue
        keys = set()
        try:
            with tarfile.open(url, "r:") as tar:  # seekable mode: skips member data
                for member in tar:
                    key, _ = _split_name(member.name)
                    if member.isreg() and key is not None and not re.match(r"__[^/]*__($|/)", member.name):
                        keys.add(key)
        except (tarfile.TarError, OSError) as exn:
            raise ValueError(f"cannot read shard {url} to count its samples: {exn}") from exn
        total += len(keys if keep_key is None else [k for k in keys if keep_key(k)])
    return total


class ShardCursor:
    """Reads one slot's shard sequence from position (n, m), counting shards that break as skipped."""

    def __init__(
        self,
        slot_shards: SlotShards,
        position: tuple[int, int],
        tracker: SkipTracker,
        keep_key: Callable[[str], bool] | None = None,
    ) -> None:
        self.slot_shards = slot_shards
        self.shard_index, self.sample_index = position
        self.tracker = tracker
        self.keep_key = keep_key
        self._samples: Iterator[tuple[int, RawSample]] | None = None
        self._url = ""
        self._returned_from_shard = False
        self._shards_without_samples = 0

    @property
    def position(self) -> tuple[int, int]:
        return self.shard_index, self.sample_index

    def _next_shard(self) -> None:
        self._samples = None
        self.shard_index += 1
        self.sample_index = 0

    def next_raw(self) -> RawSample:
        while True:
            if self._samples is None:
                self._url = self.slot_shards[self.shard_index]
                stride, offset = self.slot_shards.stride_offset()
                self._samples = iter_shard(self._url, self.sample_index, stride, offset)
                self._returned_from_shard = False
            try:
                index, sample = next(self._samples)
            except StopIteration:
                self._no_sample_guard(self._url)
                self._next_shard()
                continue
            except Exception as exn:  # any failure inside a shard loses its remainder, not the run
                self.tracker.seen()
                detail = f"{type(exn).__name__}: {exn}"
                self.tracker.skip("unreadable_shard", self._url, f"#{self.sample_index}", detail)
                self._no_sample_guard(self._url)
                self._next_shard()
                continue
            self.sample_index = index + 1
            if self.keep_key is not None and not self.keep_key(sample["__key__"]):
                continue
            self._returned_from_shard = True
            return sample

    def _no_sample_guard(self, url: str) -> None:
        # Without this, a shard list that is all empty, unreadable or outside the manifest would loop forever.
        if self._returned_from_shard:
            self._shards_without_samples = 0
            return
        self._shards_without_samples += 1
        limit = 2 * self.slot_shards.num_distinct() + 8
        if self._shards_without_samples > limit:
            raise RuntimeError(
                f"no usable sample (readable, and listed in the manifest if one is given) in "
                f"{self._shards_without_samples} shards in a row (last: {url}); the shard list starting "
                f"{list(self.slot_shards.shards[:3])} is unreadable, empty or disjoint from the manifest"
            )
