"""Samples a person can read, for modalities other than images (``fedgen.images`` has grids)."""
