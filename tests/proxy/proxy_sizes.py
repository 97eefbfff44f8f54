"""The very small proxy world the fast tests write (a module of its own: conftest names clash across dirs)."""

from samclip.proxy.world import WorldSize

TINY_WORLD = WorldSize(
    clip_images=40,
    sam_images=12,
    classification_images=16,
    semseg_images=6,
    sam_val_images=6,
    images_per_shard=20,
)


def seed_runner_stub(out, world, size, seed: int, timings: dict) -> dict:
    """A per-seed study runner for ``run_seeds``'s test (module level, so a spawned worker imports it)."""
    import os

    import torch

    timings[f"seed_{seed}/stub"] = float(seed)
    return {"row": {"value": 10.0 * seed}, "where": {"pid": os.getpid(), "threads": torch.get_num_threads()}}
