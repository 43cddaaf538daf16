"""The DSSM Segment panel: the ``.ui`` bound to the parameter node, the run's progress, and its result.

The panel is given its logic and installer (:class:`~.Logic.SegmentationLogicProtocol`,
:class:`~.InstallLogic.InstallLogicProtocol`), so a test can hand it fakes. A run goes:
check dependencies -> ask before overwriting edited segments -> ``logic.prepare`` -> start the background
process -> a ``qt.QTimer`` polls it for progress -> ``logic.importResult``. Until that last step the scene
is untouched, so Cancel or an error leave it as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from .InstallLogic import InstallError, InstallLogic, InstallLogicProtocol
from .Logic import (DSSMSegmentLogic, Device, Findings, GpuStatus, SegmentationJob, SegmentationLogicProtocol,
                    SegmentationRequest, modelDescription, resultHtml)
from .Parameters import DSSMSegmentParameters, getParameterNode
from .Process import EventKind, ProcessProtocol

UI_PATH = Path(__file__).resolve().parents[1] / "Resources" / "UI" / "DSSMSegment.ui"
POLL_INTERVAL_MS = 100  # how often the timer drains the process's output queue


@dataclass
class _Run:
    """The run in progress."""

    job: SegmentationJob
    process: ProcessProtocol
    startTime: float
    stage: str = "starting"

    @property
    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.startTime)
        return f"{seconds // 60}:{seconds % 60:02d}"


class Widget(qt.QWidget, VTKObservationMixin):
    """The panel. ``logic`` and ``installLogic`` default to the real ones; a test may pass fakes."""

    def __init__(self, logic: Optional[SegmentationLogicProtocol] = None,
                 installLogic: Optional[InstallLogicProtocol] = None, parent=None) -> None:
        qt.QWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic or DSSMSegmentLogic()
        self.installLogic = installLogic or InstallLogic()
        self._parameterNode: Optional[DSSMSegmentParameters] = None
        self._parameterNodeGuiTag = None
        self._models: Dict[str, object] = {}  # name -> ModelBundle
        self._gpu: Optional[GpuStatus] = None
        self._missing: List[str] = []
        self._run: Optional[_Run] = None
        self._findings: Optional[Findings] = None  # of the last run, for the slice links in the status area

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(str(UI_PATH))
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self._timer = qt.QTimer(self)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self.ui.segmentButton.connect("clicked()", self.onSegmentButton)
        self.ui.installButton.connect("clicked()", self.onInstallButton)
        self.ui.editButton.connect("clicked()", self.onEditButton)
        self.ui.show3DButton.connect("toggled(bool)", self._applyShow3D)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.statusLabel.connect("linkActivated(QString)", self.onStatusLink)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.refreshDependencies()
        self.initializeParameterNode()

    # --- module life cycle (called by the module's widget) --------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        """Leaving the module: stop mirroring the parameter node in the GUI; a run goes on."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def cleanup(self) -> None:
        if self._run is not None:
            self._cancelRun()
        self.setParameterNode(None)
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.isVisible():
            self.initializeParameterNode()

    # --- parameter node --------------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode: Optional[DSSMSegmentParameters]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._applyGpuStatus()  # connectGui refills the device combo box
            self._selectModel(self._parameterNode.model)
            self._updateGui()

    # --- dependencies, models, devices -----------------------------------------------------------------------
    def refreshDependencies(self) -> None:
        """Fill the model list (reading a bundle needs no PyTorch), show what is missing, and the GPU status
        once PyTorch is there."""
        self._missing = self.installLogic.missingPackages()
        self.ui.dependenciesFrame.setVisible(bool(self._missing))
        if self._missing:
            self.ui.dependenciesLabel.text = (
                "DSSM needs these Python packages, which are not installed yet: "
                + ", ".join("PyTorch" if name == "torch" else name for name in self._missing)
                + ". Click Install (you are asked before anything is downloaded), or click Segment and you "
                  "are asked then.")
        self._models = {bundle.name: bundle for bundle in self.logic.availableModels()}
        self._gpu = None if "torch" in self._missing else self.logic.gpuStatus()
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for name, bundle in self._models.items():
            combo.addItem(name)
            combo.setItemData(combo.count - 1, bundle.meta.get("description", ""), qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self._applyGpuStatus()
            self._selectModel(self._parameterNode.model)

    def _selectModel(self, name: str) -> None:
        """Show ``name`` in the combo box, or the first model when it is not installed."""
        combo = self.ui.modelComboBox
        index = combo.findText(name) if name else -1
        if index < 0 and combo.count > 0:
            index = 0
        combo.setCurrentIndex(index)
        self.onModelChanged(index)

    def onModelChanged(self, index: int) -> None:
        if index < 0 or not self._parameterNode:
            self.ui.modelInfoLabel.text = ""
            return
        bundle = self._models[self.ui.modelComboBox.itemText(index)]
        self.ui.modelInfoLabel.text = modelDescription(bundle)
        if self._parameterNode.model != bundle.name:
            wasModifying = self._parameterNode.StartModify()
            self._parameterNode.model = bundle.name
            self._parameterNode.steps = bundle.default_steps
            self._parameterNode.EndModify(wasModifying)

    def _applyGpuStatus(self) -> None:
        """Disable the GPU choice, and say why, when PyTorch finds no usable GPU."""
        if self._gpu is None:
            self.ui.deviceInfoLabel.text = ""
            return
        index = self.ui.deviceComboBox.findText(Device.GPU.label())
        if index >= 0:
            self.ui.deviceComboBox.model().item(index).setEnabled(self._gpu.available)
        if self._gpu.available:
            self.ui.deviceInfoLabel.text = f"GPU: {self._gpu.detail}"
        else:
            self.ui.deviceInfoLabel.text = f"GPU unavailable: {self._gpu.detail}"
            if self._parameterNode and self._parameterNode.device is Device.GPU:
                self._parameterNode.device = Device.AUTO

    def onInstallButton(self) -> bool:
        """Ask, install, and refresh the panel; True when everything needed is installed."""
        try:
            ready = self.installLogic.install(confirm=slicer.util.confirmOkCancelDisplay)
        except InstallError as error:
            slicer.util.errorDisplay(str(error), windowTitle="DSSM Segment: installation failed")
            ready = False
        self.refreshDependencies()
        self._updateGui()
        return ready and not self._missing

    # --- GUI state ------------------------------------------------------------------------------------------
    def _updateGui(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self._run is not None
        canRun = bool(parameters and parameters.inputVolume and parameters.model in self._models)
        self.ui.segmentButton.text = "Cancel" if running else "Segment"
        self.ui.segmentButton.enabled = running or canRun or bool(self._missing)
        if running:
            self.ui.segmentButton.toolTip = "Stop the segmentation; the scene stays as it was."
        elif self._missing:
            self.ui.segmentButton.toolTip = "Install the missing Python packages first (you are asked)."
        elif not canRun:
            self.ui.segmentButton.toolTip = "Select an input volume and a model."
        else:
            self.ui.segmentButton.toolTip = "Segment the input volume with the chosen model."
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputCollapsibleButton, self.ui.installButton):
            widget.enabled = not running
        # K and the samples only mean something for a DSSM model (a baseline has no chain), the samples only at K > 0
        bundle = self._models.get(parameters.model) if parameters else None
        hasChain = bool(bundle and bundle.architecture.kind == "dssm")
        self.ui.stepsSpinBox.enabled = hasChain
        self.ui.samplesSpinBox.enabled = hasChain and parameters.steps > 0
        hasResult = bool(parameters and parameters.outputSegmentation)
        self.ui.editButton.enabled = hasResult and not running
        self.ui.show3DButton.enabled = hasResult

    def _applyShow3D(self, show: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is None:
            return
        if show:
            segmentation.CreateClosedSurfaceRepresentation()
        else:
            segmentation.RemoveClosedSurfaceRepresentation()

    # --- a run ------------------------------------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._run is not None:
            self._cancelRun()
        else:
            self._startRun()

    def _startRun(self) -> None:
        from DSSMSegmentLib.errors import DSSMError

        if self._missing and not self.onInstallButton():
            return
        parameters = self._parameterNode
        overwrite = False
        edited = self.logic.editedSegmentNames(parameters.outputSegmentation, parameters.model)
        if edited:
            overwrite = self._askOverwrite(edited)
            if overwrite is None:
                return
        request = SegmentationRequest(parameters.inputVolume, parameters.model, parameters.steps,
                                      parameters.device.value, parameters.outputSegmentation, overwrite,
                                      parameters.testTimeAugmentation, parameters.samples,
                                      parameters.uncertaintyMap)
        try:
            job = self.logic.prepare(request)
        except DSSMError as error:
            self._showError(str(error))
            return
        process = self.logic.createProcess(job)
        try:
            process.start()
        except OSError as error:
            job.cleanup()
            self._showError(f"could not start the segmentation process ({error})")
            return
        self._run = _Run(job, process, time.monotonic())
        self._findings = None
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."
        self._timer.start()
        self._updateGui()

    def _poll(self) -> None:
        """Timer slot: drain the process's events into the progress bar and status line."""
        run = self._run
        if run is None:  # a timeout that was queued before the run ended
            return
        for event in run.process.poll():
            if event.kind is EventKind.PROGRESS:
                run.stage = event.stage
                if event.fraction is not None:
                    self.ui.progressBar.value = int(round(100 * event.fraction))
            elif event.kind is EventKind.LOG:
                logging.info(f"DSSM: {event.message}")
            elif event.kind is EventKind.FINISHED:
                self._endRun()
                self._importResult(run)
                return
            elif event.kind is EventKind.FAILED:
                self._endRun()
                run.job.cleanup()
                self._showError(event.message)
                return
        self.ui.statusLabel.text = f"{run.stage.capitalize()} - {run.elapsed}"

    def _importResult(self, run: _Run) -> None:
        from DSSMSegmentLib.errors import DSSMError

        try:
            segmentation = self.logic.importResult(run.job)
        except DSSMError as error:
            self._showError(str(error))
            return
        finally:
            run.job.cleanup()
        parameters = self._parameterNode
        parameters.outputSegmentation = segmentation
        self._applyShow3D(parameters.show3D)
        if run.job.uncertaintyVolume is None:  # the map, when there is one, is the foreground (set by the logic)
            slicer.util.setSliceViewerLayers(background=parameters.inputVolume, fit=False)
        self.ui.progressBar.value = 100
        self._findings = run.job.findings
        self.ui.statusLabel.text = resultHtml(
            f"Done in {run.elapsed}: {len(run.job.bundle.labels)} structures in '{segmentation.GetName()}'. "
            "Correct them with Edit in Segment Editor.", self._findings)
        for warning in self._findings.warnings:
            logging.warning(f"DSSM: {warning}")

    def onStatusLink(self, link: str) -> None:
        """A click on a slice in the status area: centre the slice views on it."""
        kind, _, index = str(link).partition(":")
        if kind == "slice" and self._findings and index.isdigit() and int(index) < len(self._findings.uncertainSlices):
            self.logic.jumpToSlice(self._findings.uncertainSlices[int(index)])

    def _cancelRun(self) -> None:
        run = self._run
        run.process.cancel()
        run.job.cleanup()
        self._endRun()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = f"Cancelled after {run.elapsed}; nothing was changed."

    def _endRun(self) -> None:
        self._timer.stop()
        self._run = None
        self._updateGui()

    def _showError(self, message: str) -> None:
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Failed; nothing was changed."
        slicer.util.errorDisplay(f"Segmentation failed: {message}", windowTitle="DSSM Segment")

    def _askOverwrite(self, names: List[str]) -> Optional[bool]:
        """True: overwrite the edited segments; False: keep them; None: do not run."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("DSSM Segment")
        box.setIcon(qt.QMessageBox.Question)
        box.setText("You edited these segments since DSSM made them: " + ", ".join(names) + ".")
        box.setInformativeText("Overwrite them with the new result, or keep your edits and update only the "
                               "other segments?")
        overwrite = box.addButton("Overwrite", qt.QMessageBox.DestructiveRole)
        keep = box.addButton("Keep my edits", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        return True if clicked == overwrite else False if clicked == keep else None

    # --- result -------------------------------------------------------------------------------------------------
    def onEditButton(self) -> None:
        """Open the Segment Editor on the result, with the input as source volume and its first segment selected."""
        parameters = self._parameterNode
        segmentation = parameters.outputSegmentation
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(parameters.inputVolume)
        if segmentation.GetSegmentation().GetNumberOfSegments():
            editor.setCurrentSegmentID(segmentation.GetSegmentation().GetNthSegmentID(0))
