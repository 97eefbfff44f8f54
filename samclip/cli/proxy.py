"""``samclip-proxy``: the proxy learning study's command line (:mod:`samclip.proxy.cli`)."""

from samclip.proxy.cli import main

__all__ = ["main"]
