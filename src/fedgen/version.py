"""fedgen's version: one place, importable from any layer (a deployed client and its
server compare it in their hello)."""

__version__ = "0.1.0"
