"""The Slicer module's logic on a real MRML scene (PyPI ``slicer-core``), with the real engine in a child process.

An ACDC volume is read with ``vtkMRMLVolumeArchetypeStorageNode``, given an oblique direction and anisotropic
spacing, and segmented by ``DSSMSegmentLogic`` through the background worker. The resulting segmentation must
sit on the volume's exact grid, carry the model's names, colours and terminology, and export (with
``ExportVisibleSegmentsToLabelmapNode``) to the very labelmap that ``dssm segment`` writes for the same file.
Re-running replaces DSSM's segments, edited segments are kept unless the caller says otherwise, and Cancel
or an error leave the scene unchanged. The uncertainty map becomes a volume on the input's exact grid, equal to
``dssm segment --uncertainty``'s, shown over the input in the slice views, whose most uncertain slices the views
jump to; an image unlike the model's training images comes back with its warnings.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ACDC, CXR, ISIC, _need, describe, run_dssm

import slicer  # noqa: E402  (the test extra slicer-core)
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from DSSMSegmentLib.bundle import resolve_model  # noqa: E402
from DSSMSegmentLib.errors import DSSMError  # noqa: E402
from DSSMSegmentSlicerLib import Logic  # noqa: E402
from DSSMSegmentSlicerLib.Logic import DSSMSegmentLogic, SegmentationRequest  # noqa: E402
from DSSMSegmentSlicerLib.Process import EventKind, ProcessState, WorkerProcess  # noqa: E402

MODEL = "heart-cine-mri"
SLICES = (3, 7)  # four mid-ventricular slices of patient011 keep each run to a few seconds on two cores
SPACING = (1.3, 0.9, 7.5)  # anisotropic, and different from the file's


# ---------------------------------------------------------------------------------------------------------
# MRML helpers


@pytest.fixture(scope="module", autouse=True)
def converterRules():
    """slicer-core starts with no segmentation conversion rules; the Slicer application registers these."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def readVolume(scene, path: Path, nodeClass: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(nodeClass, path.name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"could not read {path}"
    return node


def writeVolume(node, path: Path) -> Path:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"could not write {path}"
    return path


