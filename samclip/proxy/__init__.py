"""A proxy world where the right answers are known, its trained teachers, and the study that asks whether
the SAM-CLIP recipe learns (``samclip-proxy``)."""

from samclip.proxy.world import ProxyWorld, write_world

__all__ = ["ProxyWorld", "write_world"]
