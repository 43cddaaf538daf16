"""MRML glue: a volume node goes to the engine, and a segmentation node with one segment per label comes back.

The engine runs in a child process (:mod:`.Process`, :mod:`.Worker`). This module writes the input volume
to a temporary NRRD file, builds the worker's command, and turns the label file it writes into segments:

* the segmentation's reference geometry is the input volume's exact voxel grid (oblique and anisotropic
  grids included), and it sits under the volume's parent transform;
* each segment gets the label's name, colour and SNOMED CT terminology from ``model.json``;
* every segment DSSM makes is tagged with its model and label value and with a checksum of its voxels.
  Running again replaces those segments instead of adding duplicates, and a segment whose voxels no longer
  match its checksum was edited by the user: it is only overwritten when the caller says so
  (:attr:`SegmentationRequest.overwriteEdited`), after asking the user.

With the uncertainty map asked for (:attr:`SegmentationRequest.uncertaintyMap`), the worker also writes the map,
and the logic adds it as a scalar volume on the input's grid, shown in colour over the input in the slice views;
the run's :class:`Findings` (the familiarity warnings, which the worker always gives, and the slices with the
most uncertain voxels, which :meth:`DSSMSegmentLogic.jumpToSlice` shows) are kept on the job.

Nothing here imports Qt or needs the Slicer application: it runs on the MRML scene of the PyPI package
``slicer-core`` as well, which is how it is tested. Nothing touches the scene before a run has succeeded,
so an error or a cancel leaves it as it was.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Protocol

import numpy as np

from .Process import EventKind, ProcessState, WorkerProcess, defaultPython, workerCommand, workerEnvironment

if TYPE_CHECKING:  # for annotations only: these need PyTorch or the Slicer libraries
    import slicer
    import vtk
    from DSSMSegmentLib.bundle import LabelInfo, ModelBundle

MODULE_DIRECTORY = Path(__file__).resolve().parents[1]

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
MAX_STEPS = 50  # the panel's upper limit for K
MAX_SAMPLES = 16  # the panel's upper limit for Markov samples
SOURCE_TAG = "DSSMSegment.Source"  # "<model name>:<label value>" on each segment DSSM made
CHECKSUM_TAG = "DSSMSegment.Checksum"  # checksum of that segment's voxels as DSSM wrote them
UNCERTAINTY_ATTRIBUTE = "DSSMSegment.UncertaintyOf"  # "<input volume ID>:<model name>" on an uncertainty map
# colour tables for the uncertainty map, the first the scene has: Slicer's Inferno, else its procedural Iron
UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")
UNCERTAINTY_OPACITY = 0.6  # of the map over the input in the slice views


class Device(enum.Enum):
    """Where the network runs; the values are the engine's ``--device`` names."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


def modelDescription(bundle: "ModelBundle") -> str:
    """Rich text for the panel: modality, what the model segments, its labels in their colours, its metrics."""
    from html import escape

    kind = "DSSM" if bundle.architecture.kind == "dssm" else "discriminative baseline (no diffusion)"
    lines = [f"<b>{escape(bundle.modality)}</b> &middot; {escape(kind)} &middot; default K = {bundle.default_steps}"]
    if bundle.meta.get("description"):
        lines.append(escape(str(bundle.meta["description"])))
    swatches = [f'<span style="color:#{r:02x}{g:02x}{b:02x}">&#9632;</span>&nbsp;{escape(label.name)}'
                for label in bundle.labels for r, g, b in [label.color]]
    lines.append("Labels: " + ", ".join(swatches))
    if bundle.architecture.kind == "dssm":
        lines.append(escape(f"Default K = {bundle.default_steps}: {bundle.default_steps_reason()}."))
    for what, dice in bundle.dice_rows():
        lines.append(escape(what[:1].upper() + what[1:]) + (": " + ", ".join(
            f"{escape(name)} {value:.3f}" for name, value in dice.items()) if dice else "."))
    return "<br>".join(lines)


WARNING_STYLE = "color:#ffffff; background-color:#c0392b; font-weight:bold"  # white on red: cannot be missed


