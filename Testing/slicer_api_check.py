"""Check the Slicer module's calls into Slicer against a snapshot of Slicer's API (``Data/slicer_api_snapshot.json``).

The snapshot is made by ``scripts/slicer_api_snapshot.py`` from Slicer's, CTK's and the PyTorch extension's
sources at pinned commits. This checker reads the module's Python files with :mod:`ast` and its ``.ui`` file
as XML, and follows every use of Slicer's API to the fact that defines it:

* ``slicer.util.*``, ``slicer.i18n``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``: the
  name must exist, and each call must fit the function's parameters (too many positional arguments, a
  missing one, or a keyword that the function does not take, also through ``**kwargs`` that it passes on);
* ``slicer.app`` (a ``qSlicerApplication``), ``slicer.modules.<name>`` and what they return, and the widgets of
  the ``.ui`` reached through ``self.ui.<name>``: properties, slots, ``Q_INVOKABLE`` methods, the PythonQt
  decorators' methods and signals (``obj.connect("signal(args)", ...)``) of the C++ class or its bases; plain
  Qt classes are looked up in PySide6 (Qt 6 here, Qt 5 in Slicer: their properties and signals used here are
  the same);
* ``SampleData`` and ``PyTorchUtils``: module functions, classes, methods, with their keyword arguments;
* the ``@parameterNodeWrapper`` class: each parameter's type must have a serializer in that Slicer version,
  its validators must exist and take those arguments, and the widget bound to it in the ``.ui`` (property
  ``SlicerParameterName``) must have a GUI connector for that type; attributes used on a parameter node are
  its parameters or the wrapper's own members;
* the ``.ui``: every widget and layout class, every property (dynamic ones, ``stdset="0"``, must be read by
  Slicer), enum values, custom widget headers and bases, and the signal/slot connections.

A use whose object is of unknown type (a local variable the checker cannot follow) is not checked; every use
rooted at ``slicer.util``, ``slicer.app``, ``slicer.modules``, ``SampleData`` or ``PyTorchUtils`` must
resolve. MRML and VTK classes (``slicer.vtkMRML...``) and ``slicer.mrmlScene`` are not checked here: they
run in ``test_slicer_logic.py`` on the real MRML library of the PyPI package ``slicer-core``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "Data" / "slicer_api_snapshot.json"
MODULE = ROOT / "DSSMSegment"
UI_FILE = MODULE / "Resources" / "UI" / "DSSMSegment.ui"
UI_PATH = UI_FILE.relative_to(ROOT).as_posix()
MODULE_NAME = "DSSMSegment"

# Members that PythonQt adds to every wrapped QObject.
PYTHONQT_QOBJECT = {"connect", "disconnect", "className", "help", "delete", "inherits"}
# PythonQt names for methods whose Qt name is a Python keyword.
PYTHONQT_ALIASES = {"exec_": "exec", "print_": "print"}
# Chains that must be followed to their end: an object of a class outside the snapshot is an error.
STRICT_CHAINS = ("slicer.app", "slicer.modules")
# Top-level imports that are this extension's or Slicer's own (not installed in the test environment).
OWN_OR_SLICER_ROOTS = {"slicer", "qt", "ctk", "vtk", "DSSMSegmentLib", "DSSMSegmentSlicerLib", "__future__"}


def loadSnapshot(path: Path = SNAPSHOT) -> dict:
    """The snapshot with every ``"same as <version>"`` replaced by that version's facts."""
    snapshot = json.loads(path.read_text(encoding="utf-8"))
    byName = {}
    for version in snapshot["versions"]:
        for section in ("python", "cpp"):
            for name, facts in list(version[section].items()):
                if isinstance(facts, str):
                    version[section][name] = byName[facts.removeprefix("same as ")][section][name]
        for section in ("parameterNodeWrapper", "modules", "slicer"):
            if isinstance(version[section], str):
                version[section] = byName[version[section].removeprefix("same as ")][section]
        byName[version["name"]] = version
    return snapshot


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Finding:
    """An API use that does not fit the snapshot."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Use:
    """An API use that fits: where it is, what it is, and the source line that defines it."""

    path: str
    line: int
    col: int  # where ``name`` starts on that line (-1: no single token to misspell)
    name: str  # the token as written (attribute, keyword, import name, .ui class or property)
    api: str  # e.g. "slicer.util.pip_install", "qMRMLNodeComboBox.nodeTypes"
    definedAt: str  # e.g. "Slicer Base/Python/slicer/util.py:4470"


@dataclass
class Report:
    findings: List[Finding] = field(default_factory=list)
    uses: List[Use] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Types the checker follows


@dataclass(frozen=True)
class T:
    """What an expression is. ``kind`` is one of: slicer (the package), qt (the module), pymodule, pyclass,
    pyinstance, pyfunc, cppclass, cpp (an instance), cppmethod, modules (``slicer.modules``), ui
    (``childWidgetVariables``), packclass, pack (a parameter node wrapper), packmember, own (an instance of a
    class of the module), ownclass, ownfunc, union."""

    kind: str
    name: str = ""
    detail: Tuple = ()


def _signature(sig: str) -> ast.arguments:
    return ast.parse(f"def f{sig}: pass").body[0].args


def normalizeSignal(signature: str) -> str:
    """``toggled( bool )`` / ``valueChanged(const QString &)`` -> Qt's normalized form."""
    name, _, rest = signature.partition("(")
    params = [p for p in rest.rstrip(")").split(",") if p.strip()]
    normalized = []
    for p in params:
        p = re.sub(r"\bconst\b|&", "", p)
        normalized.append(re.sub(r"\s*\*", "*", " ".join(p.split())))
    return f"{name.strip()}({','.join(normalized)})"


class Qt:
    """Plain Qt classes, through PySide6.

    The facts of every class of QtCore, QtGui and QtWidgets are read once, when this module is imported (a
    fifth of a second): a class's ``staticMetaObject`` can become unusable later in the same process, after
    other tests have created and deleted widgets of that class (PySide6 shares the wrapper by address)."""

    _table: Dict[str, dict] = {}

    @classmethod
    def info(cls, name: str) -> Optional[dict]:
        if not cls._table:
            cls._table = cls._loadAll()
        return cls._table.get(name)

    @staticmethod
    def _loadAll() -> Dict[str, dict]:
        from PySide6 import QtCore, QtGui, QtWidgets
        from PySide6.QtCore import QMetaMethod

        table = {}
        for module in (QtGui, QtCore, QtWidgets):  # a name in more than one: QtWidgets's wins
            for name in dir(module):
                qclass = getattr(module, name)
                if not isinstance(qclass, type):
                    continue
                meta = getattr(qclass, "staticMetaObject", None)
                properties, signals, slots = set(), set(), set()
                if meta is not None:
                    for i in range(meta.propertyCount()):
                        properties.add(str(meta.property(i).name()))
                    for i in range(meta.methodCount()):
                        method = meta.method(i)
                        signature = bytes(method.methodSignature()).decode()
                        if method.methodType() == QMetaMethod.MethodType.Signal:
                            signals.add(signature)
                        elif method.methodType() == QMetaMethod.MethodType.Slot:
                            slots.add(signature)
                table[name] = {"class": qclass, "members": set(dir(qclass)), "properties": properties,
                               "signals": signals, "slots": slots, "module": qclass.__module__}
        return table


Qt.info("QObject")  # read them now (see the class's docstring)


# ---------------------------------------------------------------------------------------------------------


