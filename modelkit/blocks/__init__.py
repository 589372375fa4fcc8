"""NumPy blocks: the pieces a mapping file assembles into layers."""
