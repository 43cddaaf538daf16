#!/usr/bin/env python3
"""Take a snapshot of the Slicer API that the DSSMSegment module relies on, from Slicer's own sources.

No Slicer application runs on the machines that test this project, so ``Testing/test_slicer_api.py`` checks
the module's calls into Slicer against facts read here from the real sources, at pinned commits:

* Slicer (``Slicer/Slicer``): the Python package ``slicer`` (``util``, ``packaging``, ``i18n``,
  ``ScriptedLoadableModule``, ``parameterNodeWrapper``), the Sample Data and Segment Editor modules, the C++
  headers of the application, module and widget classes (``Q_PROPERTY``, slots, signals, ``Q_INVOKABLE``
  methods, the PythonQt decorators), and the names of the core modules;
* CTK (``commontk/CTK``), at the commit that Slicer's ``SuperBuild/External_CTK.cmake`` pins, for the CTK
  widgets of the ``.ui`` file;
* the PyTorch extension (``fepegar/SlicerPyTorch``): ``PyTorchUtils.PyTorchUtilsLogic``.

The snapshot holds facts, not code: names, parameter lists (defaults shown as ``...``), class names and
bases, properties, signal signatures, and the commit, file and line where each is defined. Only a few
classes and modules are read (``SLICER_CPP_CLASSES``, ``PYTHON_MODULES``), those the module uses plus their
bases. The output is deterministic: the same commits and ``--date`` give the same file.

The sources are git repositories (bare is fine); nothing is downloaded. Usage::

    python scripts/slicer_api_snapshot.py \\
        --slicer /path/to/Slicer.git --slicer-ref v5.12.3=stable --slicer-ref main=preview \\
        --pytorch /path/to/SlicerPyTorch.git --pytorch-ref main \\
        --ctk /path/to/CTK.git --date 2026-11-30 -o Testing/Data/slicer_api_snapshot.json
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SCHEMA = 1

# Python modules read with ``ast``: import name -> (source repository, path, the classes to keep (None: all)).
PYTHON_MODULES = {
    "slicer.util": ("Slicer", "Base/Python/slicer/util.py", None),
    "slicer.packaging": ("Slicer", "Base/Python/slicer/packaging.py", None),
    "slicer.i18n": ("Slicer", "Base/Python/slicer/i18n.py", None),
    "slicer.ScriptedLoadableModule": ("Slicer", "Base/Python/slicer/ScriptedLoadableModule.py", None),
    "SampleData": ("Slicer", "Modules/Scripted/SampleData/SampleData.py", ["SampleDataLogic", "SampleDataSource"]),
    "SegmentEditor": ("Slicer", "Modules/Scripted/SegmentEditor/SegmentEditor.py", ["SegmentEditorWidget"]),
    "PyTorchUtils": ("SlicerPyTorch", "PyTorchUtils/PyTorchUtils.py", ["PyTorchUtilsLogic"]),
}
PARAMETER_NODE_WRAPPER = "Base/Python/slicer/parameterNodeWrapper"

# C++ classes read from their headers, with their bases up to the first class that is not in Slicer or CTK
# (a Qt or VTK class). MRML node classes only get their base (their methods are tested on slicer-core).
SLICER_CPP_CLASSES = [
    "qSlicerApplication", "qSlicerCommandOptions", "qSlicerScriptedLoadableModule", "qSlicerLoadableModule",
    "qSlicerCLIModule", "qSlicerScriptedLoadableModuleWidget", "qMRMLWidget", "qMRMLNodeComboBox",
    "qMRMLSegmentEditorWidget", "ctkCollapsibleButton", "ctkMessageBox",
    "vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode",
]
# PythonQt decorators: their public slots add methods to Slicer classes in Python.
DECORATOR_HEADERS = [
    "Base/QTCore/qSlicerBaseQTCorePythonQtDecorators.h",
    "Base/QTGUI/qSlicerBaseQTGUIPythonQtDecorators.h",
]
CTK_CMAKE = "SuperBuild/External_CTK.cmake"


# ---------------------------------------------------------------------------------------------------------
# git


class Repo:
    def __init__(self, gitDir: str, ref: str, name: str, url: str) -> None:
        self.gitDir, self.ref, self.name, self.url = gitDir, ref, name, url
        self.commit = self._git("rev-parse", f"{ref}^{{commit}}").strip()
        self.date = self._git("log", "-1", "--format=%cI", self.commit).strip()
        self._files: Optional[List[str]] = None

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", f"--git-dir={self.gitDir}", *args], check=True, capture_output=True,
                              text=True, encoding="utf-8", errors="replace").stdout

    def read(self, path: str) -> str:
        return self._git("show", f"{self.commit}:{path}")

    def has(self, path: str) -> bool:
        return path in set(self.files())

    def files(self) -> List[str]:
        if self._files is None:
            self._files = self._git("ls-tree", "-r", "--name-only", self.commit).splitlines()
        return self._files

    def source(self) -> dict:
        return {"repository": self.url, "ref": self.ref, "commit": self.commit, "commit_date": self.date}


# ---------------------------------------------------------------------------------------------------------
# Python sources


def signature(args: ast.arguments, dropFirst: bool = False) -> str:
    """A parameter list as text, every default shown as ``...``: ``(text, windowTitle=..., **kwargs)``."""
    args = ast.arguments(**{f: getattr(args, f) for f in args._fields})
    ellipsis = ast.Constant(value=...)
    args.defaults = [ellipsis] * len(args.defaults)
    args.kw_defaults = [None if d is None else ellipsis for d in args.kw_defaults]
    for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
        if a is not None:
            a.annotation = None
    if dropFirst:
        if args.posonlyargs:
            args.posonlyargs = args.posonlyargs[1:]
        elif args.args:
            nDefaults = len(args.defaults)
            if nDefaults > len(args.args) - 1:
                args.defaults = args.defaults[1:]
            args.args = args.args[1:]
    return "(" + ast.unparse(args) + ")"


def kwargsTarget(function: ast.FunctionDef, module: str = "", local: frozenset = frozenset()) -> dict:
    """Where a function's ``**kwargs`` go, so that a keyword it does not name itself can still be checked:

    * ``{"kwargs_set_on": "ctkMessageBox"}`` when it sets each of them as an attribute of an object of that
      class (``slicer.util.messageBox``: ``if hasattr(mbox, key): setattr(mbox, key, value)``);
    * ``{"kwargs_to": "module.name"}`` when it passes them to a function that it imports from another module
      (``slicer.util.pip_install`` -> ``slicer.packaging.pip_install``) or to a function of its own module
      (``local``: ``slicer.util.errorDisplay`` -> ``slicer.util._messageDisplay``).

    Empty when the function takes no ``**kwargs`` or does something else with them."""
    if function.args.kwarg is None:
        return {}
    kwargs = function.args.kwarg.arg
    built = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and typeOfValue(node.value):
            built[node.targets[0].id] = typeOfValue(node.value)
    for node in ast.walk(function):
        if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and ast.unparse(node.iter) == f"{kwargs}.items()"):
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and ast.unparse(call.func) == "setattr"
                        and isinstance(call.args[0], ast.Name) and call.args[0].id in built):
                    return {"kwargs_set_on": built[call.args[0].id]}
    imported = {}
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(function):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwargs for k in node.keywords)):
            if node.func.id in imported:
                return {"kwargs_to": imported[node.func.id]}
            if node.func.id in local:
                return {"kwargs_to": f"{module}.{node.func.id}"}
    return {}


def functionFacts(function, dropFirst: bool = False, module: str = "", local: frozenset = frozenset()) -> dict:
    facts = {"sig": signature(function.args, dropFirst), "line": function.lineno}
    facts.update(kwargsTarget(function, module, local))
    deprecated = re.search(r"\.\. deprecated::\s*(\S+)", ast.get_docstring(function) or "")
    if deprecated:
        facts["deprecated"] = deprecated.group(1)
    return facts


def typeOfValue(value: ast.AST) -> Optional[str]:
    """The class name when a value is built by calling a class (``slicer.qMRMLSegmentEditorWidget()``)."""
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name and re.match(r"(q|ctk|vtk|Q)[A-Z]\w+$", name):
            return name
    return None


def classFacts(cls: ast.ClassDef) -> dict:
    methods, attributes, classAttributes = {}, {}, {}
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = {ast.unparse(d) for d in item.decorator_list}
            static = "staticmethod" in decorators
            facts = functionFacts(item, dropFirst=not static)
            if static:
                facts["static"] = True
            if "classmethod" in decorators:
                facts["classmethod"] = True
            if "property" in decorators:
                facts = {"line": item.lineno, "property": True}
            if item.name in methods and methods[item.name].get("property"):
                continue  # a property's setter
            methods[item.name] = facts
            for node in ast.walk(item):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                    node, ast.AnnAssign) else []
                for target in targets:
                    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                            and target.value.id == "self" and not target.attr.startswith("__")):
                        attribute = attributes.setdefault(target.attr, {"line": node.lineno})
                        kind = typeOfValue(node.value) if getattr(node, "value", None) is not None else None
                        if kind and "type" not in attribute:  # where it gets its class, if it is built here
                            attribute.update({"type": kind, "line": node.lineno})
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            for target in (item.targets if isinstance(item, ast.Assign) else [item.target]):
                if isinstance(target, ast.Name):
                    classAttributes[target.id] = {"line": item.lineno}
    facts = {"line": cls.lineno, "bases": [ast.unparse(b) for b in cls.bases], "methods": methods}
    if attributes:
        facts["attributes"] = {k: v for k, v in attributes.items() if k not in methods}
    if classAttributes:
        facts["class_attributes"] = classAttributes
    return facts


def moduleFacts(text: str, path: str, source: str, module: str, alsoPrivate: frozenset = frozenset()) -> dict:
    """Top-level functions, classes and constants of a Python module: the public ones, the private functions
    that a public one passes its ``**kwargs`` to, and those named in ``alsoPrivate``."""
    tree = ast.parse(text, path)
    functions, classes, names = {}, {}, {}
    local = frozenset(item.name for item in tree.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    private = {}
    for item in tree.body:
        name = getattr(item, "name", None)
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and name.startswith("_"):
            private[name] = functionFacts(item, module=module, local=local)
        if name is not None and name.startswith("_"):
            continue
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[item.name] = functionFacts(item, module=module, local=local)
        elif isinstance(item, ast.ClassDef):
            classes[item.name] = classFacts(item)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            for target in (item.targets if isinstance(item, ast.Assign) else [item.target]):
                if isinstance(target, ast.Name) and not target.id.startswith("_"):
                    names[target.id] = {"line": item.lineno}
    todo = [f.get("kwargs_to", "") for f in functions.values()] + [f"{module}.{name}" for name in alsoPrivate]
    while todo:
        target = todo.pop()
        if target.startswith(module + ".") and target[len(module) + 1:] in private:
            name = target[len(module) + 1:]
            if name not in functions:
                functions[name] = private[name]
                todo.append(private[name].get("kwargs_to", ""))
    return {"source": source, "file": path, "functions": functions, "classes": classes, "names": names}


def slicerUtilUses(text: str) -> Dict[str, List[int]]:
    """``slicer.util.X`` -> the lines where a module's code uses it."""
    uses: Dict[str, List[int]] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "slicer.util":
            uses.setdefault(node.attr, []).append(node.lineno)
    return {name: sorted(lines) for name, lines in sorted(uses.items())}