class Api:
    """One Slicer version's facts, with look-ups."""

    def __init__(self, version: dict) -> None:
        self.version = version
        self.name = version["name"]
        self.python = version["python"]
        self.cpp = version["cpp"]
        self.pnw = version["parameterNodeWrapper"]
        self.modules = {name.lower(): (name, kind, line) for name, (kind, line) in version["modules"].items()}
        self.slicer = version["slicer"]

    def where(self, source: str, path: str, line: int) -> str:
        return f"{source} {path}:{line}"

    # --- Python ------------------------------------------------------------------------------------------
    def pyModule(self, name: str) -> Optional[dict]:
        return self.python.get(name)

    def pyClass(self, module: str, name: str) -> Optional[dict]:
        facts = self.python.get(module)
        return facts["classes"].get(name) if facts else None

    def pyClassByName(self, name: str) -> Optional[Tuple[str, dict]]:
        for module, facts in self.python.items():
            if name in facts["classes"]:
                return module, facts["classes"][name]
        return None

    def pyClassMember(self, module: str, className: str, attr: str) -> Tuple[Optional[Tuple[str, str, dict]], bool]:
        """((module, class, facts) of ``attr`` in the class or its bases, complete): ``complete`` is False when a
        base is not in the snapshot (the attribute may come from there)."""
        todo = [(module, className)]
        complete = True
        while todo:
            mod, cls = todo.pop(0)
            facts = self.pyClass(mod, cls)
            if facts is None:
                complete = False
                continue
            for section in ("methods", "attributes", "class_attributes"):
                if attr in facts.get(section, {}):
                    return (mod, cls, {**facts[section][attr], "section": section}), True
            for base in facts["bases"]:
                baseName = base.split(".")[-1]
                found = self.pyClassByName(baseName)
                if found:
                    todo.append((found[0], baseName))
                elif base.startswith("qt.") or base == "unittest.TestCase":
                    if _externalHas(base, attr):
                        return (mod, base, {"section": "external"}), True
                else:
                    complete = False
        return None, complete

    # --- C++ ---------------------------------------------------------------------------------------------
    def cppChain(self, name: str) -> Tuple[List[str], List[str], bool]:
        """(snapshot classes, Qt classes, complete) of ``name`` and its bases."""
        chain, qt, complete = [], [], True
        todo = [name]
        while todo:
            current = todo.pop(0)
            if current in chain or current in qt:
                continue
            if current in self.cpp:
                chain.append(current)
                todo.extend(self.cpp[current].get("bases", []))
            elif Qt.info(current) is not None:
                qt.append(current)
            else:
                complete = False
        return chain, qt, complete

    def cppKnown(self, name: str) -> bool:
        return name in self.cpp or Qt.info(name) is not None

    def cppMember(self, className: str, attr: str) -> Tuple[Optional[Tuple[str, str, object]], bool]:
        """((kind, class, facts), complete): kind is property, method, signal (a signal object) or qt."""
        chain, qtClasses, complete = self.cppChain(className)
        for cls in chain:
            facts = self.cpp[cls]
            if attr in facts.get("properties", {}):
                return ("property", cls, facts["properties"][attr]), True
            if attr in facts.get("methods", {}):
                return ("method", cls, facts["methods"][attr]), True
            for signal, line in facts.get("signals", {}).items():
                if signal.split("(")[0] == attr:
                    return ("signal", cls, line), True
        for cls in qtClasses:
            info = Qt.info(cls)
            if (attr in info["properties"] or attr in info["members"] or hasattr(info["class"], attr)
                    or PYTHONQT_ALIASES.get(attr) in info["members"]):
                return ("qt", cls, None), True
        if attr in PYTHONQT_QOBJECT and (qtClasses or chain):
            return ("qt", "QObject", None), True
        return None, complete

    def cppCppOnly(self, className: str, attr: str) -> Optional[str]:
        chain, _, _ = self.cppChain(className)
        for cls in chain:
            if attr in self.cpp[cls].get("cpp_only", []):
                return cls
        return None

    def cppSignal(self, className: str, signature: str) -> Tuple[Optional[Tuple[str, int]], bool]:
        wanted = normalizeSignal(signature)
        chain, qtClasses, complete = self.cppChain(className)
        for cls in chain:
            for signal, line in self.cpp[cls].get("signals", {}).items():
                if normalizeSignal(signal) == wanted:
                    return (cls, line), True
        for cls in qtClasses:
            if wanted in Qt.info(cls)["signals"]:
                return (cls, 0), True
        return None, complete

    def cppSlot(self, className: str, signature: str) -> Tuple[Optional[Tuple[str, int]], bool]:
        name = signature.split("(")[0]
        nargs = len([p for p in signature.split("(", 1)[1].rstrip(")").split(",") if p.strip()])
        chain, qtClasses, complete = self.cppChain(className)
        for cls in chain:
            for kind, minimum, maximum, _, line, *_ in self.cpp[cls].get("methods", {}).get(name, []):
                if kind in ("slot", "invokable") and minimum <= nargs <= maximum:
                    return (cls, line), True
        for cls in qtClasses:
            if normalizeSignal(signature) in Qt.info(cls)["slots"]:
                return (cls, 0), True
        return None, complete

    def cppWhere(self, cls: str, line: int, facts: Optional[dict] = None) -> str:
        if cls in self.cpp:
            return self.where(self.cpp[cls]["source"], (facts or {}).get("file", self.cpp[cls]["file"]), line)
        return f"Qt {cls} (PySide6 {Qt.info(cls)['module']})" if Qt.info(cls) else cls

    def moduleWhere(self, name: str) -> str:
        """Where a core module is defined: its Python file, its module class's header, or its CLI XML."""
        _, kind, line = self.modules[name.lower()]
        path = {"scripted": f"Modules/Scripted/{name}/{name}.py", "loadable": f"Modules/Loadable/{name}/qSlicer{name}Module.h",
                "cli": f"Modules/CLI/{name}/{name}.xml"}[kind]
        return self.where("Slicer", path, line)

    def isMrmlNode(self, name: str) -> bool:
        chain, _, _ = self.cppChain(name)
        return "vtkMRMLNode" in chain


def _externalHas(base: str, attr: str) -> bool:
    if base.startswith("qt."):
        info = Qt.info(base[3:])
        return bool(info) and (attr in info["members"] or attr in info["properties"])
    module, _, name = base.rpartition(".")
    return hasattr(getattr(importlib.import_module(module), name), attr)


# ---------------------------------------------------------------------------------------------------------
# The .ui file


@dataclass
class UiWidget:
    name: str
    cls: str
    line: int
    properties: Dict[str, Tuple[str, bool, ET.Element]]  # name -> (text, dynamic (stdset="0"), element)


def readUi(text: str) -> Tuple[ET.Element, Dict[str, UiWidget], str]:
    """(root, objectName -> widget, top-level class). Line numbers come from the text (ElementTree has none)."""
    root = ET.fromstring(text)
    lines = text.splitlines()
    widgets = {}
    for element in root.iter():
        if element.tag not in ("widget", "layout"):
            continue
        name = element.get("name")
        line = next((i for i, l in enumerate(lines, 1) if f'name="{name}"' in l and f'<{element.tag} ' in l), 0)
        properties = {}
        for prop in element.findall("property"):
            value = next(iter(prop), None)
            text_ = "" if value is None else (value.text or "")
            properties[prop.get("name")] = (text_, prop.get("stdset") == "0", prop)
        widgets[name] = UiWidget(name, element.get("class"), line, properties)
    top = root.find("widget").get("class")
    return root, widgets, top


# ---------------------------------------------------------------------------------------------------------
# The module's own code


@dataclass
class OwnClass:
    name: str
    path: str
    node: ast.ClassDef
    bases: List[str]
    methods: Dict[str, ast.FunctionDef]
    attributes: Dict[str, List[Tuple[str, ast.AST]]]  # name -> ("annotation" | "value", node) of self.<name>
    isPack: bool
    isEnum: bool


