"""The panel's ``.ui`` file, loaded offscreen with PySide6's QUiLoader (no Slicer application needed).

Slicer's own widgets (``qMRMLNodeComboBox``, ``ctkCollapsibleButton``, ``qMRMLWidget``) do not exist in
PySide6, so QUiLoader falls back to their base class. The tests check that every widget the module's code
reaches through ``.ui.<name>`` is there with a usable type, that every ``SlicerParameterName`` binds a
parameter of the right type, and they save the picture of the panel used by the README.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QByteArray, QBuffer, QIODevice  # noqa: E402
from PySide6.QtWidgets import (QApplication, QComboBox, QLabel, QProgressBar, QPushButton, QSpinBox,  # noqa: E402
                               QWidget)
from PySide6.QtUiTools import QUiLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DSSMSegment"
UI_FILE = MODULE / "Resources" / "UI" / "DSSMSegment.ui"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "panel.png"
CODE_FILES = [MODULE / "DSSMSegment.py", *sorted((MODULE / "DSSMSegmentSlicerLib").glob("*.py"))]

# How each kind of parameter is bound by Slicer's parameterNodeWrapper (its GUI connectors).
CONNECTOR_WIDGETS = {"int": {"QSpinBox", "QSlider"}, "bool": {"QCheckBox", "QPushButton"},
                     "Device": {"QComboBox"}, "node": {"qMRMLNodeComboBox"}}
# Only for the picture: a PySide6 class that looks like each Slicer widget.
LOOKALIKES = {"qMRMLWidget": "QWidget", "qMRMLNodeComboBox": "QComboBox", "ctkCollapsibleButton": "QGroupBox"}


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


def load(app, xml: bytes) -> QWidget:
    buffer = QBuffer()
    buffer.setData(QByteArray(xml))
    buffer.open(QIODevice.ReadOnly)
    widget = QUiLoader().load(buffer)
    assert widget is not None, "QUiLoader could not load the .ui file"
    return widget


def uiNamesUsedByCode() -> dict:
    """``name -> [file:line]`` for every ``<something>.ui.<name>`` in the module's Python code."""
    used = {}
    for path in CODE_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
                used.setdefault(node.attr, []).append(f"{path.name}:{node.lineno}")
    return used


def parameterFields() -> dict:
    """``field -> type name`` of the parameterNodeWrapper class in Parameters.py (read, not imported: it
    needs Slicer)."""
    tree = ast.parse((MODULE / "DSSMSegmentSlicerLib" / "Parameters.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DSSMSegmentParameters")
    fields = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign):
            text = ast.unparse(item.annotation)
            fields[item.target.id] = ("node" if "vtkMRML" in text else
                                      re.match(r"(?:Annotated\[)?(\w+)", text).group(1))
    return fields


def widgetsInXml() -> dict:
    """``objectName -> (class, {property: text})`` straight from the XML."""
    widgets = {}
    for element in ET.parse(UI_FILE).getroot().iter("widget"):
        properties = {p.get("name"): "".join(p.itertext()).strip() for p in element.findall("property")}
        widgets[element.get("name")] = (element.get("class"), properties)
    return widgets


def test_every_widget_the_code_uses_exists_with_a_usable_type(app):
    panel = load(app, UI_FILE.read_bytes())
    assert panel.objectName() == "DSSMSegment"
    expected = {"segmentButton": QPushButton, "installButton": QPushButton, "editButton": QPushButton,
                "show3DButton": QPushButton, "modelComboBox": QComboBox, "deviceComboBox": QComboBox,
                "stepsSpinBox": QSpinBox, "samplesSpinBox": QSpinBox, "progressBar": QProgressBar, "statusLabel": QLabel,
                "modelInfoLabel": QLabel, "deviceInfoLabel": QLabel, "dependenciesLabel": QLabel}
    used = uiNamesUsedByCode()
    assert {"segmentButton", "progressBar", "statusLabel", "modelComboBox"} <= set(used), sorted(used)
    for name, places in used.items():
        widget = panel.findChild(QWidget, name)
        assert widget is not None, f"{name} (used at {', '.join(places)}) is not in {UI_FILE.name}"
        if name in expected:
            assert isinstance(widget, expected[name]), f"{name} is a {type(widget).__name__}"
    assert panel.findChild(QPushButton, "show3DButton").isCheckable()


def signalConnections() -> list:
    """``(widget name, signal signature, file:line)`` for every ``<x>.ui.<name>.connect("signal(...)", slot)``."""
    found = []
    for path in CODE_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                    and isinstance(node.func.value, ast.Attribute) and isinstance(node.func.value.value, ast.Attribute)
                    and node.func.value.value.attr == "ui" and node.args and isinstance(node.args[0], ast.Constant)):
                found.append((node.func.value.attr, node.args[0].value, f"{path.name}:{node.lineno}"))
    return found


