"""Soft Actor-Critic, coupled and decoupled."""
