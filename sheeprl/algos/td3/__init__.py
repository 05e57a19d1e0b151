"""TD3 and DDPG: deterministic actor-critic for continuous control."""
