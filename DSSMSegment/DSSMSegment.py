"""DSSM Segment: the 3D Slicer module's doorway.

The panel, logic and background process live in ``DSSMSegmentSlicerLib``; the engine in ``DSSMSegmentLib``.
Nothing heavy is imported here, so that Slicer starts as fast without this module as with it.
"""

from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                            ScriptedLoadableModuleWidget)

SAMPLE_NAME = "DSSMSegmentCardiacMRI"
SAMPLE_FILE = Path(__file__).resolve().parent / "Resources" / "SampleData" / "acdc-patient011-ED.nii.gz"
SAMPLE_SHA256 = "b93a5263ad8bb9e6da6f79f353cbded51f18263c39c6a42ea7ba398ea79f9348"
SAMPLE_MODEL = "heart-cine-mri"


class DSSMSegment(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DSSM Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SampleData"]
        self.parent.contributors = ["DSSMSegment developers"]
        self.parent.helpText = _("""
Segments cardiac, left-atrium and prostate MRI, chest X-rays and dermoscopy photographs with DSSM, a diffusion
semantic segmentation model: pick a volume and a model, click <b>Segment</b>, then correct the result in the
Segment Editor. See the <a href="https://github.com/dssmsegment/SlicerDSSMSegment/blob/main/docs/slicer.md">
documentation</a>.<br><br>
Method: Liu T, Li J, Torigian DA, Tong Y, Xiong Q, Zhang K, Udupa JK. "Diffusion semantic segmentation model:
A generative model for medical image segmentation based on joint distribution." Medical Physics 52(7), 2025.
<a href="https://doi.org/10.1002/mp.17928">doi:10.1002/mp.17928</a>. This implementation is an independent
reading of the paper's abstract; please cite the paper when you use it.<br><br>
<b>Not for clinical use.</b> Research software, not a medical device.""")
        self.parent.acknowledgementText = _("""
The DSSM method is by Liu et al. (Medical Physics, 2025). The sample volume is from the ACDC challenge
(Bernard et al., IEEE TMI 2018, CC BY-NC-SA 4.0). PyTorch is installed through the SlicerPyTorch extension.""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the bundled cine MRI frame with the Sample Data module.

    The file ships inside the extension, so its URI is a local ``file://`` one: Sample Data copies it into
    its cache (checking the SHA256) and loads it, with no network access.
    """
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="DSSM Segment",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(Path(__file__).resolve().parent / "Resources" / "Icons" / f"{SAMPLE_NAME}.png"),
        uris=SAMPLE_FILE.as_uri(),
        fileNames=SAMPLE_FILE.name,
        checksums=f"SHA256:{SAMPLE_SHA256}",
        nodeNames="acdc-patient011-ED",
    )


class DSSMSegmentWidget(ScriptedLoadableModuleWidget):
    """The module panel: builds ``DSSMSegmentSlicerLib.Widget`` and forwards the module's life cycle to it."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from DSSMSegmentSlicerLib.Widget import Widget

        self.panel = Widget()
        self.logic = self.panel.logic
        self.layout.addWidget(self.panel)
        self.layout.addStretch(1)

    def enter(self):
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def cleanup(self):
        self.panel.cleanup()


class DSSMSegmentTest(ScriptedLoadableModuleTest):
    """Inside Slicer: segment the sample through the logic and through the panel (with Cancel)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSample()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _loadSample(self):
        import SampleData
        from DSSMSegmentSlicerLib.InstallLogic import InstallLogic

        testing = slicer.app.commandOptions().testingEnabled
        self.assertTrue(InstallLogic().install(confirm=lambda q: testing or slicer.util.confirmOkCancelDisplay(q)),
                        "the test needs the Python packages that DSSM uses")
        registerSampleData()
        return SampleData.downloadSample(SAMPLE_NAME)

    def test_SegmentSample(self):
        from DSSMSegmentLib.bundle import resolve_model
        from DSSMSegmentSlicerLib.Logic import SOURCE_TAG, DSSMSegmentLogic, SegmentationRequest, segmentTag

        volume = self._loadSample()
        self.delayDisplay("Segmenting the sample (a few seconds on a CPU)")
        logic = DSSMSegmentLogic()
        segmentation = logic.segment(SegmentationRequest(volume, SAMPLE_MODEL), timeout=600)
        labels = resolve_model(SAMPLE_MODEL).labels
        for run in range(2):  # the second run must replace the segments, not add more
            segments = [segmentation.GetSegmentation().GetNthSegment(i) for i in range(len(labels))]
            self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), len(labels))
            self.assertEqual([s.GetName() for s in segments], [label.name for label in labels])
            for segment, label in zip(segments, labels):
                self.assertEqual(segmentTag(segment, SOURCE_TAG), f"{SAMPLE_MODEL}:{label.value}")
                self.assertIn(label.terminology["type"][1], segmentTag(segment, segment.GetTerminologyEntryTagName()))
            for segmentId in [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(len(labels))]:
                voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
                self.assertGreater(voxels.sum(), 100)
            if run == 0:
                logic.segment(SegmentationRequest(volume, SAMPLE_MODEL, outputSegmentation=segmentation), timeout=600)
        self.delayDisplay("Sample segmented")

    def test_CancelLeavesSceneUnchanged(self):
        volume = self._loadSample()
        panel = slicer.util.getModuleWidget("DSSMSegment").panel
        slicer.util.selectModule("DSSMSegment")
        parameters = panel._parameterNode
        parameters.inputVolume, parameters.outputSegmentation = volume, None
        nodesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        panel.ui.segmentButton.click()
        self.assertEqual(panel.ui.segmentButton.text, "Cancel")
        panel.ui.segmentButton.click()
        slicer.app.processEvents()
        self.assertEqual(panel.ui.segmentButton.text, "Segment")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), nodesBefore)
        self.delayDisplay("Cancel left the scene unchanged")
