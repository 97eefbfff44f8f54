"""Readers for the benchmark layouts as they are distributed (no conversion step needed)."""
