"""Shared utilities: returns, distributions, logging, metrics, checkpoints, run plumbing."""