def resultHtml(done: str, findings: Findings) -> str:
    """The status area after a run: ``done`` (plain text), each warning on its own line, white on red, and the
    slices with the most uncertain voxels as links ``slice:N`` (N: the slice's position in the list)."""
    from html import escape

    lines = [escape(done)]
    lines += [f'<span style="{WARNING_STYLE}">&#9888; Warning: {escape(w)}</span>' for w in findings.warnings]
    if findings.uncertainSlices:
        volumes = ", ".join(f"{escape(name)} {value:.{0 if findings.unit == 'mm2' else 2}f} {findings.unit}"
                            for name, value in findings.uncertainVolumes.items())
        links = ", ".join(f'<a href="slice:{i}">{s.index + 1}</a> ({s.voxels})'
                          for i, s in enumerate(findings.uncertainSlices))
        lines.append(f"Uncertain: {volumes}. Most uncertain slices (uncertain voxels), click to view: {links}")
    elif findings.threshold is not None:
        lines.append("Uncertainty map: no voxel above the uncertainty threshold.")
    return "<br>".join(lines)


def terminologyEntry(label: "LabelInfo") -> str:
    """The label's terminology as the entry string that Slicer's segment tags and Terminologies module read."""
    category = label.terminology.get("category") or ["", "", ""]
    kind = label.terminology.get("type") or ["", "", ""]
    return "~".join([TERMINOLOGY_CONTEXT, "^".join(category), "^".join(kind), "^^", ANATOMIC_CONTEXT, "^^", "^^"])


def sourceTag(modelName: str, labelValue: int) -> str:
    return f"{modelName}:{int(labelValue)}"


def ijkToRasMatrix(volumeNode) -> "vtk.vtkMatrix4x4":
    """The volume's voxel grid in its own (parent-transform) space."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix


def worldPosition(volumeNode, ijk) -> tuple:
    """The world (RAS) position of a voxel index (may be fractional), through the volume's parent transforms."""
    import vtk

    ras = ijkToRasMatrix(volumeNode).MultiplyPoint([*map(float, ijk), 1.0])[:3]
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        ras = toWorld.TransformPoint(ras)
    return tuple(float(v) for v in ras)


def _voxelArray(imageData) -> np.ndarray:
    """A vtkImageData's scalars as a (K, J, I) numpy view."""
    from vtk.util.numpy_support import vtk_to_numpy

    scalars = imageData.GetPointData().GetScalars() if imageData is not None else None
    if scalars is None:
        return np.zeros((0, 0, 0), np.uint8)
    dims = imageData.GetDimensions()
    return vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0], -1)[..., 0]


