"""MedGround engine: verified referring-grounding data from expert segmentations."""

__version__ = "0.1.0"