def ijkToRas(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def voxels(node) -> np.ndarray:
    image = node.GetImageData()
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()


def exportLabelmap(scene, segmentation, reference=None) -> "slicer.vtkMRMLLabelMapVolumeNode":
    """All visible segments as one labelmap (value = segment index + 1), on the reference volume's grid or,
    without one, on the segmentation's own reference geometry."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    mode = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
        segmentation, labelmap, reference, mode)
    return labelmap


def asModelLabels(exported: np.ndarray, segmentation, modelName: str) -> np.ndarray:
    """Map exported values (segment index + 1) back to the model's label values, by each segment's tag."""
    out = np.zeros_like(exported)
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        tag = Logic.segmentTag(segments.GetNthSegment(index), Logic.SOURCE_TAG)
        model, _, value = tag.rpartition(":")
        assert model == modelName, tag
        out[exported == index + 1] = int(value)
    return out


def cliLabels(path: Path, tmp: Path, *options: str) -> np.ndarray:
    """``dssm segment`` on the same file, as a user would run it."""
    out = tmp / ("cli" + "".join(options).replace("-", "_"))
    proc = run_dssm(["segment", "--model", MODEL, "--device", "cpu", "--overwrite", "-o", out, *options, path],
                    cwd=tmp)
    assert proc.returncode == 0, describe(proc)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / (path.name[: -len(".nrrd")] + ".nii.gz"))))


def segmentationNodes(scene) -> int:
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


@pytest.fixture(scope="module")
def obliqueCase(tmp_path_factory):
    """(scene, volume node, the same volume as a file): ACDC patient011 ED, oblique and anisotropic."""
    folder = ACDC / "patient011"
    _need(folder)
    tmp = tmp_path_factory.mktemp("slicer-logic")
    image = sitk.ReadImage(str(folder / "patient011_frame01.nii.gz"))[:, :, SLICES[0]:SLICES[1]]
    sitk.WriteImage(image, str(tmp / "acdc.nrrd"))
    scene = slicer.vtkMRMLScene()
    volume = readVolume(scene, tmp / "acdc.nrrd")
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(0.7) * k + (1 - math.cos(0.7)) * k @ k
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, rotation[r, c])
    volume.SetIJKToRASDirectionMatrix(directions)
    volume.SetSpacing(*SPACING)
    volume.SetOrigin(-31.25, 17.5, 102.0)
    return scene, volume, writeVolume(volume, tmp / "oblique.nrrd"), tmp


@pytest.fixture(scope="module")
def logic():
    return DSSMSegmentLogic()  # child processes run this interpreter (no PythonSlicer outside Slicer)


@pytest.fixture(scope="module")
def firstRun(obliqueCase, logic):
    scene, volume, path, tmp = obliqueCase
    segmentation = logic.segment(SegmentationRequest(volume, MODEL, device="cpu"), timeout=300)
    return segmentation, cliLabels(path, tmp)


# ---------------------------------------------------------------------------------------------------------
# The result


def test_segments_have_the_models_names_colours_and_terminology(firstRun):
    segmentation, _ = firstRun
    labels = resolve_model(MODEL).labels
    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == len(labels) == 3
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    for index, label in enumerate(labels):
        segment = segments.GetNthSegment(index)
        assert segment.GetName() == label.name
        assert segment.GetColor() == pytest.approx([c / 255 for c in label.color], abs=1e-6)
        assert Logic.segmentTag(segment, Logic.SOURCE_TAG) == f"{MODEL}:{label.value}"
        entry = slicer.vtkSlicerTerminologyEntry()
        serialized = Logic.segmentTag(segment, segment.GetTerminologyEntryTagName())
        assert terminologies.DeserializeTerminologyEntry(serialized, entry), serialized
        assert entry.GetTerminologyContextName() == Logic.TERMINOLOGY_CONTEXT
        category, kind = entry.GetCategoryObject(), entry.GetTypeObject()
        assert [category.GetCodingSchemeDesignator(), category.GetCodeValue(), category.GetCodeMeaning()] == \
            label.terminology["category"]
        assert [kind.GetCodingSchemeDesignator(), kind.GetCodeValue(), kind.GetCodeMeaning()] == \
            label.terminology["type"]
    # Slicer's own serializer writes back the very string we stored.
    assert terminologies.SerializeTerminologyEntry(entry) == serialized


def test_result_is_on_the_input_volumes_exact_oblique_grid(obliqueCase, firstRun):
    scene, volume, _, _ = obliqueCase
    segmentation, _ = firstRun
    assert segmentation.GetParentTransformNode() is None and volume.GetParentTransformNode() is None
    # Exported on the segmentation's own reference geometry, with no volume to resample onto:
    exported = exportLabelmap(scene, segmentation)
    assert exported.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    assert np.abs(ijkToRas(exported) - ijkToRas(volume)).max() < 1e-9
    assert exported.GetSpacing() == pytest.approx(SPACING, abs=1e-12)
    # Each segment's stored labelmap is on that grid too (no resampling happened on the way in).
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        image = slicer.vtkOrientedImageData()
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(index)
        assert segmentation.GetBinaryLabelmapRepresentation(segmentId, image)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        stored = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        assert np.abs(stored - ijkToRas(volume)).max() < 1e-9


def test_exported_labelmap_equals_dssm_segment_voxel_for_voxel(obliqueCase, firstRun):
    scene, volume, _, _ = obliqueCase
    segmentation, cli = firstRun
    exported = asModelLabels(voxels(exportLabelmap(scene, segmentation, volume)), segmentation, MODEL)
    assert exported.shape == cli.shape
    assert {1, 2, 3} <= set(np.unique(cli)), "the comparison needs every structure present"
    mismatched = int((exported != cli).sum())
    assert mismatched == 0, f"{mismatched} of {cli.size} voxels differ from 'dssm segment'"


# ---------------------------------------------------------------------------------------------------------
# Running again


def test_running_again_replaces_dssm_segments_without_duplicates(obliqueCase, firstRun, logic):
    scene, volume, path, tmp = obliqueCase
    segmentation, _ = firstRun
    before = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(3)]
    nodes = segmentationNodes(scene)
    again = logic.segment(SegmentationRequest(volume, MODEL, steps=0, device="cpu", outputSegmentation=segmentation),
                          timeout=300)
    assert again is segmentation and segmentationNodes(scene) == nodes
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())] == before
    exported = asModelLabels(voxels(exportLabelmap(scene, segmentation, volume)), segmentation, MODEL)
    assert np.array_equal(exported, cliLabels(path, tmp, "--steps", "0")), "the K=0 result replaced the K=4 one"
    assert logic.editedSegmentNames(segmentation, MODEL) == []


def test_test_time_augmentation_reaches_the_engine(obliqueCase, logic):
    """The panel's "Test-time augmentation" box gives exactly ``dssm segment --tta``, which differs from plain K = 0."""
    scene, volume, path, tmp = obliqueCase
    segmentation = logic.segment(SegmentationRequest(volume, MODEL, steps=0, device="cpu", testTimeAugmentation=True),
                                 timeout=300)
    try:
        exported = asModelLabels(voxels(exportLabelmap(scene, segmentation, volume)), segmentation, MODEL)
        assert np.array_equal(exported, cliLabels(path, tmp, "--steps", "0", "--tta"))
        assert not np.array_equal(exported, cliLabels(path, tmp, "--steps", "0"))
    finally:
        scene.RemoveNode(segmentation)


def test_markov_samples_reach_the_engine(obliqueCase, firstRun, logic):
    """The panel's "Markov samples" box gives exactly ``dssm segment --samples``, which differs from one sample."""
    scene, volume, path, tmp = obliqueCase
    _, oneSample = firstRun
    segmentation = logic.segment(SegmentationRequest(volume, MODEL, steps=4, device="cpu", samples=3), timeout=300)
    try:
        exported = asModelLabels(voxels(exportLabelmap(scene, segmentation, volume)), segmentation, MODEL)
        assert np.array_equal(exported, cliLabels(path, tmp, "--steps", "4", "--samples", "3"))
        assert not np.array_equal(exported, oneSample)
    finally:
        scene.RemoveNode(segmentation)


def test_edited_segment_is_reported_and_kept_unless_overwriting_is_asked(obliqueCase, firstRun, logic):
    scene, volume, _, _ = obliqueCase
    segmentation, _ = firstRun
    segments = segmentation.GetSegmentation()
    cavityId = Logic.dssmSegments(segmentation, MODEL)[3]
    # The user paints a block into the LV cavity segment (as the Segment Editor would, on the same grid).
    painted = segmentArray(segmentation, cavityId, volume)
    painted[1:3, 20:40, 20:40] = True
    image = Logic.binaryImage(painted, Logic.ijkToRasMatrix(volume))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation, cavityId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert logic.editedSegmentNames(segmentation, MODEL) == ["left ventricle cavity"]

    # One engine run, imported twice: first keeping the edit, then overwriting it.
    job = logic.prepare(SegmentationRequest(volume, MODEL, device="cpu", outputSegmentation=segmentation))
    try:
        process = logic.createProcess(job)
        process.start()
        process.wait(300)
        assert process.state is ProcessState.FINISHED
        logic.importResult(job)
        assert segments.GetNumberOfSegments() == 3
        assert np.array_equal(segmentArray(segmentation, cavityId, volume), painted), "the user's edit was overwritten"
        assert logic.editedSegmentNames(segmentation, MODEL) == ["left ventricle cavity"]
        job.request.overwriteEdited = True
        logic.importResult(job)
        assert segments.GetNumberOfSegments() == 3
        assert not np.array_equal(segmentArray(segmentation, cavityId, volume), painted)
        assert logic.editedSegmentNames(segmentation, MODEL) == []
    finally:
        job.cleanup()


def segmentArray(segmentation, segmentId: str, volume) -> np.ndarray:
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "one segment")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, [segmentId], labelmap, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    array = voxels(labelmap) > 0
    scene.RemoveNode(labelmap)
    return array