def ownDefinitions(files: Dict[str, ast.Module]) -> Tuple[Dict[str, OwnClass], Dict[str, ast.FunctionDef]]:
    classes, functions = {}, {}
    for path, tree in files.items():
        for item in tree.body:
            if isinstance(item, ast.ClassDef):
                methods = {m.name: m for m in item.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
                attributes: Dict[str, List[Tuple[str, ast.AST]]] = {}
                for m in item.body:
                    if isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
                        attributes.setdefault(m.target.id, []).append(("annotation", m.annotation))
                for method in methods.values():
                    for node in ast.walk(method):
                        if isinstance(node, ast.AnnAssign) and _isSelfAttribute(node.target):
                            attributes.setdefault(node.target.attr, []).insert(0, ("annotation", node.annotation))
                        elif isinstance(node, ast.Assign):
                            for target in node.targets:
                                if _isSelfAttribute(target):
                                    attributes.setdefault(target.attr, []).append(("value", node.value))
                decorators = {ast.unparse(d) for d in item.decorator_list}
                bases = [ast.unparse(b) for b in item.bases]
                classes[item.name] = OwnClass(item.name, path, item, bases, methods, attributes,
                                              "parameterNodeWrapper" in decorators,
                                              any(b in ("enum.Enum", "Enum") for b in bases))
            elif isinstance(item, ast.FunctionDef):
                functions[item.name] = item
    return classes, functions


@functools.lru_cache(maxsize=64)
def _parse(text: str, path: str) -> ast.Module:
    return ast.parse(text, path)  # the checker never changes a tree, so trees are shared


@functools.lru_cache(maxsize=16)
def _ownDefinitions(files: Tuple[Tuple[str, str], ...]):
    return ownDefinitions({path: _parse(text, path) for path, text in files})


def _chainRoot(node: ast.AST) -> Optional[str]:
    """``slicer.app.commandOptions().testingEnabled`` -> "slicer.app"."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "slicer":
                return f"slicer.{node.attr}"
            node = node.value
        else:
            return None


def _isSelfAttribute(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def _optionalInner(annotation: ast.AST) -> ast.AST:
    """``Optional[X]`` / ``"X"`` -> X."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return annotation
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Optional", "typing.Optional"):
        return annotation.slice
    return annotation


class Checker:
    """Checks the module's files against one version's :class:`Api`."""

    def __init__(self, api: Api, files: Dict[str, str], uiText: str) -> None:
        self.api = api
        self.sources = files
        self.trees = {path: _parse(text, path) for path, text in files.items()}
        self.classes, self.functions = _ownDefinitions(tuple(sorted(files.items())))
        self.uiText = uiText
        self.uiRoot, self.uiWidgets, self.uiTop = readUi(uiText)
        self.report = Report()
        self._path = ""
        self._seen: set = set()
        self._resolving: set = set()

    # --- reporting -----------------------------------------------------------------------------------
    def error(self, node, message: str) -> None:
        line = node if isinstance(node, int) else getattr(node, "lineno", 0)
        key = (self._path, line, message)
        if key not in self._seen:
            self._seen.add(key)
            self.report.findings.append(Finding(self._path, line, f"[Slicer {self.api.name}] {message}"))

    def use(self, node, name: str, api: str, definedAt: str, col: Optional[int] = None) -> None:
        """Record a use that fits. ``col`` is where ``name`` starts on the node's line (an attribute's is
        found from the node); -1 when no single token there names the API."""
        if isinstance(node, ast.Attribute):
            line, col = node.end_lineno, node.end_col_offset - len(node.attr)
        elif isinstance(node, tuple):
            line, col = node
        else:
            line = node if isinstance(node, int) else node.lineno
        self.report.uses.append(Use(self._path, line, -1 if col is None else col, name, api, definedAt))

    # --- entry points --------------------------------------------------------------------------------
    def run(self, only: Optional[str] = None) -> Report:
        """Check every file, or ``only`` that one (a Python file or :data:`UI_PATH`)."""
        for path, tree in self.trees.items():
            if only in (None, path):
                self._path = path
                self.checkModule(tree)
        if only in (None, UI_PATH):
            self._path = UI_PATH
            self.checkUi()
        for cls in self.classes.values():
            if cls.isPack and only in (None, cls.path):
                self._path = cls.path
                self.checkPack(cls)
        return self.report

    def checkModule(self, tree: ast.Module) -> None:
        env = self.moduleEnv(tree, record=False)  # the imports are recorded when the walk reaches them
        self.walkBody(tree.body, dict(env), env, None)

    # --- environments --------------------------------------------------------------------------------
    def moduleEnv(self, tree: ast.Module, record: bool) -> Dict[str, T]:
        env: Dict[str, T] = {}
        for item in tree.body:
            if isinstance(item, (ast.Import, ast.ImportFrom)):
                env.update(self.importTypes(item, record))
            elif isinstance(item, ast.ClassDef):
                env[item.name] = T("ownclass", item.name)
            elif isinstance(item, ast.FunctionDef):
                env[item.name] = T("ownfunc", item.name)
        return env

    def importTypes(self, node, record: bool) -> Dict[str, T]:
        types: Dict[str, T] = {}
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "slicer":
                    types[alias.asname or name] = T("slicer")
                elif name == "qt":
                    types[alias.asname or name] = T("qt")
                elif self.api.pyModule(name) is not None:
                    types[alias.asname or name] = T("pymodule", name)
                    if record:
                        self.use(self._position(node, name), name, name,
                                 self.api.where(self.api.python[name]["source"], self.api.python[name]["file"], 1))
                elif record:
                    self.checkImportable(node, name)
            return types
        if record and node.level == 0:
            self.checkImportable(node, node.module)
        module = ("." * node.level) + (node.module or "")
        for alias in node.names:
            local = alias.asname or alias.name
            t = self.importedName(node, module, alias.name, record)
            if t is not None:
                types[local] = t
        return types

    def checkImportable(self, node, module: str) -> None:
        """A module that is neither Slicer's (in the snapshot), nor this extension's, nor installed here."""
        root = module.split(".")[0]
        slicerModules = {name for name, _, _ in self.api.modules.values()}
        if root in OWN_OR_SLICER_ROOTS or root in self.api.python or root in slicerModules:
            return
        if importlib.util.find_spec(root) is None:
            self.error(node, f"import {module}: not a Slicer module in the snapshot, not this extension's, and not "
                             "installed")

    def _position(self, node: ast.AST, name: str) -> Tuple[int, int]:
        """(line, column) of the imported name ``name`` in the import statement ``node``."""
        lines = self.sources[self._path].splitlines()
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            start = node.col_offset if line == node.lineno else 0
            if line == node.lineno:
                start = lines[line - 1].index("import", start) + len("import")
            match = pattern.search(lines[line - 1], start)
            if match:
                return line, match.start()
        return node.lineno, -1

    def importedName(self, node, module: str, name: str, record: bool) -> Optional[T]:
        """The type of ``from module import name``; an error when a Slicer module lacks the name."""
        if module.startswith(".") or module.startswith("DSSMSegmentSlicerLib"):
            if name in self.classes:
                return T("ownclass", name)
            if name in self.functions:
                return T("ownfunc", name)
            return None
        if module == "slicer":
            if name.startswith("vtkMRML") or name.startswith("qMRML") or name.startswith("qSlicer"):
                if record:
                    if name not in self.api.cpp:
                        self.error(self._position(node, name)[0], f"'from slicer import {name}': no class {name} in the snapshot "
                                         "(misspelled, or add it to SLICER_CPP_CLASSES and regenerate)")
                    else:
                        facts = self.api.cpp[name]
                        self.use(self._position(node, name), name, f"slicer.{name}",
                                 self.api.where(facts["source"], facts["file"], facts["line"]))
                return T("cppclass", name)
            return None
        full = f"{module}.{name}"
        if module == "slicer.parameterNodeWrapper":
            facts = self.pnwExport(name)
            if facts is None:
                if record:
                    self.error(self._position(node, name)[0], f"slicer.parameterNodeWrapper has no '{name}'")
                return None
            if record:
                self.use(self._position(node, name), name, full, self.api.where("Slicer", facts["file"], facts["line"]))
            return T("pnw", name)
        facts = self.api.pyModule(module)
        if facts is None:
            if module.startswith("slicer.") and record:
                self.error(node, f"no module {module} in the snapshot")
            return None
        t = self.moduleMember(module, name)
        if t is None:
            if record:
                self.error(self._position(node, name)[0], f"{module} has no '{name}'")
            return None
        if record:
            self.use(self._position(node, name), name, full, self.definedAt(t))
            self.checkDeprecated(self._position(node, name)[0], t)
        return t

    def checkDeprecated(self, node, t: T) -> None:
        if t.kind == "pyfunc" and t.detail[1] is None:
            deprecated = self.api.python[t.detail[0]]["functions"][t.detail[2]].get("deprecated")
            if deprecated:
                self.error(node, f"{t.name} is deprecated since Slicer {deprecated}")

    def pnwExport(self, name: str) -> Optional[dict]:
        return self.api.pnw["exports"].get(name)

    def moduleMember(self, module: str, name: str) -> Optional[T]:
        facts = self.api.pyModule(module)
        if name in facts["functions"]:
            return T("pyfunc", f"{module}.{name}", (module, None, name, "function"))
        if name in facts["classes"]:
            return T("pyclass", f"{module}.{name}", (module, name))
        if name in facts["names"]:
            return T("pyname", f"{module}.{name}", (module, name))
        return None

    def definedAt(self, t: T) -> str:
        module = t.detail[0]
        facts = self.api.python[module]
        if t.kind == "pyfunc":
            _, cls, name, _ = t.detail
            line = (facts["functions"][name] if cls is None else self._pyMethodFacts(module, cls, name))["line"]
        elif t.kind == "pyclass":
            line = facts["classes"][t.detail[1]]["line"]
        else:
            line = facts["names"][t.detail[1]]["line"]
        return self.api.where(facts["source"], facts["file"], line)

    def _pyMethodFacts(self, module: str, cls: str, name: str) -> dict:
        found, _ = self.api.pyClassMember(module, cls, name)
        return found[2]

    # --- statements ----------------------------------------------------------------------------------
    def walkBody(self, body: Sequence[ast.stmt], env: Dict[str, T], moduleEnv: Dict[str, T],
                 ownClass: Optional[OwnClass]) -> None:
        for statement in body:
            self.walkStatement(statement, env, moduleEnv, ownClass)

    def walkStatement(self, statement: ast.stmt, env: Dict[str, T], moduleEnv: Dict[str, T],
                      ownClass: Optional[OwnClass]) -> None:
        if isinstance(statement, ast.ClassDef):
            for expression in statement.bases + statement.decorator_list:
                self.check(expression, env, ownClass)
            self.walkBody(statement.body, dict(moduleEnv), moduleEnv, self.classes.get(statement.name))
            return
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for expression in statement.decorator_list:
                self.check(expression, env, ownClass)
            local = dict(moduleEnv)
            arguments = statement.args.posonlyargs + statement.args.args + statement.args.kwonlyargs
            for index, argument in enumerate(arguments):
                if index == 0 and ownClass is not None and argument.arg == "self":
                    local["self"] = T("own", ownClass.name)
                elif argument.annotation is not None:
                    t = self.annotationType(argument.annotation)
                    if t is not None:
                        local[argument.arg] = t
            for default in statement.args.defaults + [d for d in statement.args.kw_defaults if d is not None]:
                self.check(default, env, ownClass)
            self.walkBody(statement.body, local, moduleEnv, ownClass)
            return
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            env.update(self.importTypes(statement, record=True))
            return
        # expressions of this statement (not of nested blocks)
        blocks = {"body", "orelse", "finalbody", "handlers"}
        for name, value in ast.iter_fields(statement):
            if name in blocks:
                continue
            for node in (value if isinstance(value, list) else [value]):
                if isinstance(node, ast.AST):
                    self.check(node, env, ownClass)
        if isinstance(statement, ast.Assign):
            t = self.typeOf(statement.value, env, record=False)
            for target in statement.targets:
                self.bind(target, statement.value, t, env)
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            t = self.annotationType(statement.annotation) or (
                self.typeOf(statement.value, env, record=False) if statement.value else None)
            if t is not None:
                env[statement.target.id] = t
        elif isinstance(statement, ast.For) and isinstance(statement.target, ast.Name):
            if isinstance(statement.iter, (ast.Tuple, ast.List)):
                members = [self.typeOf(e, env, record=False) for e in statement.iter.elts]
                if members and all(m is not None for m in members):
                    env[statement.target.id] = T("union", "", tuple(members))
        for name in ("body", "orelse", "finalbody"):
            block = getattr(statement, name, None)
            if isinstance(block, list):
                self.walkBody(block, env, moduleEnv, ownClass)
        for handler in getattr(statement, "handlers", []):
            self.walkBody(handler.body, env, moduleEnv, ownClass)

    def bind(self, target: ast.AST, value: ast.AST, t: Optional[T], env: Dict[str, T]) -> None:
        if isinstance(target, ast.Name):
            if t is None:
                env.pop(target.id, None)
            else:
                env[target.id] = t
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [None] * len(target.elts)
            for element, v in zip(target.elts, values):
                self.bind(element, v, self.typeOf(v, env, record=False) if v is not None else None, env)

    def annotationType(self, annotation: ast.AST) -> Optional[T]:
        inner = _optionalInner(annotation)
        name = ast.unparse(inner)
        own = self.classes.get(name)
        if own is not None:
            return T("pack", name) if own.isPack else T("own", name)
        return None

    # --- expressions ---------------------------------------------------------------------------------
    def check(self, node: ast.AST, env: Dict[str, T], ownClass: Optional[OwnClass]) -> None:
        """Evaluate every attribute and call in ``node`` (each once), reporting what does not fit."""
        done: set = set()

        def visit(n: ast.AST) -> None:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                return
            if isinstance(n, ast.Lambda):  # its parameters hide outer names
                names = {a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs}
                self.check(n.body, {k: v for k, v in env.items() if k not in names}, ownClass)
                return
            if isinstance(n, (ast.Attribute, ast.Call)) and id(n) not in done:
                self.typeOf(n, env, record=True, done=done)
            for child in ast.iter_child_nodes(n):
                visit(child)

        visit(node)

    def typeOf(self, node: ast.AST, env: Dict[str, T], record: bool, done: Optional[set] = None) -> Optional[T]:
        if done is not None:
            done.add(id(node))
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.typeOf(node.value, env, record, done)
            return self.attribute(node, base, record, store=isinstance(node.ctx, ast.Store))
        if isinstance(node, ast.Call):
            func = self.typeOf(node.func, env, record, done)  # the arguments are visited by check()
            return self.call(node, func, env, record)
        return None

    # --- attributes ----------------------------------------------------------------------------------
    def attribute(self, node: ast.Attribute, base: Optional[T], record: bool, store: bool = False) -> Optional[T]:
        attr = node.attr
        if base is None:
            root = _chainRoot(node.value)
            if record and root in STRICT_CHAINS:
                self.error(node, f"cannot follow {ast.unparse(node)}: the object before '.{attr}' is of a class "
                                 "that is not in the snapshot")
            return None
        kind = base.kind
        if kind == "union":
            results = [self.attribute(node, member, record, store) for member in base.detail]
            return results[0] if results and all(r == results[0] for r in results) else None
        if kind == "slicer":
            return self.slicerAttribute(node, record)
        if kind == "qt":
            info = Qt.info(attr)
            if info is None:
                if record and not attr[:1].islower():
                    self.error(node, f"qt.{attr}: no such Qt class")
                return None
            return T("cppclass", attr)
        if kind == "pymodule":
            t = self.moduleMember(base.name, attr)
            if t is None:
                if record:
                    self.error(node, f"{base.name} has no '{attr}'")
                return None
            if record:
                self.use(node, attr, t.name, self.definedAt(t))
                self.checkDeprecated(node, t)
            return t
        if kind in ("pyclass", "pyinstance"):
            module, cls = base.detail
            found, complete = self.api.pyClassMember(module, cls, attr)
            if found is None:
                if record and complete:
                    self.error(node, f"{module}.{cls} has no '{attr}'"
                               + (" (assigning it sets an attribute that Slicer never reads)" if store else ""))
                return None
            foundModule, foundClass, facts = found
            if facts["section"] == "external":
                return None
            if record:
                source = self.api.python[foundModule]
                self.use(node, attr, f"{foundModule}.{foundClass}.{attr}",
                         self.api.where(source["source"], source["file"], facts["line"]))
            if facts["section"] == "methods" and not facts.get("property"):
                how = "static" if facts.get("static") else "bound" if kind == "pyinstance" else "unbound"
                return T("pyfunc", f"{foundModule}.{foundClass}.{attr}", (foundModule, foundClass, attr, how))
            if facts["section"] == "attributes":
                parent = self.api.slicer["scripted_parent"].get(foundClass)
                if attr == "parent" and parent is not None:
                    return T("cpp", parent["class"])
                if facts.get("type") and self.api.cppKnown(facts["type"]):
                    return T("cpp", facts["type"])
            return None
        if kind in ("cpp", "cppclass"):
            return self.cppAttribute(node, base, record, store)
        if kind == "modules":
            module = self.api.modules.get(attr)
            if module is None:
                if record:
                    self.error(node, f"slicer.modules.{attr}: no module of that name in Slicer "
                                     f"(module names are lower case: {sorted(self.api.modules)[:3]}...)")
                return None
            name, moduleKind, line = module
            if record:
                self.use(node, attr, f"slicer.modules.{attr}", self.api.moduleWhere(name))
            cppClass = {"scripted": "qSlicerScriptedLoadableModule", "loadable": "qSlicerLoadableModule",
                        "cli": "qSlicerCLIModule"}[moduleKind]
            return T("cpp", cppClass, (name, moduleKind))
        if kind == "ui":
            widget = self.uiWidgets.get(attr)
            if widget is None:
                if record:
                    self.error(node, f"the .ui has no widget named '{attr}'")
                return None
            if record:
                self.use(node, attr, f"ui.{attr}", f"DSSMSegment.ui:{widget.line} ({widget.cls})")
            return T("cpp", widget.cls)
        if kind == "pack":
            return self.packAttribute(node, base, record, store)
        if kind == "own":
            return self.ownAttribute(node, base, record, store)
        return None  # a Python name of Slicer, a parameterNodeWrapper export, an own function: not followed

    def slicerAttribute(self, node: ast.Attribute, record: bool) -> Optional[T]:
        attr = node.attr
        facts = self.api.slicer
        if attr in ("app", "modules", "mrmlScene", "moduleNames"):
            where = facts["attributes"].get(attr)
            if where is None:
                if record:
                    self.error(node, f"slicer.{attr} is not set by this Slicer version")
                return None
            if record and attr != "mrmlScene":
                self.use(node, attr, f"slicer.{attr}", self.api.where("Slicer", where["file"], where["line"]))
            return {"app": T("cpp", "qSlicerApplication"), "modules": T("modules")}.get(attr)
        if attr in facts["submodules"]:
            module = f"slicer.{attr}"
            if self.api.pyModule(module) is not None:
                return T("pymodule", module)
            return None
        if re.match(r"(vtk|q)[A-Z]", attr):  # MRML/VTK and Qt classes of Slicer: tested on slicer-core
            return T("cppclass", attr) if attr in self.api.cpp else None
        if record:
            self.error(node, f"slicer.{attr}: the slicer package has no such attribute or submodule")
        return None

    def cppAttribute(self, node: ast.Attribute, base: T, record: bool, store: bool) -> Optional[T]:
        attr, cls = node.attr, base.name
        found, complete = self.api.cppMember(cls, attr)
        if found is None:
            if record and complete:
                cppOnly = self.api.cppCppOnly(cls, attr)
                if cppOnly:
                    self.error(node, f"{cppOnly}.{attr} is a C++ method that is not a slot, Q_INVOKABLE or "
                                     "property, so Python cannot call it")
                else:
                    self.error(node, f"{cls} (and its bases) has no property, slot, signal or method '{attr}'")
            return None
        what, owner, facts = found
        if record:
            if what == "method":
                overload = facts[0]
                extra = overload[5] if len(overload) > 5 else None
                where = self.api.cppWhere(owner, overload[4], {"file": extra} if extra else None)
            elif what in ("property", "signal"):
                where = self.api.cppWhere(owner, facts)
            else:
                where = self.api.cppWhere(owner, 0)
            self.use(node, attr, f"{owner}.{attr}", where)
        if what == "method":
            # detail: the object's class, the class that declares the method, its overloads, and for a module
            # object (slicer.modules.<name>) the module's name and kind
            return T("cppmethod", attr, (cls, owner, tuple(tuple(o) for o in facts)) + tuple(base.detail[:2]))
        if what == "qt" and attr == "connect":
            return T("connect", cls)
        if what == "qt":
            return T("qtmember", f"{owner}.{attr}", (owner, attr))
        return None  # a property's value or a signal object: not followed

    def packAttribute(self, node: ast.Attribute, base: T, record: bool, store: bool) -> Optional[T]:
        attr = node.attr
        cls = self.classes[base.name]
        if attr in cls.attributes:
            annotation = cls.attributes[attr][0][1]
            if record:
                self.use(node, attr, f"{base.name}.{attr}", f"parameter of {base.name}")
            return self.parameterType(annotation)
        member = self.api.pnw["wrapper"]["members"].get(attr)
        if member is None or attr.startswith("_"):
            if record:
                self.error(node, f"{base.name} (a parameterNodeWrapper) has no parameter or member '{attr}'"
                           + (" (assigning it would only set a Python attribute)" if store else ""))
            return None
        if record:
            self.use(node, attr, f"parameterNodeWrapper.{attr}",
                     self.api.where("Slicer", self.api.pnw["wrapper"]["file"], member["line"]))
        if "sig" in member:
            return T("packmember", attr, (member["sig"], self.api.where("Slicer", self.api.pnw["wrapper"]["file"],
                                                                        member["line"])))
        return None

    def parameterType(self, annotation: ast.AST) -> Optional[T]:
        """A parameter's value type: a node (cpp) or own class, when the checker can follow it."""
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
            annotation = annotation.slice.elts[0]
        name = ast.unparse(annotation)
        if name in self.api.cpp:
            return T("cpp", name)
        return None

    def ownAttribute(self, node: ast.Attribute, base: T, record: bool, store: bool) -> Optional[T]:
        attr = node.attr
        cls = self.classes.get(base.name)
        if cls is None:
            return None
        if attr in cls.methods:
            method = cls.methods[attr]
            if method.returns is not None:
                return T("ownfunc", f"{cls.name}.{attr}", (cls.name, attr))
            return None
        if attr in cls.attributes:
            return self.ownAttributeType(cls, attr)
        # inherited: from Slicer's Python classes, Qt or unittest
        slicerBases = 0
        complete = True
        for base_ in cls.bases:
            baseName = base_.split(".")[-1]
            found = self.api.pyClassByName(baseName)
            if found is not None:
                slicerBases += 1
                member, complete_ = self.api.pyClassMember(found[0], baseName, attr)
                complete = complete and complete_
                if member is not None:
                    return self.attribute(node, T("pyinstance", "", (found[0], baseName)), record, store)
            elif base_.startswith("qt.") or base_ == "unittest.TestCase":
                slicerBases += 1
                if _externalHas(base_, attr):
                    return None
            elif base_ in self.classes:
                found = self.ownAttribute(node, T("own", base_), record, store)
                if found is not None:
                    return found
                complete = False
            else:
                complete = False
        if record and slicerBases and complete and not store:
            self.error(node, f"{cls.name} and its bases ({', '.join(cls.bases)}) have no '{attr}'")
        return None

    def ownAttributeType(self, cls: OwnClass, attr: str) -> Optional[T]:
        key = (cls.name, attr)
        if key in self._resolving:
            return None
        self._resolving.add(key)
        try:
            return self._ownAttributeType(cls, attr)
        finally:
            self._resolving.discard(key)

    def _ownAttributeType(self, cls: OwnClass, attr: str) -> Optional[T]:
        for how, value in cls.attributes[attr]:
            t = self.annotationType(value) if how == "annotation" else None
            if t is None and how == "value" and isinstance(value, (ast.Call, ast.Attribute)):
                env = self.moduleEnv(self.trees[cls.path], record=False)
                env["self"] = T("own", cls.name)
                t = self.typeOf(value, env, record=False)
            if t is not None:
                return t
        return None

    # --- calls ---------------------------------------------------------------------------------------
    def call(self, node: ast.Call, func: Optional[T], env: Dict[str, T], record: bool) -> Optional[T]:
        if func is None:
            return None
        kind = func.kind
        if kind == "pyfunc":
            module, cls, name, how = func.detail
            facts = self.api.python[module]["functions"][name] if cls is None else self._pyMethodFacts(module, cls, name)
            if record:
                facts = {**facts, "where": self.definedAt(func)}
                self.bindArguments(node, facts, func.name, dropSelf=(how == "unbound"))
                self.checkModuleNameArgument(node, func.name)
            return self.pyReturn(func.name, node, env)
        if kind == "pyclass":
            module, cls = func.detail
            found, complete = self.api.pyClassMember(module, cls, "__init__")
            if record and found is not None and found[2].get("sig"):
                source = self.api.python[found[0]]
                where = self.api.where(source["source"], source["file"], found[2]["line"])
                self.bindArguments(node, {**found[2], "where": where}, f"{module}.{cls}()", dropSelf=False)
            return T("pyinstance", func.name, (module, cls))
        if kind == "cppmethod":
            cls, owner, overloads = func.detail[:3]
            if record:
                self.checkCppCall(node, func.name, owner, overloads)
            return self.cppReturn(func, overloads)
        if kind == "cppclass":
            return T("cpp", func.name)
        if kind == "connect":
            if record:
                self.checkConnect(node, func.name)
            return None
        if kind == "ownclass":
            own = self.classes.get(func.name)
            if own is not None and own.isPack:
                return T("pack", func.name)
            return T("own", func.name)
        if kind == "ownfunc":
            function = self.functions.get(func.name) if not func.detail else \
                self.classes[func.detail[0]].methods.get(func.detail[1])
            if function is not None and function.returns is not None:
                return self.annotationType(function.returns)
            return None
        if kind == "pnw":
            facts = self.pnwExport(func.name)
            if record and facts and facts.get("kind") == "class" and "init" in facts:
                where = self.api.where("Slicer", facts["file"], facts["line"])
                self.bindArguments(node, {"sig": facts["init"], "where": where}, func.name, dropSelf=False)
            return None
        if kind == "packmember":
            if record:
                self.bindArguments(node, {"sig": func.detail[0], "where": func.detail[1]},
                                   f"parameterNodeWrapper.{func.name}", dropSelf=False)
            return None
        return None

    def checkConnect(self, node: ast.Call, cls: str) -> None:
        """``obj.connect("signal(args)", slot)``: PythonQt connects by the signal's signature."""
        if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            return
        signal = node.args[0].value
        found, complete = self.api.cppSignal(cls, signal)
        if found is None:
            if complete:
                self.error(node, f"{cls} (and its bases) has no signal {normalizeSignal(signal)}")
            return
        owner, line = found
        self.use(node.args[0], signal.split("(")[0], f"{owner}::{normalizeSignal(signal)}",
                 self.api.cppWhere(owner, line), col=node.args[0].col_offset + 1)

    def pyReturn(self, name: str, node: ast.Call, env: Dict[str, T]) -> Optional[T]:
        """What a Slicer Python function returns, where the module's code uses the result."""
        if name == "slicer.util.childWidgetVariables":
            return T("ui")
        if name == "slicer.util.loadUI":
            return T("cpp", self.uiTop)
        return None

    def cppReturn(self, func: T, overloads) -> Optional[T]:
        """A C++ method's return type (PythonQt wraps the returned object as its class)."""
        returns = overloads[0][3].rstrip("*").strip()
        moduleInfo = func.detail[3:] if len(func.detail) > 3 else ()
        if func.name == "widgetRepresentation" and moduleInfo and moduleInfo[1] == "scripted":
            # PythonQt returns the object as its real class: a scripted module's widget
            return T("cpp", "qSlicerScriptedLoadableModuleWidget", moduleInfo)
        if func.name == "self" and moduleInfo:
            moduleName = moduleInfo[0]
            if self.api.pyClass(moduleName, f"{moduleName}Widget") is not None:
                return T("pyinstance", f"{moduleName}.{moduleName}Widget", (moduleName, f"{moduleName}Widget"))
            return None
        if self.api.cppKnown(returns):
            return T("cpp", returns)
        return None

    def checkCppCall(self, node: ast.Call, name: str, owner: str, overloads) -> None:
        if node.keywords:
            self.error(node, f"{owner}.{name}: a C++ method takes no keyword arguments in PythonQt")
        if any(isinstance(a, ast.Starred) for a in node.args):
            return
        count = len(node.args)
        if not any(o[1] <= count <= o[2] for o in overloads):
            ranges = ", ".join(f"{o[1]}-{o[2]}" if o[1] != o[2] else str(o[1]) for o in overloads)
            self.error(node, f"{owner}.{name} takes {ranges} arguments, not {count}")

    def checkModuleNameArgument(self, node: ast.Call, name: str) -> None:
        """``selectModule("X")`` and ``getModuleWidget("X")`` name a module: Slicer's or this one."""
        if name not in ("slicer.util.selectModule", "slicer.util.getModuleWidget", "slicer.util.getModule",
                        "slicer.util.getModuleLogic"):
            return
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            moduleName = node.args[0].value
            known = {n for n, _, _ in self.api.modules.values()} | {MODULE_NAME}
            if moduleName not in known:
                self.error(node, f"{name}('{moduleName}'): no module of that name (names are case-sensitive)")
            elif moduleName != MODULE_NAME:
                self.use(node.args[0], moduleName, f"module {moduleName}", self.api.moduleWhere(moduleName),
                         col=node.args[0].col_offset + 1)

    def bindArguments(self, node: ast.Call, facts: dict, name: str, dropSelf: bool) -> None:
        """Do the call's arguments fit the parameters ``facts["sig"]``? (Python's binding rules.)"""
        if "sig" not in facts:
            return
        args = _signature(facts["sig"])
        positional = [a.arg for a in args.posonlyargs + args.args]
        defaults = len(args.defaults)
        required = set(positional[:len(positional) - defaults]) | {
            a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None}
        given = list(node.args)
        if dropSelf:
            given = given[1:]
        starred = any(isinstance(a, ast.Starred) for a in given)
        doubleStarred = any(k.arg is None for k in node.keywords)
        filled = set()
        if not starred:
            if len(given) > len(positional) and args.vararg is None:
                self.error(node, f"{name}() takes at most {len(positional)} positional arguments, not {len(given)}")
            filled = set(positional[:len(given)])
        posonly = {a.arg for a in args.posonlyargs}
        keywordable = {a.arg for a in args.args + args.kwonlyargs}
        for keyword in node.keywords:
            if keyword.arg is None:
                continue
            if keyword.arg in filled:
                self.error(keyword, f"{name}() got multiple values for argument '{keyword.arg}'")
            if keyword.arg in keywordable and keyword.arg not in posonly:
                filled.add(keyword.arg)
                self.use(keyword, keyword.arg, f"{name}({keyword.arg}=)", facts.get("where", name), col=keyword.col_offset)
            elif args.kwarg is not None:
                accepted, where = self.forwardedKeyword(facts, keyword.arg)
                if accepted:
                    self.use(keyword, keyword.arg, f"{name}({keyword.arg}=) via **{args.kwarg.arg}", where,
                             col=keyword.col_offset)
                else:
                    self.error(keyword, f"{name}() got an unexpected keyword argument '{keyword.arg}' "
                                        f"(its **{args.kwarg.arg} go to {where}, which takes no such keyword)")
            else:
                self.error(keyword, f"{name}() got an unexpected keyword argument '{keyword.arg}'")
        if not starred and not doubleStarred:
            missing = sorted(required - filled)
            if missing:
                self.error(node, f"{name}() is missing argument(s) {', '.join(missing)}")

    def forwardedKeyword(self, facts: dict, keyword: str) -> Tuple[bool, str]:
        """Is ``keyword`` taken by where the function's ``**kwargs`` go (``kwargs_to``: another function,
        followed on; ``kwargs_set_on``: attributes of an object of that class; neither: anything goes)?"""
        current, seen = facts, set()
        where = "**kwargs"
        while True:
            if current.get("kwargs_set_on"):
                cls = current["kwargs_set_on"]
                found, _ = self.api.cppMember(cls, keyword)
                ok = found is not None and (found[0] == "property" or (
                    found[0] == "qt" and keyword in Qt.info(found[1])["properties"]))
                return ok, f"the properties of {cls} ({current.get('where', '')})"
            target = current.get("kwargs_to")
            if not target or target in seen:
                return not target, where  # no known target: any keyword may be right
            seen.add(target)
            module, _, function = target.rpartition(".")
            targetFacts = self.api.python.get(module, {}).get("functions", {}).get(function)
            if targetFacts is None:
                return True, target
            source = self.api.python[module]
            where = self.api.where(source["source"], source["file"], targetFacts["line"])
            targetArgs = _signature(targetFacts["sig"])
            if keyword in {a.arg for a in targetArgs.args + targetArgs.kwonlyargs}:
                return True, f"{target} at {where}"
            if targetArgs.kwarg is None:
                return False, f"{target} at {where}"
            current = {**targetFacts, "where": where}

    # --- parameter node ------------------------------------------------------------------------------
    def checkPack(self, cls: OwnClass) -> None:
        """Each parameter's type must have a serializer in this Slicer version (read from its serializers), its
        annotations must be validators that exist and take those arguments, and its name must not be one that
        the wrapper reserves."""
        members = self.api.pnw["wrapper"]["members"]
        for item in cls.node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                continue
            name = item.target.id
            if members.get(name, {}).get("reserved") or name in members:
                self.error(item, f"parameter '{name}' uses a name that parameterNodeWrapper reserves")
            self.checkParameterType(item, item.annotation, name)

    def checkParameterType(self, item: ast.AST, annotation: ast.AST, parameter: str) -> None:
        base, validators = annotation, []
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
            elements = annotation.slice.elts
            base, validators = elements[0], elements[1:]
        for validator in validators:
            call = validator if isinstance(validator, ast.Call) else None
            name = ast.unparse(call.func if call else validator).split(".")[-1]
            facts = self.pnwExport(name)
            if facts is None:
                self.error(validator, f"parameter '{parameter}': slicer.parameterNodeWrapper has no '{name}'")
                continue
            self.use(validator, name, f"slicer.parameterNodeWrapper.{name}",
                     self.api.where("Slicer", facts["file"], facts["line"]))
        serializer = self.serializerFor(base)
        if serializer is None:
            self.error(item, f"parameter '{parameter}': no parameterNodeWrapper serializer in Slicer {self.api.name} "
                             f"supports the type {ast.unparse(base)}")
            return
        serializerFile = self.api.pnw["serializers"]["file"]
        self.use(item, ast.unparse(base), f"{parameter}: {ast.unparse(base)} -> {serializer['name']}",
                 self.api.where("Slicer", serializerFile, serializer["line"]), col=-1)
        if serializer["name"] == "UnionSerializer" or any("origin" in a for a in serializer["accepts"]):
            if isinstance(base, ast.Subscript):
                elements = base.slice.elts if isinstance(base.slice, ast.Tuple) else [base.slice]
                for element in elements:
                    self.checkParameterType(item, element, parameter)
        elif isinstance(base, ast.BinOp):
            for element in (base.left, base.right):
                self.checkParameterType(item, element, parameter)

    def serializerFor(self, annotation: ast.AST) -> Optional[dict]:
        """The first registered serializer that accepts the type (Slicer tries them in registration order)."""
        text = ast.unparse(annotation)
        origin = None
        if isinstance(annotation, ast.Subscript):
            origin = ast.unparse(annotation.value)
            origin = {"Union": "typing.Union", "Optional": "typing.Union", "List": "list", "Dict": "dict",
                      "Tuple": "tuple", "typing.List": "list", "typing.Dict": "dict", "typing.Tuple": "tuple",
                      "typing.Optional": "typing.Union"}.get(origin, origin)
        elif isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            origin = "types.UnionType"
        own = self.classes.get(text)
        for serializer in self.api.pnw["serializers"]["registered"]:
            for accepts in serializer["accepts"]:
                if origin is not None:
                    if accepts.get("origin") == origin:
                        return serializer
                    continue
                if text in accepts.get("types", []) or (text == "None" and accepts.get("instance_of_none")):
                    return serializer
                base = accepts.get("subclass_of")
                if base == "enum.Enum" and own is not None and own.isEnum:
                    return serializer
                if base == "slicer.vtkMRMLNode" and self.api.isMrmlNode(text):
                    return serializer
        return None

    # --- the .ui -------------------------------------------------------------------------------------
    def checkUi(self) -> None:
        api = self.api
        dynamic = {api.pnw["wrapper"]["widget_property"]["name"]: api.pnw["wrapper"]["widget_property"]["line"]}
        for widget in self.uiWidgets.values():
            if widget.cls is None:
                continue
            if not api.cppKnown(widget.cls):
                self.error(widget.line, f"{widget.name}: no widget class {widget.cls} in Qt, CTK or Slicer")
                continue
            self.use(widget.line, widget.cls, widget.cls, api.cppWhere(widget.cls, api.cpp[widget.cls]["line"])
                     if widget.cls in api.cpp else api.cppWhere(widget.cls, 0), col=self._uiColumn(widget.line, widget.cls))
            for prop, (value, isDynamic, element) in widget.properties.items():
                line = self._uiLine(widget.line, f'name="{prop}"')
                if isDynamic:
                    if prop not in dynamic:
                        self.error(line, f"{widget.name}: dynamic property '{prop}' is read by nothing in Slicer "
                                         f"(parameterNodeWrapper reads '{next(iter(dynamic))}')")
                    else:
                        self.use(line, prop, f"dynamic property {prop}",
                                 api.where("Slicer", api.pnw["wrapper"]["file"], dynamic[prop]),
                                 col=self._uiColumn(line, prop))
                    continue
                found, complete = api.cppMember(widget.cls, prop)
                if found is None or found[0] not in ("property", "qt") or (
                        found[0] == "qt" and prop not in Qt.info(found[1])["properties"]):
                    self.error(line, f"{widget.name}: {widget.cls} has no property '{prop}'")
                    continue
                where = api.cppWhere(found[1], found[2] if found[0] == "property" else 0)
                self.use(line, prop, f"{widget.cls}.{prop}", where, col=self._uiColumn(line, prop))
                self.checkUiEnum(element, widget, line)
        self.checkCustomWidgets()
        self.checkConnections()
        self.checkBindings()

    def _uiLine(self, start: int, text: str) -> int:
        lines = self.uiText.splitlines()
        for i in range(max(start, 1), len(lines) + 1):
            if text in lines[i - 1]:
                return i
        return start

    def _uiColumn(self, line: int, token: str) -> int:
        lines = self.uiText.splitlines()
        if 0 < line <= len(lines):
            match = re.search(rf'"{re.escape(token)}"', lines[line - 1])
            if match:
                return match.start() + 1
        return -1

    def checkUiEnum(self, element: ET.Element, widget: UiWidget, line: int) -> None:
        for value in element.iter("enum"):
            for part in (value.text or "").split("|"):
                scope, _, name = part.strip().rpartition("::")
                info = Qt.info(scope) if scope != "Qt" else None
                owner = info["class"] if info else importlib.import_module("PySide6.QtCore").Qt
                if not hasattr(owner, name):
                    self.error(line, f"{widget.name}: no enum value {part.strip()}")

    def checkCustomWidgets(self) -> None:
        api = self.api
        for custom in self.uiRoot.iter("customwidget"):
            cls, extends, header = custom.findtext("class"), custom.findtext("extends"), custom.findtext("header")
            line = self._uiLine(1, f"<class>{cls}</class>")
            if cls not in api.cpp:
                self.error(line, f"custom widget {cls}: no such class in CTK or Slicer")
                continue
            if Path(api.cpp[cls]["file"]).name != header:
                self.error(line, f"custom widget {cls}: its header is {Path(api.cpp[cls]['file']).name}, not {header}")
            chain, qtClasses, _ = api.cppChain(cls)
            if extends and extends not in chain and extends not in qtClasses and not any(
                    issubclass(Qt.info(q)["class"], Qt.info(extends)["class"]) for q in qtClasses if Qt.info(extends)):
                self.error(line, f"custom widget {cls} does not derive from {extends}")

    def checkConnections(self) -> None:
        api = self.api
        for connection in self.uiRoot.iter("connection"):
            sender, signal = connection.findtext("sender"), connection.findtext("signal")
            receiver, slot = connection.findtext("receiver"), connection.findtext("slot")
            line = self._uiLine(1, f"<signal>{signal}</signal>")
            for objectName in (sender, receiver):
                if objectName not in self.uiWidgets:
                    self.error(line, f"connection: no widget named {objectName}")
                    return
            found, _ = api.cppSignal(self.uiWidgets[sender].cls, signal)
            if found is None:
                self.error(line, f"connection: {self.uiWidgets[sender].cls} has no signal {signal}")
            else:
                self.use(line, signal.split("(")[0], f"{found[0]}::{normalizeSignal(signal)}",
                         api.cppWhere(*found), col=self.uiText.splitlines()[line - 1].find(signal))
            found, _ = api.cppSlot(self.uiWidgets[receiver].cls, slot)
            slotLine = self._uiLine(line, f"<slot>{slot}</slot>")
            if found is None:
                self.error(slotLine, f"connection: {self.uiWidgets[receiver].cls} has no slot {slot}")
            else:
                self.use(slotLine, slot.split("(")[0], f"{found[0]}::{normalizeSignal(slot)}", api.cppWhere(*found),
                         col=self.uiText.splitlines()[slotLine - 1].find(slot))

    def checkBindings(self) -> None:
        """Each widget that names a parameter (SlicerParameterName) must have a GUI connector for its type."""
        api = self.api
        propertyName = api.pnw["wrapper"]["widget_property"]["name"]
        packs = [c for c in self.classes.values() if c.isPack]
        if not packs:
            return
        pack = packs[0]
        fields = {item.target.id: item.annotation for item in pack.node.body
                  if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
        connectors = api.pnw["gui_connectors"]
        for widget in self.uiWidgets.values():
            if propertyName not in widget.properties:
                continue
            parameter = widget.properties[propertyName][0]
            line = self._uiLine(widget.line, f'name="{propertyName}"')
            if parameter not in fields:
                self.error(line, f"{widget.name}: {propertyName} '{parameter}' is not a parameter of {pack.name}")
                continue
            connector = self.connectorFor(widget.cls, fields[parameter])
            if connector is None:
                self.error(line, f"{widget.name}: no parameterNodeWrapper GUI connector in Slicer {api.name} binds a "
                                 f"{widget.cls} to '{parameter}: {ast.unparse(fields[parameter])}'")
                continue
            self.use(line, parameter, f"{widget.cls} <-> {parameter}: {connector['name']}",
                     api.where("Slicer", connectors["file"], connector["line"]), col=-1)

    def connectorFor(self, widgetClass: str, annotation: ast.AST) -> Optional[dict]:
        annotations: List[ast.AST] = []
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
            annotation, annotations = annotation.slice.elts[0], annotation.slice.elts[1:]
        text = ast.unparse(annotation)
        own = self.classes.get(text)
        for connector in self.api.pnw["gui_connectors"]["registered"]:
            if widgetClass not in connector["widgets"]:
                continue
            for accepts in connector["accepts"]:
                ok = (text in accepts.get("types", [])
                      or (accepts.get("subclass_of") == "enum.Enum" and own is not None and own.isEnum)
                      or (accepts.get("predicate") == "isNodeOrUnionOfNodes" and self.isNodeOrUnionOfNodes(annotation)))
                if ok:
                    required = connector.get("requires_annotation", [])
                    names = {ast.unparse(a.func if isinstance(a, ast.Call) else a).split(".")[-1] for a in annotations}
                    if all(r in names for r in required):
                        return connector
                    return None  # Slicer picks this connector, which then raises for the missing annotation
        return None

    def isNodeOrUnionOfNodes(self, annotation: ast.AST) -> bool:
        text = ast.unparse(annotation)
        if self.api.isMrmlNode(text):
            return True
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Union", "typing.Union", "Optional"):
            elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
            return all(self.api.isMrmlNode(ast.unparse(e)) or ast.unparse(e) == "None" for e in elements)
        return False


# ---------------------------------------------------------------------------------------------------------


def moduleFiles() -> Dict[str, str]:
    """Every Python file of the Slicer module (``DSSMSegment.py`` and ``DSSMSegmentSlicerLib/``), by path
    relative to the repository."""
    paths = [MODULE / "DSSMSegment.py", *sorted((MODULE / "DSSMSegmentSlicerLib").glob("*.py"))]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in paths}


def check(version: dict, files: Optional[Dict[str, str]] = None, uiText: Optional[str] = None,
          only: Optional[str] = None) -> Report:
    """Check the module's Python files and ``.ui`` (or the given texts) against one version of the snapshot."""
    files = dict(moduleFiles() if files is None else files)
    uiText = UI_FILE.read_text(encoding="utf-8") if uiText is None else uiText
    return Checker(Api(version), files, uiText).run(only)


def apiTable(reports: Dict[str, Report]) -> str:
    """A Markdown table: each Slicer API the module uses, where it is first used, and the source line that
    defines it in each version. Qt's own classes and the module's own .ui widgets are left out; keyword
    arguments are listed with their function."""
    names = list(reports)
    rows: Dict[str, dict] = {}
    for name, report in reports.items():
        for use in report.uses:
            if use.definedAt.startswith(("Qt ", "parameter of", "DSSMSegment.ui")):
                continue
            match = re.fullmatch(r"(.+)\((\w+)=\)(?: via .*)?", use.api)
            if match:
                rows.setdefault(match.group(1), {"at": f"{Path(use.path).name}:{use.line}", "keywords": []})
                keywords = rows[match.group(1)]["keywords"]
                if match.group(2) not in keywords:
                    keywords.append(match.group(2))
                continue
            row = rows.setdefault(use.api, {"at": f"{Path(use.path).name}:{use.line}", "keywords": []})
            row[name] = use.definedAt
    lines = ["| API | first use | " + " | ".join(f"defined in {n}" for n in names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for api, row in rows.items():
        cells = [row.get(n, "-") for n in names]
        if len(set(cells)) == 1 and len(cells) > 1:
            cells = [cells[0]] + ["same"] * (len(cells) - 1)
        label = f"`{api}`" + (f" ({', '.join(k + '=' for k in row['keywords'])})" if row["keywords"] else "")
        lines.append(f"| {label} | {row['at']} | " + " | ".join(f"`{c}`" if c != "same" else c for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    """Check the module against every version of the snapshot; with --markdown, print the table of APIs."""
    import sys

    reports = {v["name"]: check(v) for v in loadSnapshot()["versions"]}
    failed = False
    for name, report in reports.items():
        for finding in report.findings:
            print(finding)
            failed = True
        print(f"Slicer {name}: {len(report.uses)} uses checked, {len(report.findings)} findings", file=sys.stderr)
    if "--markdown" in sys.argv:
        print(apiTable(reports))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