def allNames(tree: ast.Module) -> Optional[List[str]]:
    for item in tree.body:
        if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in item.targets):
            return [ast.literal_eval(e) for e in item.value.elts]
    return None


# --- parameterNodeWrapper ------------------------------------------------------------------------------------


def _typeNames(node: ast.AST) -> List[str]:
    """``(int, float)`` or ``int`` -> ["int", "float"] (as written: ``typing.Any``, ``pathlib.Path``, ...)."""
    if isinstance(node, ast.Tuple):
        return [ast.unparse(e) for e in node.elts]
    return [ast.unparse(node)]


def acceptedTypes(function: ast.FunctionDef, argument: str) -> List[dict]:
    """What a ``canSerialize(type_)`` / ``canRepresent(widget, datatype)`` accepts for ``argument``, as facts:
    ``{"types": [...]}`` (equal to one of these), ``{"subclass_of": X}``, ``{"origin": X}`` (a generic such as
    ``list[int]``), ``{"predicate": name}`` (a helper such as ``isNodeOrUnionOfNodes``), ``{"instance_of_none":
    True}`` (``NoneType``). Raises on a shape it does not know, so that a changed Slicer is looked at."""
    facts: List[dict] = []

    def isArgument(node) -> bool:
        if isinstance(node, ast.Name) and node.id == argument:
            return True
        # unannotatedType(datatype)
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "unannotatedType"
                and len(node.args) == 1 and isArgument(node.args[0]))

    for node in ast.walk(function):
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, op, right = node.left, node.ops[0], node.comparators[0]
            if isArgument(left) and isinstance(op, (ast.Eq, ast.In)):
                facts.append({"types": _typeNames(right)})
            elif (isinstance(left, ast.Call) and ast.unparse(left.func) == "typing.get_origin"
                  and isArgument(left.args[0]) and isinstance(op, ast.Eq)):
                facts.append({"origin": ast.unparse(right)})
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func == "issubclass" and isArgument(node.args[0]):
                facts.append({"subclass_of": ast.unparse(node.args[1])})
            elif func == "isinstance" and len(node.args) == 2:
                if isinstance(node.args[0], ast.Constant) and node.args[0].value is None and isArgument(node.args[1]):
                    facts.append({"instance_of_none": True})
                elif isArgument(node.args[0]) and ast.unparse(node.args[1]) == "types.UnionType":
                    facts.append({"origin": "types.UnionType"})
            elif func not in ("unannotatedType", "type", "hasattr", "getattr", "typing.get_origin") and any(
                    isArgument(a) for a in node.args):
                facts.append({"predicate": func})
    if not facts:
        raise ValueError(f"line {function.lineno}: cannot read which {argument} {function.name} accepts")
    return facts


