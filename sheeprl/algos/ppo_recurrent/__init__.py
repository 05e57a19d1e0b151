"""Recurrent PPO: an LSTM/GRU core between the observation encoder and the actor-critic heads."""