# ---------------------------------------------------------------------------------------------------------
# Cancel and errors leave the scene unchanged


def alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell as a stand-in for the PythonSlicer launcher")
def test_cancel_kills_the_process_tree_within_a_second_and_changes_nothing(obliqueCase, logic):
    import psutil

    scene, volume, _, _ = obliqueCase
    nodes, modified = scene.GetNumberOfNodes(), (scene.GetMTime(), volume.GetMTime())
    job = logic.prepare(SegmentationRequest(volume, MODEL, device="cpu"))
    try:
        # Like PythonSlicer, a launcher process whose child does the work.
        process = WorkerProcess(["/bin/sh", "-c", shlex.join(job.command) + "; exit $?"], job.environment)
        process.start()
        deadline = time.monotonic() + 120
        while not any(e.kind is EventKind.PROGRESS for e in process.poll()):
            assert process.state is ProcessState.RUNNING and time.monotonic() < deadline
            time.sleep(0.05)
        tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
        assert len(tree) >= 2, "the worker should run as the launcher's child"
        started = time.monotonic()
        process.cancel()
        assert time.monotonic() - started < 1.0
        assert not [p for p in tree if alive(p)]
        assert process.state is ProcessState.CANCELLED and process.poll() == []
        assert not job.outputPath.exists()
    finally:
        job.cleanup()
    assert not job.workDirectory.exists()
    assert (scene.GetNumberOfNodes(), (scene.GetMTime(), volume.GetMTime())) == (nodes, modified)


