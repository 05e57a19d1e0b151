"""Dreamer V3 (Hafner et al., 2023)."""