def widgetTypes(function: ast.FunctionDef) -> List[str]:
    """``type(widget) in (qt.QCheckBox, ctk.ctkCheckBox)`` -> ["QCheckBox", "ctkCheckBox"]; ["*"] when the
    connector does not look at the widget's class (the parameter pack connector)."""
    for node in ast.walk(function):
        if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) and ast.unparse(node.left) == "type(widget)"
                and isinstance(node.ops[0], (ast.Eq, ast.In))):
            return [name.split(".")[-1] for name in _typeNames(node.comparators[0])]
    if "type(widget)" in ast.unparse(function) or "isinstance(widget" in ast.unparse(function):
        raise ValueError(f"line {function.lineno}: cannot read which widgets {function.name} accepts")
    return ["*"]


def _staticMethod(cls: ast.ClassDef, name: str) -> Optional[ast.FunctionDef]:
    return next((i for i in cls.body if isinstance(i, ast.FunctionDef) and i.name == name), None)


def _registered(cls: ast.ClassDef, decorator: str) -> bool:
    return any(ast.unparse(d).split("(")[0] == decorator for d in cls.decorator_list)


def parameterNodeWrapperFacts(repo: Repo) -> dict:
    """Exported names, the serializers (what types a parameter may have), the GUI connectors (which widget
    binds which type), the members that ``@parameterNodeWrapper`` adds, and the widget property it reads."""
    package = PARAMETER_NODE_WRAPPER
    init = ast.parse(repo.read(f"{package}/__init__.py"))
    exports: Dict[str, dict] = {}
    trees: Dict[str, ast.Module] = {}
    for item in init.body:
        if not isinstance(item, ast.ImportFrom) or item.level != 1:
            continue
        path = f"{package}/{item.module}.py"
        tree = trees.setdefault(item.module, ast.parse(repo.read(path), path))
        names = allNames(tree) if item.names[0].name == "*" else [a.name for a in item.names]
        if names is None:
            raise ValueError(f"{path} has no __all__")
        defs = {getattr(n, "name", None): n for n in tree.body}
        assigned = {t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        for name in names:
            node = defs.get(name) or assigned.get(name)
            if node is None:
                raise ValueError(f"{path}: exported name {name} is not defined there")
            facts = {"file": path, "line": node.lineno}
            if isinstance(node, ast.FunctionDef):
                facts.update(functionFacts(node))
            elif isinstance(node, ast.ClassDef):
                init_ = _staticMethod(node, "__init__")
                facts["kind"] = "class"
                if init_ is not None:
                    facts["init"] = signature(init_.args, dropFirst=True)
            exports[name] = facts

    serializersPath = f"{package}/serializers.py"
    serializers = []
    for cls in trees["serializers"].body:
        if isinstance(cls, ast.ClassDef) and _registered(cls, "parameterNodeSerializer"):
            serializers.append({"name": cls.name, "line": cls.lineno,
                                "accepts": acceptedTypes(_staticMethod(cls, "canSerialize"), "type_")})

    connectorsPath = f"{package}/guiConnectors.py"
    connectors = []
    for cls in trees["guiConnectors"].body:
        if isinstance(cls, ast.ClassDef) and _registered(cls, "parameterNodeGuiConnector"):
            canRepresent = _staticMethod(cls, "canRepresent")
            connector = {"name": cls.name, "line": cls.lineno, "widgets": widgetTypes(canRepresent),
                         "accepts": acceptedTypes(canRepresent, "datatype")}
            create = _staticMethod(cls, "create")
            raises = any(isinstance(n, ast.Raise) for n in ast.walk(create))
            required = [ast.unparse(n.args[1]).split(".")[-1] for n in ast.walk(create)
                        if isinstance(n, ast.Call) and ast.unparse(n.func) == "findFirstAnnotation"]
            if raises and required:
                connector["requires_annotation"] = required
            connectors.append(connector)

    wrapperPath = f"{package}/wrapper.py"
    wrapper = trees["wrapper"]
    functions = {n.name: n for n in wrapper.body if isinstance(n, ast.FunctionDef)}
    members, propertyName = {}, None
    for node in ast.walk(wrapper):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("checkedSetAttr", "setattr")
                and len(node.args) == 3 and isinstance(node.args[1], ast.Constant)):
            name, value = node.args[1].value, node.args[2]
            if isinstance(value, ast.Lambda):
                members[name] = {"sig": signature(value.args, dropFirst=True), "line": node.lineno}
            elif isinstance(value, ast.Name) and value.id in functions:
                members[name] = {"sig": signature(functions[value.id].args, dropFirst=True), "line": node.lineno}
            else:
                members[name] = {"line": node.lineno}
            members[name]["reserved"] = node.func.id == "checkedSetAttr"
    for item in wrapper.body:
        if (isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name)
                and item.targets[0].id == "SlicerParameterNamePropertyName"):
            propertyName = {"name": ast.literal_eval(item.value), "line": item.lineno}
    initMethod = functions.get("_initMethod")
    if initMethod is not None:
        for node in ast.walk(initMethod):
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
                    and ast.unparse(node.targets[0].value) == "self" and not node.targets[0].attr.startswith("_")):
                members.setdefault(node.targets[0].attr, {"line": node.lineno, "attribute": True})
    return {"source": "Slicer", "package": package, "exports": exports,
            "serializers": {"file": serializersPath, "registered": serializers},
            "gui_connectors": {"file": connectorsPath, "registered": connectors},
            "wrapper": {"file": wrapperPath, "members": members, "widget_property": propertyName}}


