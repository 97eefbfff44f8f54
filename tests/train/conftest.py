"""Trainer tests import their in-memory streams and tiny tasks from ``train_fakes`` (next to this file)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