@pytest.mark.parametrize("uncertaintyMap", [False, True], ids=["plain", "with the uncertainty map"])
def test_an_engine_error_reaches_the_caller_and_changes_nothing(obliqueCase, logic, uncertaintyMap):
    scene, volume, _, _ = obliqueCase
    nodes, modified = scene.GetNumberOfNodes(), (scene.GetMTime(), volume.GetMTime())
    with pytest.raises(DSSMError, match="1 channel.*expects 3"):
        logic.segment(SegmentationRequest(volume, "skin-lesion-dermoscopy", device="cpu",
                                          uncertaintyMap=uncertaintyMap), timeout=300)
    assert (scene.GetNumberOfNodes(), (scene.GetMTime(), volume.GetMTime())) == (nodes, modified)


@pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell")
def test_a_crash_without_an_error_event_is_reported_with_its_output(tmp_path):
    process = WorkerProcess(["/bin/sh", "-c", "echo loading; echo 'Segmentation fault' >&2; exit 139"])
    process.start()
    events = process.wait(30)
    assert process.state is ProcessState.FAILED
    assert events[-1].kind is EventKind.FAILED and "exit status 139" in events[-1].message
    assert "Segmentation fault" in events[-1].message


# ---------------------------------------------------------------------------------------------------------
# An RGB image as a vector volume


def test_rgb_vector_volume_matches_dssm_segment(tmp_path, logic):
    images = ISIC / "images"
    _need(images)
    rgb = sitk.ReadImage(str(sorted(images.glob("*.jpg"))[0]))
    sitk.WriteImage(sitk.JoinSeries(rgb), str(tmp_path / "rgb.nrrd"))  # slicer-core's ITK reads no JPEG
    scene = slicer.vtkMRMLScene()
    volume = readVolume(scene, tmp_path / "rgb.nrrd", "vtkMRMLVectorVolumeNode")
    assert volume.GetImageData().GetNumberOfScalarComponents() == 3
    # K = 0 keeps this test quick: what it checks is the RGB path, not the Markov chain.
    segmentation = logic.segment(SegmentationRequest(volume, "skin-lesion-dermoscopy", steps=0, device="cpu"),
                                 timeout=300)
    exported = voxels(exportLabelmap(scene, segmentation, volume))
    proc = run_dssm(["segment", "--model", "skin-lesion-dermoscopy", "--steps", "0", "--device", "cpu",
                     "-o", tmp_path / "cli", tmp_path / "rgb.nrrd"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "rgb.nii.gz")))
    assert cli.sum() > 100 and np.array_equal(exported, cli)


# ---------------------------------------------------------------------------------------------------------
# The uncertainty map and the familiarity warning


def runJob(logic, request):
    """prepare -> process -> the finished job (not yet imported)."""
    job = logic.prepare(request)
    process = logic.createProcess(job)
    process.start()
    events = process.wait(300)
    assert process.state is ProcessState.FINISHED, [e.message for e in events if e.kind is EventKind.FAILED]
    return job


def sliceView(scene, name: str = "Red"):
    """A slice view as the Slicer application has one: its slice node and its composite node (layers)."""
    sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    sliceNode.SetLayoutName(name)
    sliceNode.SetOrientationToAxial()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetLayoutName(name)
    return sliceNode, composite


