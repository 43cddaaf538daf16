"""The Slicer side of DSSMSegment: panel, MRML glue, background process and first-use installation.

This package may import ``slicer``, ``qt`` and ``vtk``, but only in the modules that need them, and never
at package level: :mod:`.Worker` runs in a plain child Python (Slicer's ``PythonSlicer``) and
:mod:`.Process` and :mod:`.Logic` are tested outside Slicer. The engine itself is ``DSSMSegmentLib``.
"""
