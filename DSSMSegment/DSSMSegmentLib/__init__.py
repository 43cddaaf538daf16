"""DSSMSegment's engine: pure Python and PyTorch, no Qt and no Slicer."""

__version__ = "0.1.0"