def test_uncertainty_map_is_a_volume_on_the_inputs_grid_shown_over_it(obliqueCase, logic):
    scene, volume, path, tmp = obliqueCase
    sliceNode, composite = sliceView(scene)
    job = runJob(logic, SegmentationRequest(volume, MODEL, device="cpu", uncertaintyMap=True))
    created = []
    try:
        # A missing map is an error, and nothing in the scene changes.
        nodes, modified = scene.GetNumberOfNodes(), scene.GetMTime()
        aside = job.uncertaintyPath.with_name("aside.nrrd")
        job.uncertaintyPath.rename(aside)
        with pytest.raises(DSSMError, match="uncertainty map .* missing or unreadable"):
            logic.importResult(job)
        assert (scene.GetNumberOfNodes(), scene.GetMTime()) == (nodes, modified)
        aside.rename(job.uncertaintyPath)

        segmentation = logic.importResult(job)
        node = job.uncertaintyVolume
        created = [segmentation, node]
    finally:
        job.cleanup()
    try:
        # On the input's exact (oblique, anisotropic) grid, under the same transform, as a float volume ...
        assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetScene() is scene
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        assert np.abs(ijkToRas(node) - ijkToRas(volume)).max() < 1e-9
        assert node.GetTransformNodeID() == volume.GetTransformNodeID()
        values = voxels(node)
        assert values.dtype == np.float32 and 0 <= values.min() and values.max() <= 1
        # ... holding exactly what dssm segment --uncertainty writes for the same file.
        proc = run_dssm(["segment", "--model", MODEL, "--device", "cpu", "--uncertainty", "-o", tmp / "cli-unc", path],
                        cwd=tmp)
        assert proc.returncode == 0, describe(proc)
        cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "cli-unc" / "oblique_uncertainty.nii.gz")))
        assert cli.shape == values.shape and np.abs(cli - values).max() < 1e-6
        findings = job.findings
        assert findings.threshold and (values > findings.threshold).sum() > 0
        # Shown in colour over the input in the slice views, near-certain voxels transparent.
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetForegroundOpacity() > 0.3
        display = node.GetDisplayNode()
        assert display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < findings.threshold
        # The slices with the most uncertain voxels, most first, as counted in the map along the slice axis (K).
        perSlice = (values > findings.threshold).reshape(values.shape[0], -1).sum(1)
        listed = [(s.index, s.voxels) for s in findings.uncertainSlices]
        assert listed == sorted(listed, key=lambda item: -item[1])
        assert all(perSlice[index] == count for index, count in listed)
        assert listed[0][1] == perSlice.max()
        assert set(findings.uncertainVolumes) == {label.name for label in resolve_model(MODEL).labels}
        # A validation volume of the model's own data: no warning.
        assert findings.warnings == [] and findings.familiar is True, findings.warnings
        # Clicking a slice centres the slice views on it.
        chosen = findings.uncertainSlices[-1]
        logic.jumpToSlice(chosen, scene)
        centre = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        assert np.allclose(centre, chosen.position, atol=1e-6)
        onSlice = np.linalg.solve(ijkToRas(volume), [*chosen.position, 1.0])[:3]  # back to voxel indices
        assert onSlice[2] == pytest.approx(chosen.index, abs=1e-6)
        # Running again updates the same map volume instead of adding another.
        again = runJob(logic, SegmentationRequest(volume, MODEL, steps=0, device="cpu", uncertaintyMap=True,
                                                  outputSegmentation=segmentation))
        try:
            logic.importResult(again)
        finally:
            again.cleanup()
        assert again.uncertaintyVolume is node and not np.array_equal(voxels(node), values)
    finally:
        for item in created + [sliceNode, composite]:
            scene.RemoveNode(item)


def test_an_unfamiliar_image_comes_back_with_its_warnings(tmp_path, logic):
    """A chest X-ray given to the heart model: the segments are made anyway, and the findings carry one warning
    that the image is unlike the training images and one for the structures that came out empty, each naming the
    volume and the model; the status area shows them white on red."""
    images = CXR / "images"
    _need(images)
    xray = sitk.ReadImage(str(images / "CHNCXR_0002_0.png"))
    sitk.WriteImage(sitk.JoinSeries(xray), str(tmp_path / "xray.nrrd"))  # as Slicer holds a 2D image
    scene = slicer.vtkMRMLScene()
    volume = readVolume(scene, tmp_path / "xray.nrrd")
    volume.SetName("chest X-ray")
    job = runJob(logic, SegmentationRequest(volume, MODEL, device="cpu"))
    try:
        segmentation = logic.importResult(job)
    finally:
        job.cleanup()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3
    findings = job.findings
    assert findings.familiar is False
    assert len(findings.warnings) == 2, findings.warnings
    unfamiliar, empty = findings.warnings
    assert unfamiliar.startswith(f"chest X-ray does not look like the images {MODEL} was trained on")
    assert "a 2D image" in unfamiliar
    assert empty.startswith("chest X-ray: ") and "came out empty" in empty and MODEL in empty
    html = Logic.resultHtml("Done.", findings)
    assert html.count(Logic.WARNING_STYLE) == 2 and "does not look like" in html


def test_the_panels_model_text_gives_the_default_k_and_why() -> None:
    """The panel says which K runs by default and why, as ``dssm models`` does, from the same bundle record."""
    from html import unescape

    from DSSMSegmentLib.bundle import available_models
    from DSSMSegmentSlicerLib.Logic import modelDescription

    for bundle in available_models():
        text = unescape(re.sub(r"<[^>]+>", "", modelDescription(bundle).replace("<br>", "\n")))
        line = [ln for ln in text.splitlines() if ln.startswith("Default K = ")]
        if bundle.architecture.kind == "dssm":
            assert line == [f"Default K = {bundle.default_steps}: {bundle.default_steps_reason()}."], text
        else:
            assert not line, text
