"""Algorithms: one package per algorithm; each entry module registers itself with sheeprl.registry."""
