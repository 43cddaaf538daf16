"""The module's calls into Slicer, checked against Slicer's own source (no Slicer application needed).

``Data/slicer_api_snapshot.json`` holds facts read by ``scripts/slicer_api_snapshot.py`` from Slicer (the
latest stable release and the preview, ``main``), the CTK commit each pins, and the PyTorch extension, at
pinned commits. ``slicer_api_check.py`` follows every use of Slicer's API in ``DSSMSegment.py``,
``DSSMSegmentSlicerLib/*.py`` and the ``.ui`` file to the fact that defines it (see its docstring). These
tests check that everything fits each Slicer version, that the check reaches the APIs that matter, and that
it fails: for a misspelling of every single use it found, and for the kinds of mistakes listed below.
No network access: the snapshot is committed.
"""

from __future__ import annotations

import io
import json
import re
import tokenize

import pytest

from slicer_api_check import ROOT, SNAPSHOT, UI_FILE, UI_PATH, check, loadSnapshot, moduleFiles

VERSIONS = loadSnapshot()["versions"]
PREVIEW = VERSIONS[-1]
IDS = [v["name"] for v in VERSIONS]
WIDGET = "DSSMSegment/DSSMSegmentSlicerLib/Widget.py"
MODULE = "DSSMSegment/DSSMSegment.py"
INSTALL = "DSSMSegment/DSSMSegmentSlicerLib/InstallLogic.py"
PARAMETERS = "DSSMSegment/DSSMSegmentSlicerLib/Parameters.py"

# The APIs that the issue names, and the others that only a running Slicer would otherwise exercise: the check
# must reach each of them (so that it is not silently skipping a whole kind of use).
REQUIRED_APIS = [
    "slicer.util.pip_install", "slicer.util.childWidgetVariables", "slicer.util.loadUI",
    "slicer.util.VTKObservationMixin", "slicer.util.errorDisplay", "slicer.util.confirmOkCancelDisplay",
    "slicer.util.selectModule", "slicer.util.getModuleWidget", "slicer.util.setSliceViewerLayers",
    "slicer.util.mainWindow", "slicer.util.arrayFromSegmentBinaryLabelmap",
    "SampleData.SampleDataLogic.registerCustomSampleDataSource", "SampleData.downloadSample",
    "PyTorchUtils.PyTorchUtilsLogic", "PyTorchUtils.PyTorchUtilsLogic.installTorch",
    "slicer.app", "qSlicerApplication.commandOptions", "qSlicerCoreCommandOptions.testingEnabled",
    "qSlicerApplication::startupCompleted()", "qSlicerCoreApplication.processEvents",
    "slicer.modules", "slicer.modules.segmenteditor", "qSlicerAbstractModule.widgetRepresentation",
    "qSlicerScriptedLoadableModuleWidget.self", "SegmentEditor.SegmentEditorWidget.editor",
    "qMRMLSegmentEditorWidget.setSegmentationNode", "qMRMLSegmentEditorWidget.setSourceVolumeNode",
    "qMRMLSegmentEditorWidget.setCurrentSegmentID", "qMRMLWidget.setMRMLScene",
    "slicer.parameterNodeWrapper.parameterNodeWrapper", "slicer.parameterNodeWrapper.WithinRange",
    "parameterNodeWrapper.connectGui", "parameterNodeWrapper.disconnectGui",
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic.getParameterNode",
    "qSlicerScriptedLoadableModule.title", "slicer.i18n.tr", "slicer.i18n.translate",
    "qMRMLNodeComboBox", "ctkCollapsibleButton", "qMRMLWidget", "qMRMLNodeComboBox.nodeTypes",
    "dynamic property SlicerParameterName", "qMRMLWidget::mrmlSceneChanged(vtkMRMLScene*)",
]


@pytest.fixture(scope="module")
def reports():
    return {v["name"]: check(v) for v in VERSIONS}


def findings(version=PREVIEW, only=None, **replacements):
    """The findings after replacing text in the module's files: ``WIDGET=[(old, new)]`` etc.; ``ui`` for the
    .ui file."""
    files = moduleFiles()
    uiText = UI_FILE.read_text(encoding="utf-8")
    for key, pairs in replacements.items():
        for old, new in pairs:
            if key == "ui":
                assert old in uiText, old
                uiText = uiText.replace(old, new, 1)
            else:
                path = {"WIDGET": WIDGET, "MODULE": MODULE, "INSTALL": INSTALL, "PARAMETERS": PARAMETERS}[key]
                assert old in files[path], old
                files[path] = files[path].replace(old, new, 1)
    return [str(f) for f in check(version, files, uiText, only=only).findings]


