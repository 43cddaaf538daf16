"""The user's choices in the panel, kept in the scene's parameter node so that they are saved with it.

Each field but ``model`` is bound to the widget whose ``SlicerParameterName`` property names it in
``Resources/UI/DSSMSegment.ui`` (``connectGui``). The model list depends on the installed bundles, so the
panel fills that combo box and keeps ``model`` in step itself.
"""

from typing import Annotated, Union

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLVectorVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

from .Logic import MAX_SAMPLES, MAX_STEPS, Device

MODULE_NAME = "DSSMSegment"


@parameterNodeWrapper
class DSSMSegmentParameters:
    """
    inputVolume - the volume to segment (scalar, or vector for RGB images).
    model - name of the model bundle.
    steps - Markov steps K; set to the model's default when the model changes.
    samples - Markov chains per slice, averaged (1: fastest).
    testTimeAugmentation - also segment the image flipped and zoomed as in training, and average (slower).
    uncertaintyMap - also make the uncertainty map, shown in colour over the input (several Markov chains: slower).
    device - auto, CPU or GPU.
    outputSegmentation - the segmentation to update; None creates a new one on the next run.
    show3D - show the result as surfaces in the 3D view.
    """

    inputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]
    model: str = ""
    steps: Annotated[int, WithinRange(0, MAX_STEPS)] = 4
    samples: Annotated[int, WithinRange(1, MAX_SAMPLES)] = 1
    testTimeAugmentation: bool = False
    uncertaintyMap: bool = False
    device: Device = Device.AUTO
    outputSegmentation: vtkMRMLSegmentationNode
    show3D: bool = True


def getParameterNode() -> DSSMSegmentParameters:
    """This module's singleton parameter node in the current scene, created if missing."""
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    logic = ScriptedLoadableModuleLogic()
    logic.moduleName = MODULE_NAME  # its default comes from the class name, which is not ours here
    return DSSMSegmentParameters(logic.getParameterNode())