# ---------------------------------------------------------------------------------------------------------
# C++ headers

_BUILTIN_WORDS = {"int", "long", "short", "char", "bool", "double", "float", "unsigned", "signed", "void"}
_SKIP_MACRO = re.compile(r"\b(Q_(?!INVOKABLE\b|SIGNALS\b|SLOTS\b|SLICER_)[A-Z_]+|QVTK_OBJECT|CTK_[A-Z_]+)\b")


def blankComments(text: str) -> str:
    """Comments, string literals and preprocessor lines as spaces, newlines kept, so that offsets keep their line numbers."""
    def blank(match):
        return re.sub(r"[^\n]", " ", match.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|^[ \t]*#[^\n]*', blank, text, flags=re.S | re.M)


def balanced(text: str, start: int, open_: str = "(", close: str = ")") -> int:
    """Index just after the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced brackets")


def lineOf(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def splitTopLevel(text: str, separator: str = ",") -> List[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def normalizeType(parameter: str) -> Tuple[str, bool]:
    """``const QString& key = QString()`` -> ("QString", True): the type as Qt normalizes it in signatures,
    and whether it has a default."""
    text, _, default = parameter.partition("=")
    tokens = re.findall(r"[A-Za-z_][\w:]*(?:<[^>]*>)?|\*|&", text)
    tokens = [t for t in tokens if t not in ("const", "&", "volatile")]
    words = [t for t in tokens if t != "*"]
    if len(words) >= 2 and tokens[-1] not in ("*",) and tokens[-1] not in _BUILTIN_WORDS:
        tokens = tokens[:-1]  # the parameter's name
    normalized = ""
    for t in tokens:
        normalized += t if t == "*" or not normalized else " " + t
    return normalized, bool(default.strip())


def parseClass(text: str, className: str, path: str) -> Optional[dict]:
    """Bases, Q_PROPERTYs, public slots, signals, Q_INVOKABLE and other public methods of one class."""
    clean = blankComments(text)
    match = re.search(r"\bclass\s+(?:[A-Z_][A-Z0-9_]*\s+)?" + re.escape(className) + r"\b\s*(:[^{;]*)?\{", clean)
    if match is None:
        return None
    bases = [re.sub(r"\b(public|protected|private|virtual)\b", "", b).strip()
             for b in (match.group(1) or ":")[1:].split(",") if b.strip() and "public" in b]
    bodyStart = match.end() - 1
    bodyEnd = balanced(clean, bodyStart, "{", "}")
    body = list(clean[bodyStart + 1:bodyEnd - 1])
    offset = bodyStart + 1
    properties = {}
    for macro in list(_SKIP_MACRO.finditer("".join(body))):
        start, end = macro.start(), macro.end()
        rest = "".join(body)
        after = re.match(r"\s*\(", rest[end:])
        if after:
            end = balanced(rest, end + after.end() - 1)
        if macro.group(1) == "Q_PROPERTY":
            content = rest[macro.end():end].strip()[1:-1]
            words = content.split()
            readIndex = words.index("READ") if "READ" in words else words.index("MEMBER")
            name = words[readIndex - 1]
            properties[name] = lineOf(clean, offset + start)
        for i in range(start, end):
            if body[i] != "\n":
                body[i] = " "
    body = "".join(body)

    # Statements at the class's top level: split at ';' and at inline bodies '{...}', noting access labels.
    methods: Dict[str, List[dict]] = {}
    signals: Dict[str, int] = {}
    cppOnly: set = set()
    section = "private"
    label = re.compile(r"\b(public|protected|private|signals|Q_SIGNALS)\b(\s+(?:slots|Q_SLOTS))?\s*:(?!:)")
    i, start, parens = 0, 0, 0
    while i <= len(body):
        ch = body[i] if i < len(body) else ";"
        if ch in "()":
            parens += 1 if ch == "(" else -1
            i += 1
        elif ch in ";{" and parens == 0:
            statement = body[start:i]
            stmtOffset = start
            labels = list(label.finditer(statement))
            if labels:
                last = labels[-1]
                section = last.group(1) + ("_slots" if last.group(2) else "")
                stmtOffset = start + last.end()
                statement = statement[last.end():]
            if ch == "{":
                i = balanced(body, i, "{", "}")
                start = i
                if i < len(body) and body[i] == ";":
                    i += 1
                    start = i
            else:
                i += 1
                start = i
            _addMember(statement, section, lineOf(clean, offset + stmtOffset + len(statement) - len(statement.lstrip())),
                       className, methods, signals, cppOnly)
        else:
            i += 1
    return {"file": path, "line": lineOf(clean, match.start()), "bases": bases, "properties": properties,
            "methods": methods, "signals": signals, "cpp_only": sorted(cppOnly - set(methods))}


def _addMember(statement: str, section: str, line: int, className: str, methods: dict, signals: dict,
               cppOnly: set) -> None:
    text = " ".join(statement.split())
    if not text or re.match(r"(friend|typedef|using|enum|struct|class|template|union)\b", text) or "operator" in text:
        return
    invokable = "Q_INVOKABLE" in text
    text = text.replace("Q_INVOKABLE", "").strip()
    match = re.search(r"(~?[A-Za-z_]\w*)\s*\(", text)
    if match is None:
        return
    name, prefix = match.group(1), text[:match.start()]
    if name.startswith("~") or name == className or not prefix.strip():  # destructor, constructor or a macro
        return
    close = balanced(text, match.end() - 1)
    parameters = [normalizeType(p) for p in splitTopLevel(text[match.end():close - 1]) if p.strip() not in ("", "void")]
    returnType = " ".join(w for w in prefix.split() if w not in ("virtual", "static", "inline", "explicit", "const"))
    returnType = returnType.replace(" *", "*").replace("&", "").strip()
    if section.startswith("signals") or section.startswith("Q_SIGNALS"):
        signals[f"{name}({','.join(t for t, _ in parameters)})"] = line
        return
    if section == "public_slots":
        kind = "slot"
    elif section == "public" and invokable:
        kind = "invokable"
    elif section == "public":
        cppOnly.add(name)  # a public C++ method: not callable from Python unless a decorator exposes it
        return
    else:
        return
    if re.search(r"\bstatic\b", prefix):
        kind = "static " + kind
    methods.setdefault(name, []).append([kind, sum(1 for _, d in parameters if not d), len(parameters), returnType, line])


def parseDecorators(text: str, path: str) -> Dict[str, Dict[str, List[dict]]]:
    """PythonQt decorator slots -> {ClassName: {method: [facts]}}: ``R method(ClassName* self, ...)`` adds a
    method, ``R static_ClassName_method(...)`` a static method."""
    clean = blankComments(text)
    match = re.search(r"\bclass\s+(\w+PythonQtDecorators)\b", clean)
    facts = parseClass(text, match.group(1), path)
    added: Dict[str, Dict[str, List[dict]]] = {}
    # re-read the slots with their first parameter's type
    for name, overloads in facts["methods"].items():
        for kind, minimum, maximum, returns, line in overloads:
            static = re.fullmatch(r"static_([A-Za-z0-9]+)_(\w+)", name)
            if kind == "slot" and static:  # static_Class_method(...): Class.method(...)
                added.setdefault(static.group(1), {}).setdefault(static.group(2), []).append(
                    ["static decorator", minimum, maximum, returns, line, path])
                continue
            if kind != "slot" or name.startswith(("new_", "delete_", "static_")):
                continue
            lineText = clean.splitlines()[line - 1:line + 2]
            first = re.search(re.escape(name) + r"\s*\(\s*(?:const\s+)?(\w+)\s*\*", " ".join(lineText))
            if first is None:
                continue
            added.setdefault(first.group(1), {}).setdefault(name, []).append(
                ["decorator", minimum - 1, maximum - 1, returns, line, path])
    return added


def headerIndex(repo: Repo) -> Dict[str, str]:
    """``ClassName.h`` -> path, for the library and module sources (not templates or tests)."""
    index = {}
    for path in sorted(repo.files()):
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".h") or re.search(r"(Templates|Testing|Utilities)/", path):
            continue
        index.setdefault(name[:-2], path)
    return index


def cppFacts(slicer: Repo, ctk: Repo) -> dict:
    indexes = [(slicer, headerIndex(slicer)), (ctk, headerIndex(ctk))]
    classes: Dict[str, dict] = {}
    todo = list(SLICER_CPP_CLASSES)
    while todo:
        name = todo.pop(0)
        if name in classes:
            continue
        found = next(((repo, index[name]) for repo, index in indexes if name in index), None)
        if found is None:
            continue  # a Qt or VTK class: the chain ends here
        repo, path = found
        facts = parseClass(repo.read(path), name, path)
        if facts is None:
            raise ValueError(f"{path}: no declaration of class {name}")
        facts["source"] = repo.name
        if name.startswith("vtk"):  # MRML classes: only the inheritance chain
            facts = {k: facts[k] for k in ("source", "file", "line", "bases")}
        classes[name] = facts
        todo.extend(facts["bases"])
    for path in DECORATOR_HEADERS:
        for className, methods in parseDecorators(slicer.read(path), path).items():
            if className in classes:
                for name, overloads in methods.items():
                    classes[className]["methods"].setdefault(name, []).extend(overloads)
    return classes


def _lineMatching(repo: Repo, path: str, pattern: str) -> int:
    """The first line that matches, else 1 (the file)."""
    for number, line in enumerate(repo.read(path).splitlines(), 1):
        if re.search(pattern, line):
            return number
    return 1


def coreModules(slicer: Repo) -> Dict[str, dict]:
    """Every module built into Slicer (``slicer.modules.<name in lower case>``): [kind, line], the kind being
    scripted (defined in ``Modules/Scripted/X/X.py``), loadable (``Modules/Loadable/X/qSlicerXModule.h``) or
    cli (``Modules/CLI/X/X.xml``)."""
    files = set(slicer.files())
    modules = {}
    for path in sorted(files):
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "Modules":
            continue
        kind, name, fileName = parts[1], parts[2], parts[3]
        if kind == "Scripted" and fileName == f"{name}.py":
            modules[name] = ["scripted", _lineMatching(slicer, path, rf"^class {name}\b")]
        elif kind == "Loadable" and fileName == f"qSlicer{name}Module.h":
            modules[name] = ["loadable", _lineMatching(slicer, path, rf"^class .*\bqSlicer{name}Module\b[^;]*$")]
        elif kind == "CLI" and fileName == f"{name}.xml":
            modules[name] = ["cli", 1]
    return modules


def slicerPackageFacts(slicer: Repo) -> dict:
    """The ``slicer`` package's own attributes and submodules, and where the application sets them:
    ``slicer.app`` and ``slicer.mrmlScene`` (``slicerqt.py``), ``slicer.modules`` (``slicer/__init__.py``);
    and which C++ object a scripted module's and a scripted widget's ``parent`` is (the object that
    instantiates the Python class, passing ``this``)."""
    attributes = {}
    slicerqt = next(p for p in ("Base/Python/slicerqt.py", "Base/Python/slicer/slicerqt.py") if slicer.has(p))
    for path, pattern in ((slicerqt, r'setattr\(slicer,\s*"(\w+)"'),
                          ("Base/Python/slicer/__init__.py", r'_createModule\("slicer\.(\w+)"')):
        for number, line in enumerate(slicer.read(path).splitlines(), 1):
            match = re.search(pattern, line)
            if match and match.group(1) not in attributes:
                attributes[match.group(1)] = {"file": path, "line": number}
    submodules = sorted(p.rsplit("/", 1)[-1].removesuffix(".py") for p in slicer.files()
                        if re.fullmatch(r"Base/Python/slicer/\w+\.py", p) and not p.endswith("/__init__.py"))
    submodules += sorted({p.split("/")[3] for p in slicer.files()
                          if re.fullmatch(r"Base/Python/slicer/\w+/__init__\.py", p)})
    parents = {}
    for pythonClass, cppClass in (("ScriptedLoadableModule", "qSlicerScriptedLoadableModule"),
                                  ("ScriptedLoadableModuleWidget", "qSlicerScriptedLoadableModuleWidget")):
        path = f"Base/QTGUI/{cppClass}.cxx"
        for number, line in enumerate(slicer.read(path).splitlines(), 1):
            if re.search(r"instantiateClass\(\s*this\b", line):
                parents[pythonClass] = {"class": cppClass, "file": path, "line": number}
                break
        else:
            raise ValueError(f"{path}: no instantiateClass(this, ...)")
    return {"attributes": attributes, "submodules": submodules, "scripted_parent": parents}


def ctkCommit(slicer: Repo) -> str:
    text = slicer.read(CTK_CMAKE)
    match = re.search(r"Slicer_\$\{proj\}_GIT_TAG\s*\n\s*\"([0-9a-f]{40})\"", text)
    if match is None:
        raise ValueError(f"{CTK_CMAKE}: no pinned CTK commit found")
    return match.group(1)


# ---------------------------------------------------------------------------------------------------------


def versionFacts(slicer: Repo, ctk: Repo, pytorch: Repo, role: str) -> dict:
    repos = {"Slicer": slicer, "SlicerPyTorch": pytorch}
    python = {}
    # What the PyTorch extension itself calls in slicer.util: installing PyTorch goes through it.
    pytorchUses = slicerUtilUses(pytorch.read(PYTHON_MODULES["PyTorchUtils"][1]))
    for module, (source, path, keep) in PYTHON_MODULES.items():
        if not repos[source].has(path):  # e.g. slicer.packaging, new in 5.11
            continue
        alsoPrivate = frozenset(pytorchUses) if module == "slicer.util" else frozenset()
        facts = moduleFacts(repos[source].read(path), path, source, module, alsoPrivate)
        if keep is not None:
            facts["classes"] = {name: facts["classes"][name] for name in keep}
        python[module] = facts
    python["PyTorchUtils"]["uses_slicer_util"] = pytorchUses
    sources = {"Slicer": slicer.source(), "CTK": {**ctk.source(), "pinned_by": CTK_CMAKE},
               "SlicerPyTorch": pytorch.source()}
    return {"name": slicer.ref, "role": role, "sources": sources, "slicer": slicerPackageFacts(slicer), "python": python,
            "parameterNodeWrapper": parameterNodeWrapperFacts(slicer), "cpp": cppFacts(slicer, ctk),
            "modules": coreModules(slicer)}


def dumps(value, indent: str = "") -> str:
    """JSON with sorted keys, one line per small object (a function, a method's overloads), so that a new
    snapshot's diff shows what changed in Slicer."""
    compact = json.dumps(value, sort_keys=True)
    scalars = isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)
    if not isinstance(value, (dict, list)) or scalars or len(compact) + len(indent) < 120:
        return compact
    inner = indent + " "
    if isinstance(value, list):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {dumps(value[k], inner)}" for k in sorted(value)) + "\n" + indent + "}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer", required=True, help="git directory of Slicer/Slicer")
    parser.add_argument("--slicer-ref", action="append", required=True,
                        help="REF=ROLE, e.g. v5.12.3=stable or main=preview; repeat for each version")
    parser.add_argument("--ctk", required=True, help="git directory of commontk/CTK")
    parser.add_argument("--pytorch", required=True, help="git directory of fepegar/SlicerPyTorch")
    parser.add_argument("--pytorch-ref", default="main")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="the snapshot's date (default today)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)

    pytorch = Repo(args.pytorch, args.pytorch_ref, "SlicerPyTorch", "https://github.com/fepegar/SlicerPyTorch")
    versions = []
    for spec in args.slicer_ref:
        ref, _, role = spec.partition("=")
        slicer = Repo(args.slicer, ref, "Slicer", "https://github.com/Slicer/Slicer")
        ctk = Repo(args.ctk, ctkCommit(slicer), "CTK", "https://github.com/commontk/CTK")
        versions.append(versionFacts(slicer, ctk, pytorch, role or ref))
    # A later version repeats no fact: a module, class or section equal to the first version's is written as
    # "same as <first version>" (Testing/test_slicer_api.py expands it).
    first = versions[0]
    for version in versions[1:]:
        for section in ("python", "cpp"):
            for name, facts in version[section].items():
                if first[section].get(name) == facts:
                    version[section][name] = f"same as {first['name']}"
        for section in ("parameterNodeWrapper", "modules", "slicer"):
            if first[section] == version[section]:
                version[section] = f"same as {first['name']}"
    snapshot = {"schema": SCHEMA, "date": args.date, "generator": "scripts/slicer_api_snapshot.py",
                "note": "Facts read from Slicer's, CTK's and SlicerPyTorch's sources (names, parameter lists with "
                        "defaults as '...', properties, signals, file and line); no code is copied.",
                "versions": versions}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(dumps(snapshot) + "\n")
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB): "
          + ", ".join(f"{v['name']} ({v['role']}) {v['sources']['Slicer']['commit'][:10]}" for v in versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
