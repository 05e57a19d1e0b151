"""DroQ: SAC with dropout and layer-norm Q-functions at a high replay ratio."""
