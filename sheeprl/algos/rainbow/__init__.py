"""Rainbow (Hessel et al., 2018), coupled and decoupled (Ape-X style)."""
