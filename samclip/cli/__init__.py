"""The console scripts, one module each (``[project.scripts]`` in pyproject.toml points here):

    samclip-train    samclip.cli.train:main     (also ``python -m samclip.train`` / ``torchrun -m samclip.train``)
    samclip-eval     samclip.cli.eval:main
    samclip-export   samclip.cli.export:main
    samclip-predict  samclip.cli.predict:main
    samclip-data     samclip.cli.data:main
    samclip-proxy    samclip.cli.proxy:main

The command lines sit above every other layer: they may import anything, nothing imports them.
"""
