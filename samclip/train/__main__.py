"""``python -m samclip.train`` (what ``torchrun -m samclip.train`` runs)."""

from samclip.train.runner import main

main()