def test_every_signal_the_code_connects_to_exists_on_its_widget(app):
    panel = load(app, UI_FILE.read_bytes())
    connections = signalConnections()
    assert {name for name, _, _ in connections} >= {"segmentButton", "modelComboBox", "show3DButton"}
    for name, signature, place in connections:
        meta = panel.findChild(QWidget, name).metaObject()
        assert meta.indexOfSignal(signature) >= 0, f"{place}: {meta.className()} has no signal {signature}"


def test_every_parameter_binding_names_a_field_of_a_bindable_type():
    fields, widgets = parameterFields(), widgetsInXml()
    bound = {props["SlicerParameterName"]: (cls, name)
             for name, (cls, props) in widgets.items() if "SlicerParameterName" in props}
    # The model list depends on the installed bundles, so the panel keeps `model` in step itself.
    assert set(bound) == set(fields) - {"model"}, (sorted(bound), sorted(fields))
    for field, (cls, name) in bound.items():
        assert cls in CONNECTOR_WIDGETS[fields[field]], f"{name} ({cls}) cannot bind {field}: {fields[field]}"


def test_selectors_offer_the_right_nodes_and_the_steps_match_the_logic():
    from DSSMSegmentSlicerLib.Logic import MAX_SAMPLES, MAX_STEPS

    widgets = widgetsInXml()
    inputClass, inputProps = widgets["inputVolumeSelector"]
    assert inputClass == "qMRMLNodeComboBox"
    assert inputProps["nodeTypes"].split() == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
    assert inputProps["showChildNodeTypes"] == "false", "labelmaps (a scalar volume subclass) must not be offered"
    _, outputProps = widgets["outputSegmentationSelector"]
    assert outputProps["nodeTypes"] == "vtkMRMLSegmentationNode"
    assert outputProps["noneEnabled"] == "true" and outputProps["noneDisplay"] == "Create new segmentation"
    _, stepsProps = widgets["stepsSpinBox"]
    assert int(stepsProps["minimum"]) == 0 and int(stepsProps["maximum"]) == MAX_STEPS
    for words in ("K = 0", "no refinement", "fastest", "default comes from the model", "longer", "steadier"):
        assert words in stepsProps["toolTip"], words
    _, samplesProps = widgets["samplesSpinBox"]
    assert int(samplesProps["minimum"]) == 1 and int(samplesProps["maximum"]) == MAX_SAMPLES
    assert int(samplesProps["value"]) == 1, "one sample (the fastest) unless the user asks for more"


def lookalikeXml() -> bytes:
    """The .ui with Slicer's widgets swapped for PySide6 look-alikes (a collapsible button's text becomes a
    group box's title), so that the picture shows what Slicer shows."""
    root = ET.parse(UI_FILE).getroot()
    for element in root.iter("widget"):
        cls = element.get("class")
        element.set("class", LOOKALIKES.get(cls, cls))
        if cls == "ctkCollapsibleButton":
            element.find("property[@name='text']").set("name", "title")
    for unused in ("customwidgets", "connections"):
        root.remove(root.find(unused))
    return ET.tostring(root)


def test_panel_screenshot(app, tmp_path):
    """Fill the panel as Slicer shows it for the sample, with the real bundled models, and save its picture
    (to the tracked Resources/Screenshots/panel.png only with DSSM_UPDATE_SCREENSHOT=1, so that running the
    tests leaves the checkout unchanged)."""
    from DSSMSegmentLib.bundle import BUNDLED_MODELS_DIR, available_models
    from DSSMSegmentSlicerLib.Logic import DSSMSegmentLogic, Device, modelDescription

    panel = load(app, lookalikeXml())
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QComboBox, "inputVolumeSelector").addItem("acdc-patient011-ED")
    models = [m for m in available_models() if m.path.parent == BUNDLED_MODELS_DIR]
    assert [m.name for m in models][:1] == ["heart-cine-mri"]
    find(QComboBox, "modelComboBox").addItems([m.name for m in models])
    find(QLabel, "modelInfoLabel").setText(modelDescription(models[0]))
    find(QSpinBox, "stepsSpinBox").setValue(models[0].default_steps)
    devices = find(QComboBox, "deviceComboBox")
    devices.addItems([device.label() for device in Device])
    gpu = DSSMSegmentLogic().gpuStatus()
    devices.model().item(devices.findText(Device.GPU.label())).setEnabled(gpu.available)
    find(QLabel, "deviceInfoLabel").setText(("GPU: " if gpu.available else "GPU unavailable: ") + gpu.detail)
    find(QComboBox, "outputSegmentationSelector").addItem("Create new segmentation")
    find(QWidget, "dependenciesFrame").setVisible(False)
    find(QPushButton, "show3DButton").setChecked(True)
    panel.resize(440, 10)
    panel.resize(440, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    picture = panel.grab()
    target = SCREENSHOT if os.environ.get("DSSM_UPDATE_SCREENSHOT") == "1" else tmp_path / "panel.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert picture.save(str(target)), f"could not write {target}"
    assert picture.width() >= 400 and picture.height() >= 300
    image = picture.toImage()
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20, "the picture looks blank"
    panel.close()