def assertFinds(found, *patterns):
    for pattern in patterns:
        assert any(re.search(pattern, f) for f in found), f"no finding matches {pattern!r}: {found}"


# ---------------------------------------------------------------------------------------------------------
# The snapshot


def test_snapshot_pins_its_sources():
    """Each Slicer version names the commit it was read at, and the CTK and SlicerPyTorch commits."""
    raw = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw["date"])
    roles = [v["role"] for v in raw["versions"]]
    assert "stable" in roles and "preview" in roles
    for version in raw["versions"]:
        for source in ("Slicer", "CTK", "SlicerPyTorch"):
            assert re.fullmatch(r"[0-9a-f]{40}", version["sources"][source]["commit"]), (version["name"], source)
        assert version["sources"]["CTK"]["pinned_by"] == "SuperBuild/External_CTK.cmake"
    assert SNAPSHOT.stat().st_size < 120_000, "the snapshot should stay small: facts the module uses"


def test_docs_name_the_checked_versions():
    """docs/slicer-api.md and the README name the versions, commits and date of the snapshot."""
    raw = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    docs = (ROOT / "docs" / "slicer-api.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert raw["date"] in docs and raw["date"] in readme
    for version in raw["versions"]:
        assert version["name"] in readme and version["name"] in docs
        for source in ("Slicer", "CTK", "SlicerPyTorch"):
            assert version["sources"][source]["commit"] in docs


# ---------------------------------------------------------------------------------------------------------
# The module fits every version


@pytest.mark.parametrize("name", IDS)
def test_module_fits_slicer_api(reports, name):
    assert not reports[name].findings, "\n".join(map(str, reports[name].findings))


@pytest.mark.parametrize("name", IDS)
def test_check_reaches_the_apis_that_matter(reports, name):
    used = {u.api for u in reports[name].uses}
    missing = [api for api in REQUIRED_APIS if api not in used]
    assert not missing, f"the check no longer reaches {missing}"


def test_every_slicer_root_use_is_followed(reports):
    """Every ``slicer.util.X``, ``slicer.app...``, ``slicer.modules...``, ``SampleData.X`` and ``PyTorchUtils.X``
    in the code (not in strings or comments) is a checked use: none is skipped as being of unknown type."""
    used = {(u.path, u.line, u.name) for u in reports[PREVIEW["name"]].uses}
    pattern = re.compile(r"\b(?:slicer\.(?:util|app|modules)|SampleData|PyTorchUtils)((?:\.\w+(?:\(\))?)+)")
    unchecked, seen = [], 0
    for path, text in moduleFiles().items():
        for number, line in enumerate(codeOnly(text).splitlines(), 1):
            for match in pattern.finditer(line):
                for name in re.findall(r"\.(\w+)", match.group(1)):
                    seen += 1
                    if (path, number, name) not in used:
                        unchecked.append(f"{path}:{number}: .{name} in {match.group(0)}")
    assert seen > 20
    assert not unchecked, "\n".join(unchecked)


def codeOnly(text: str) -> str:
    """The source with strings and comments blanked (same lines and columns)."""
    lines = text.splitlines(keepends=True)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            (startRow, startCol), (endRow, endCol) = token.start, token.end
            for row in range(startRow, endRow + 1):
                line = lines[row - 1]
                a = startCol if row == startRow else 0
                b = endCol if row == endRow else len(line.rstrip("\n"))
                lines[row - 1] = line[:a] + " " * (b - a) + line[b:]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The check fails on mistakes


def _misspell(token: str) -> str:
    """Swap the last two characters (drop the last one when they are the same)."""
    if len(token) >= 2 and token[-1] != token[-2]:
        return token[:-2] + token[-1] + token[-2]
    return token[:-1]


@pytest.mark.parametrize("name", IDS)
def test_every_use_fails_when_misspelled(reports, name):
    """Misspell, one at a time, each name the check found in the code and the .ui (function, method, property,
    signal, keyword argument, module, widget class...): each must give a finding on its line."""
    version = next(v for v in VERSIONS if v["name"] == name)
    files, uiText = moduleFiles(), UI_FILE.read_text(encoding="utf-8")
    survivors, tried = [], set()
    for use in reports[name].uses:
        key = (use.path, use.line, use.col)
        if use.col < 0 or key in tried:
            continue
        tried.add(key)
        source = uiText if use.path == UI_PATH else files[use.path]
        lines = source.splitlines(keepends=True)
        line = lines[use.line - 1]
        assert line[use.col:use.col + len(use.name)] == use.name, (use, line)
        lines[use.line - 1] = line[:use.col] + _misspell(use.name) + line[use.col + len(use.name):]
        mutated = "".join(lines)
        report = check(version, {**files, use.path: mutated} if use.path != UI_PATH else files,
                       mutated if use.path == UI_PATH else uiText, only=use.path)
        if not any(f.path == use.path and f.line == use.line for f in report.findings):
            survivors.append(f"{use.path}:{use.line} {use.name} -> {_misspell(use.name)} ({use.api})")
    assert len(tried) > 250
    assert not survivors, "misspellings the check does not catch:\n" + "\n".join(survivors)


def test_misspelled_slicer_util_function():
    assertFinds(findings(INSTALL=[('slicer.util.pip_install(["-c"', 'slicer.util.pip_instal(["-c"')]),
                r"InstallLogic.py:\d+: .*slicer.util has no 'pip_instal'")


def test_unknown_keyword_arguments():
    found = findings(MODULE=[("thumbnailFileName=", "thumbnailFile=")],
                     INSTALL=[("askConfirmation=False", "askConfirm=False")])
    assertFinds(found, r"registerCustomSampleDataSource\(\) got an unexpected keyword argument 'thumbnailFile'",
                r"installTorch\(\) got an unexpected keyword argument 'askConfirm'")


def test_keyword_passed_through_kwargs_is_checked_where_it_lands():
    """``pip_install(**kwargs)`` passes keywords to ``slicer.packaging.pip_install``; ``errorDisplay(**kwargs)``
    ends in setting properties of a ctkMessageBox, which silently ignores unknown names."""
    found = findings(INSTALL=[('slicer.util.pip_install(["-c", str(constraints), *requirements])',
                               'slicer.util.pip_install(requirements, constraint=str(constraints))')],
                     WIDGET=[('windowTitle="DSSM Segment: installation failed"',
                              'windowTitel="DSSM Segment: installation failed"')])
    assertFinds(found, r"pip_install\(\) got an unexpected keyword argument 'constraint' .*slicer.packaging.pip_install",
                r"errorDisplay\(\) got an unexpected keyword argument 'windowTitel' .*ctkMessageBox")
    assert not findings(INSTALL=[('slicer.util.pip_install(["-c", str(constraints), *requirements])',
                                  'slicer.util.pip_install(requirements, constraints=str(constraints))')],
                        WIDGET=[('windowTitle="DSSM Segment: installation failed"',
                                 'windowTitle="x", dontShowAgainSettingsKey="k"')])


def test_wrong_number_of_arguments():
    found = findings(INSTALL=[("slicer.util.pip_install([", "slicer.util.pip_install(1, [")],
                     WIDGET=[("editor.setSourceVolumeNode(parameters.inputVolume)", "editor.setSourceVolumeNode()")],
                     MODULE=[("SampleData.downloadSample(SAMPLE_NAME)", "SampleData.downloadSample()")])
    assertFinds(found, r"pip_install\(\) takes at most 1 positional", r"setSourceVolumeNode takes 1 arguments, not 0",
                r"downloadSample\(\) is missing argument\(s\) sampleName")


def test_slicer_app_and_modules():
    found = findings(MODULE=[('"startupCompleted()"', '"startupComplete()"'),
                             ("slicer.app.commandOptions().testingEnabled", "slicer.app.commandOptions().testingEnable")],
                     WIDGET=[("slicer.modules.segmenteditor.", "slicer.modules.SegmentEditor."),
                             ('selectModule("SegmentEditor")', 'selectModule("Segmenteditor")'),
                             ("box = qt.QMessageBox(slicer.util.mainWindow())", "box = qt.QMessageBox(slicer.app.mainWindow())")])
    assertFinds(found, r"no signal startupComplete\(\)", r"has no .* 'testingEnable'",
                r"slicer.modules.SegmentEditor: no module", r"selectModule\('Segmenteditor'\): no module",
                r"qSlicerApplication.mainWindow is a C\+\+ method that is not a slot, Q_INVOKABLE or property")


def test_misspelled_import():
    found = findings(MODULE=[("import SampleData\n", "import SampleDate\n")],
                     WIDGET=[("from slicer.util import VTKObservationMixin", "from slicer.util import VTKObservationMixing")],
                     PARAMETERS=[("from slicer import vtkMRMLScalarVolumeNode,", "from slicer import vtkMRMLScalarVolumNode,")])
    assertFinds(found, r"import SampleDate: not a Slicer module", r"slicer.util has no 'VTKObservationMixing'",
                r"no class vtkMRMLScalarVolumNode")


def test_parameter_types_come_from_the_serializers():
    """A parameter type that no serializer of that Slicer version takes fails, and so does a validator that
    does not exist, one called with the wrong arguments, and a name that the wrapper reserves."""
    found = findings(PARAMETERS=[("    model: str = \"\"", "    model: complex = 0j"),
                                 ("WithinRange(0, MAX_STEPS)", "WithinRange(0)"),
                                 ("Annotated[int, WithinRange(1, MAX_SAMPLES)]", "Annotated[int, InRange(1, MAX_SAMPLES)]"),
                                 ("    show3D: bool = True", "    default: bool = True")])
    assertFinds(found, r"no parameterNodeWrapper serializer .* supports the type complex",
                r"WithinRange\(\) is missing argument\(s\) maximum", r"slicer.parameterNodeWrapper has no 'InRange'",
                r"'default' uses a name that parameterNodeWrapper reserves")
    # supported: Path, Optional[node], list[str], an enum
    assert not findings(PARAMETERS=[("    model: str = \"\"", "    model: pathlib.Path"),
                                    ("    outputSegmentation: vtkMRMLSegmentationNode",
                                     "    outputSegmentation: Optional[vtkMRMLSegmentationNode]"),
                                    ("    show3D: bool = True", "    show3D: list[str]")], only=PARAMETERS)


def test_ui_classes_properties_and_bindings():
    found = findings(ui=[('class="qMRMLNodeComboBox" name="inputVolumeSelector"', 'class="qMRMLNodeComboBx" name="inputVolumeSelector"'),
                         ('<property name="noneDisplay">', '<property name="noneDisplayed">'),
                         ('<property name="SlicerParameterName" stdset="0">\n         <string>steps',
                          '<property name="SlicerParameterNames" stdset="0">\n         <string>steps'),
                         ("<enum>Qt::RichText</enum>", "<enum>Qt::Richtext</enum>"),
                         ('class="QSpinBox" name="samplesSpinBox"', 'class="QLineEdit" name="samplesSpinBox"'),
                         ("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScene(vtkMRMLScene)</slot>")],
                     only=UI_PATH)
    assertFinds(found, r"no widget class qMRMLNodeComboBx", r"qMRMLNodeComboBox has no property 'noneDisplayed'",
                r"dynamic property 'SlicerParameterNames' is read by nothing",
                r"no enum value Qt::Richtext",
                r"no parameterNodeWrapper GUI connector .* binds a QLineEdit to 'samples: Annotated\[int",
                r"has no slot setMRMLScene\(vtkMRMLScene\)")


def test_ui_attributes_used_in_python():
    found = findings(WIDGET=[("self.ui.segmentButton.text = ", "self.ui.segmentButton.txt = "),
                             ('self.ui.show3DButton.connect("toggled(bool)"', 'self.ui.show3DButton.connect("toggle(bool)"'),
                             ("self.ui.progressBar.value = 0", "self.ui.progresBar.value = 0")])
    assertFinds(found, r"QPushButton .* has no .* 'txt'", r"QPushButton .* has no signal toggle\(bool\)",
                r"the .ui has no widget named 'progresBar'")


def test_parameter_node_members():
    found = findings(WIDGET=[("self._parameterNode.connectGui(self.ui)", "self._parameterNode.connectGUI(self.ui)"),
                             ("self._parameterNode.model = bundle.name", "self._parameterNode.modelName = bundle.name")])
    assertFinds(found, r"DSSMSegmentParameters \(a parameterNodeWrapper\) has no parameter or member 'connectGUI'",
                r"no parameter or member 'modelName' \(assigning it would only set a Python attribute\)")


def test_deprecated_function_fails():
    found = findings(MODULE=[("slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)",
                              "slicer.util.arrayFromSegment(segmentation, segmentId)")])
    assertFinds(found, r"slicer.util.arrayFromSegment is deprecated since Slicer 4.13.0")


@pytest.mark.parametrize("name", IDS)
def test_pytorch_extension_calls_exist(name):
    """Installing PyTorch goes through the PyTorch extension, which itself calls slicer.util: each function it
    calls must exist in this Slicer version (``_executePythonModule`` is deprecated since 5.11.0 but there)."""
    version = next(v for v in VERSIONS if v["name"] == name)
    util = version["python"]["slicer.util"]
    calls = version["python"]["PyTorchUtils"]["uses_slicer_util"]
    assert "pip_install" in calls and "_executePythonModule" in calls
    missing = [call for call in calls if call not in util["functions"] and call not in util["classes"]]
    assert not missing, f"PyTorchUtils calls slicer.util.{missing}, which Slicer {name} does not have"