def binaryImage(mask: np.ndarray, ijkToRas) -> "slicer.vtkOrientedImageData":
    """A (K, J, I) boolean mask as a 0/1 vtkOrientedImageData on the grid ``ijkToRas``."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
    image.SetImageToWorldMatrix(ijkToRas)
    return image


def segmentChecksum(segmentationNode, segmentId: str) -> str:
    """A checksum of a segment's voxels: their absolute grid indices and the grid's position in space.

    It does not depend on how much empty margin the stored labelmap has, or on which shared layer holds it,
    so it changes exactly when voxels are added or removed or the grid is moved.
    """
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image):
        return ""  # no labelmap (e.g. the user switched the source representation): treat as changed
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    values = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(3)])
    k, j, i = np.nonzero(_voxelArray(image))
    extent = image.GetExtent()
    indices = np.stack([i + extent[0], j + extent[2], k + extent[4]]).astype(np.int64)
    digest = hashlib.sha256()
    digest.update(np.round(values, 6).tobytes())
    digest.update(indices.tobytes())
    return digest.hexdigest()


def dssmSegments(segmentationNode, modelName: str) -> Dict[int, str]:
    """Label value -> segment ID of the segments that ``modelName`` made in this segmentation."""
    segmentation = segmentationNode.GetSegmentation()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        tag = segmentTag(segmentation.GetSegment(segmentId), SOURCE_TAG)
        model, _, value = tag.rpartition(":")
        if model == modelName and value.isdigit():
            found[int(value)] = segmentId
    return found


def segmentTag(segment, name: str) -> str:
    """A segment's tag value, or "" when it has none."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def editedSegmentIds(segmentationNode, modelName: str) -> List[str]:
    """IDs of segments that ``modelName`` made and whose voxels the user has changed since."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentId for segmentId in dssmSegments(segmentationNode, modelName).values()
            if segmentChecksum(segmentationNode, segmentId)
            != segmentTag(segmentation.GetSegment(segmentId), CHECKSUM_TAG)]


@dataclass
class SegmentationRequest:
    """What the user asked for. ``outputSegmentation`` None means: create a new segmentation node."""

    inputVolume: object  # vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode
    model: str
    steps: Optional[int] = None  # None: the model's default K
    device: str = "auto"
    outputSegmentation: object = None
    overwriteEdited: bool = False
    testTimeAugmentation: bool = False  # average over the model's test-time passes (flips and zooms)
    samples: int = 1  # Markov chains per slice, their latents averaged
    uncertaintyMap: bool = False  # also make the uncertainty map volume


@dataclass(frozen=True)
class UncertainSlice:
    """A slice with many uncertain voxels: its index along the axis the volume was segmented along (0-based)."""

    index: int
    voxels: int  # voxels above the uncertainty threshold
    position: tuple  # world (RAS) position of the slice's centre, where the slice views jump to


@dataclass
class Findings:
    """What a run says beside the segments (the worker's findings file, read by :meth:`importResult`)."""

    warnings: List[str] = field(default_factory=list)  # each one line: an unfamiliar image, empty structures
    familiarity: Optional[float] = None
    familiar: Optional[bool] = None  # None: the model has no familiarity calibration
    uncertainSlices: List[UncertainSlice] = field(default_factory=list)  # most uncertain first
    uncertainVolumes: Dict[str, float] = field(default_factory=dict)  # structure -> mL (mm2 for one slice)
    unit: str = "mL"
    threshold: Optional[float] = None  # of an uncertain voxel


@dataclass
class SegmentationJob:
    """One run's temporary files and the command that produces the result; after :meth:`importResult`, its
    findings and the uncertainty map volume (None unless asked)."""

    request: SegmentationRequest
    bundle: "ModelBundle"
    workDirectory: Path
    command: List[str]
    environment: Dict[str, str] = field(repr=False)
    findings: Findings = field(default_factory=Findings)
    uncertaintyVolume: object = None

    @property
    def inputPath(self) -> Path:
        return self.workDirectory / "input.nrrd"

    @property
    def outputPath(self) -> Path:
        return self.workDirectory / "labels.nrrd"

    @property
    def uncertaintyPath(self) -> Path:
        return self.workDirectory / "uncertainty.nrrd"

    @property
    def findingsPath(self) -> Path:
        return self.workDirectory / "findings.json"

    def cleanup(self) -> None:
        shutil.rmtree(self.workDirectory, ignore_errors=True)


@dataclass(frozen=True)
class GpuStatus:
    available: bool
    detail: str  # the GPU's name, or why there is none


class SegmentationLogicProtocol(Protocol):
    """What the panel needs of the logic (tests give it a fake)."""

    def availableModels(self) -> List["ModelBundle"]: ...

    def gpuStatus(self) -> GpuStatus: ...

    def editedSegmentNames(self, segmentationNode, modelName: str) -> List[str]: ...

    def prepare(self, request: SegmentationRequest) -> SegmentationJob: ...

    def createProcess(self, job: SegmentationJob) -> WorkerProcess: ...

    def importResult(self, job: SegmentationJob): ...

    def jumpToSlice(self, uncertainSlice: UncertainSlice, scene=None) -> None: ...


class DSSMSegmentLogic:
    """Runs DSSM on volume nodes. Usable from the panel, the Python console and tests.

    ``python`` is the interpreter for the child process; by default Slicer's ``PythonSlicer``.
    """

    def __init__(self, python: Optional[str] = None) -> None:
        self.python = python or defaultPython()

    # --- what the panel shows ---------------------------------------------------------------------------
    def availableModels(self) -> List["ModelBundle"]:
        from DSSMSegmentLib.bundle import available_models

        problems: List[str] = []
        models = available_models(problems)
        for problem in problems:  # to Slicer's log, as 'dssm models' says them on stderr
            logging.warning(f"DSSM: {problem}")
        return models

    def gpuStatus(self) -> GpuStatus:
        import torch

        if torch.cuda.is_available():
            return GpuStatus(True, torch.cuda.get_device_name(0))
        if torch.version.cuda is None:
            return GpuStatus(False, f"PyTorch {torch.__version__} is a CPU-only build. On a computer with an "
                                    "NVIDIA GPU, reinstall PyTorch with CUDA in the PyTorch Utils module.")
        return GpuStatus(False, "PyTorch has CUDA support but finds no NVIDIA GPU (or its driver is missing "
                                "or too old).")

    def editedSegmentNames(self, segmentationNode, modelName: str) -> List[str]:
        """Names of the segments that a new run of ``modelName`` would overwrite although the user edited them."""
        if segmentationNode is None:
            return []
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetSegment(s).GetName() for s in editedSegmentIds(segmentationNode, modelName)]

    # --- a run: prepare, process, import ----------------------------------------------------------------
    def prepare(self, request: SegmentationRequest) -> SegmentationJob:
        """Check the request and write the input volume to a temporary file. The scene is not changed."""
        import slicer
        from DSSMSegmentLib.bundle import resolve_model
        from DSSMSegmentLib.errors import DSSMError

        volume = request.inputVolume
        if volume is None or volume.GetImageData() is None:
            raise DSSMError("select an input volume that has image data")
        output = request.outputSegmentation
        if output is not None and output.GetTransformNodeID() != volume.GetTransformNodeID():
            raise DSSMError(f"segmentation '{output.GetName()}' and volume '{volume.GetName()}' are under different "
                            "transforms; choose 'Create new segmentation', or put both under the same transform")
        bundle = resolve_model(request.model)
        workDirectory = Path(tempfile.mkdtemp(prefix="DSSMSegment-"))
        job = SegmentationJob(request, bundle, workDirectory, [], workerEnvironment(str(MODULE_DIRECTORY)))
        job.command = workerCommand(self.python, str(bundle.path), str(job.inputPath), str(job.outputPath),
                                    request.steps, request.device, request.testTimeAugmentation, request.samples,
                                    str(job.uncertaintyPath) if request.uncertaintyMap else None,
                                    str(job.findingsPath), volume.GetName())
        # A storage node outside the scene: the volume keeps its own storage node and file name.
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(job.inputPath))
        storage.SetUseCompression(False)
        if not storage.WriteData(volume):
            job.cleanup()
            raise DSSMError(f"could not write volume '{volume.GetName()}' to {job.inputPath} for the engine")
        return job

    def createProcess(self, job: SegmentationJob) -> WorkerProcess:
        return WorkerProcess(job.command, job.environment)

    def importResult(self, job: SegmentationJob):
        """Turn the worker's label file into segments; returns the segmentation node that holds them. With the
        uncertainty map asked for, it becomes a volume shown over the input (``job.uncertaintyVolume``); the
        findings are read into ``job.findings``. Every file is read and checked before the scene changes."""
        from DSSMSegmentLib.errors import DSSMError

        request, volume = job.request, job.request.inputVolume
        labels = self._readLabels(job.outputPath)
        expected = volume.GetImageData().GetDimensions()[::-1]
        if labels.shape != expected:
            raise DSSMError(f"the engine returned labels of shape {labels.shape} for a volume of {expected}")
        uncertainty = None
        if request.uncertaintyMap:
            uncertainty = self._readVolume(job.uncertaintyPath, "the uncertainty map")
            if uncertainty.shape != expected:
                raise DSSMError(f"the engine returned an uncertainty map of shape {uncertainty.shape} for a volume "
                                f"of {expected}")
        job.findings = self._readFindings(job.findingsPath, volume)
        node = request.outputSegmentation
        created = node is None
        if created:
            node = volume.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       f"{volume.GetName()} {job.bundle.name}")
            node.CreateDefaultDisplayNodes()
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if node.GetSegmentation().GetNumberOfSegments() == 0:
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        try:
            self._writeSegments(node, job.bundle, labels, ijkToRasMatrix(volume), request.overwriteEdited)
        except DSSMError:
            if created:  # leave no half-made node behind
                node.GetScene().RemoveNode(node)
            raise
        if uncertainty is not None:
            job.uncertaintyVolume = self._showUncertainty(volume, job.bundle.name, uncertainty,
                                                          job.findings.threshold)
        return node

    def jumpToSlice(self, uncertainSlice: UncertainSlice, scene=None) -> None:
        """Centre every slice view of the scene on the slice (each view keeps its orientation)."""
        import slicer

        scene = scene or slicer.mrmlScene
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *uncertainSlice.position, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def _readFindings(self, path: Path, volume) -> Findings:
        """The worker's findings file as :class:`Findings`, the uncertain slices placed in the world."""
        import json

        from DSSMSegmentLib.errors import DSSMError

        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DSSMError(f"the engine's findings {path} are missing or unreadable ({exc})") from None
        findings = Findings(warnings=[str(w) for w in data.get("warnings", [])], familiarity=data.get("familiarity"),
                            familiar=data.get("familiar"))
        uncertainty = data.get("uncertainty")
        if uncertainty:
            ijkAxis = 2 - int(uncertainty["slice_axis"])  # the engine's array axes are (K, J, I)
            centre = [(n - 1) / 2.0 for n in volume.GetImageData().GetDimensions()]
            for index, count in uncertainty["slices"]:
                ijk = list(centre)
                ijk[ijkAxis] = index
                findings.uncertainSlices.append(UncertainSlice(int(index), int(count), worldPosition(volume, ijk)))
            findings.uncertainVolumes = {str(k): float(v) for k, v in uncertainty["volumes"].items()}
            findings.unit = str(uncertainty.get("unit", "mL"))
            findings.threshold = float(uncertainty["threshold"])
        return findings

    @staticmethod
    def _showUncertainty(volume, modelName: str, values: np.ndarray, threshold: Optional[float]):
        """The uncertainty map as a scalar volume on the input's grid (the one this model made for this input
        before is updated), shown in colour over the input in every slice view: voxels below a tenth of the
        threshold are transparent, the colours saturate at twice the threshold."""
        import slicer
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        scene = volume.GetScene()
        key = f"{volume.GetID()}:{modelName}"
        node = next((n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                     if n.GetAttribute(UNCERTAINTY_ATTRIBUTE) == key), None)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volume.GetName()} {modelName} uncertainty")
            node.SetAttribute(UNCERTAINTY_ATTRIBUTE, key)
        image = vtk.vtkImageData()
        image.SetDimensions(values.shape[2], values.shape[1], values.shape[0])
        image.AllocateScalars(vtk.VTK_FLOAT, 1)
        vtk_to_numpy(image.GetPointData().GetScalars())[:] = values.ravel()
        node.SetAndObserveImageData(image)
        node.SetIJKToRASMatrix(ijkToRasMatrix(volume))
        node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        level = threshold or 0.25
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 2 * level)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(0.1 * level)
        display.SetUpperThreshold(1.0)
        colors = next((c for c in UNCERTAINTY_COLORS if scene.GetNodeByID(c) is not None), UNCERTAINTY_COLORS[-1])
        display.SetAndObserveColorNodeID(colors)
        for composite in scene.GetNodesByClass("vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetForegroundVolumeID(node.GetID())
            composite.SetForegroundOpacity(UNCERTAINTY_OPACITY)
        return node

    def _writeSegments(self, node, bundle: "ModelBundle", labels: np.ndarray, ijkToRas, overwriteEdited: bool):
        """One segment per label: the ones this model made before are replaced (edited ones only if asked)."""
        import slicer
        from DSSMSegmentLib.errors import DSSMError

        existing = dssmSegments(node, bundle.name)
        edited = set() if overwriteEdited else set(editedSegmentIds(node, bundle.name))
        wasModifying = node.StartModify()
        try:
            for label in bundle.labels:
                segmentId = existing.get(label.value)
                if segmentId in edited:
                    continue
                if segmentId is None:
                    segmentId = self._addSegment(node, bundle.name, label)
                image = binaryImage(labels == label.value, ijkToRas)
                if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                        image, node, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
                    raise DSSMError(f"could not write segment '{label.name}' into '{node.GetName()}'")
                node.GetSegmentation().GetSegment(segmentId).SetTag(CHECKSUM_TAG, segmentChecksum(node, segmentId))
        finally:
            node.EndModify(wasModifying)

    def segment(self, request: SegmentationRequest, timeout: Optional[float] = None):
        """Run one segmentation to the end, blocking; returns the segmentation node. For scripts and tests."""
        from DSSMSegmentLib.errors import DSSMError

        job = self.prepare(request)
        try:
            process = self.createProcess(job)
            process.start()
            events = process.wait(timeout)
            if process.state is ProcessState.RUNNING:
                process.cancel()
                raise DSSMError(f"segmentation did not finish within {timeout} s")
            failures = [e.message for e in events if e.kind is EventKind.FAILED]
            if failures:
                raise DSSMError(failures[-1])
            return self.importResult(job)
        finally:
            job.cleanup()

    # --- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _readLabels(path: Path) -> np.ndarray:
        return DSSMSegmentLogic._readVolume(path, "the engine's result", "vtkMRMLLabelMapVolumeNode")

    @staticmethod
    def _readVolume(path: Path, what: str, nodeClass: str = "vtkMRMLScalarVolumeNode") -> np.ndarray:
        """A volume file's voxels (K, J, I), read outside the scene."""
        import slicer
        from DSSMSegmentLib.errors import DSSMError

        node = getattr(slicer, nodeClass)()
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not path.is_file() or not storage.ReadData(node):
            raise DSSMError(f"{what} {path} is missing or unreadable")
        return np.array(_voxelArray(node.GetImageData()))

    @staticmethod
    def _addSegment(node, modelName: str, label: "LabelInfo") -> str:
        segmentation = node.GetSegmentation()
        segmentId = segmentation.GenerateUniqueSegmentID(f"DSSM_{modelName}_{label.value}")
        segmentation.AddEmptySegment(segmentId, label.name, [c / 255.0 for c in label.color])
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminologyEntry(label))
        segment.SetTag(SOURCE_TAG, sourceTag(modelName, label.value))
        return segmentId
