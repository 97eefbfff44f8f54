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
