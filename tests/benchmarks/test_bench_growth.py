"""benchmarks/bench_growth.py: its meta counts and its exponent fit, on the tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import bench_growth
from bench_growth import Point, count_on_meta, fit


def test_fit_recovers_a_power_law() -> None:
    xs = [1.0, 2.0, 4.0, 8.0]
    slope, local = fit(xs, [3.0 * x**2.5 for x in xs])
    assert slope == pytest.approx(2.5) and local == pytest.approx(2.5)
    # A constant plus a linear term: the global slope is below 1, the last two points approach 1.
    slope, local = fit(xs, [10.0 + x for x in xs])
    assert slope < local < 1


def test_meta_counts_scale_with_the_batch() -> None:
    """Every image of a CLIP-only step costs the same FLOPs: counted twice, twice the count; prompts add decoder work on top of a fixed image encoder (less than proportional)."""
    one, two = (count_on_meta("tiny", Point(clip_images=b, clip_resolution=64)) for b in (1, 2))
    assert two["gflops"] == pytest.approx(2 * one["gflops"], rel=1e-6)
    # Saved bytes: per image, plus a few batch-independent tensors (position embeddings resampled once).
    assert one["saved_mib"] < two["saved_mib"] <= 2 * one["saved_mib"]
    assert two["saved_mib"] == pytest.approx(2 * one["saved_mib"], rel=0.05)
    few, many = (count_on_meta("tiny", Point(sam_images=1, prompts=p)) for p in (4, 16))
    assert few["gflops"] < many["gflops"] < 4 * few["gflops"]


def test_the_axes_vary_one_field() -> None:
    for field, points in bench_growth.AXES.values():
        assert len({getattr(p, field) for p in points}) == len(points) >= 3
