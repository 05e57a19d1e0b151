"""Deep Q-Network (Mnih et al., 2015) with double and dueling switches."""
