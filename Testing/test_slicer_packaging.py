"""The Slicer extension's packaging: CMake lists, Extensions Index entry, legacy description, icon, sample.

* Every Python file the module runs (followed through its imports from ``DSSMSegment.py`` and the background
  worker) and every resource it loads is listed in ``DSSMSegment/CMakeLists.txt``, and every listed file
  exists: a file missing from the list is missing from the installed extension.
* ``DSSMSegment.json`` validates against the Extensions Index schema (``Testing/Data``: a verbatim copy of
  ``schemas/slicer-extension-catalog-entry-schema-v1.0.2.json`` of github.com/Slicer/ExtensionsIndex,
  the file that index validates entries with) and follows the index's naming rules.
* The top-level ``CMakeLists.txt`` and ``DSSMSegment.s4ext`` say the same things.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DSSMSegment"
PACKAGES = ("DSSMSegmentLib", "DSSMSegmentSlicerLib")
RAW_PREFIX = "https://raw.githubusercontent.com/dssmsegment/SlicerDSSMSegment/main/"
INDEX_SIZE_LIMIT_MB = 100


def cmakeList(text: str, variable: str, moduleName: str) -> list:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [item.replace("${MODULE_NAME}", moduleName) for item in match.group(1).split()]


@pytest.fixture(scope="module")
def listed() -> dict:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    assert name == "DSSMSegment"
    return {"scripts": cmakeList(text, "MODULE_PYTHON_SCRIPTS", name),
            "resources": cmakeList(text, "MODULE_PYTHON_RESOURCES", name), "text": text}


def topLevelSettings() -> dict:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    settings = dict(re.findall(r'^set\((EXTENSION_\w+)\s+"([^"]*)"\)', text, re.M))
    settings["project"] = re.search(r"^project\((\w+)\)", text, re.M).group(1)
    settings["text"] = text
    return settings


def s4ext() -> dict:
    fields = {}
    for line in (ROOT / "DSSMSegment.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


# ---------------------------------------------------------------------------------------------------------
# What the module needs, found from the code


def importedModules(path: Path, package: str) -> set:
    """Absolute names of the DSSM modules that ``path`` (in ``package``) imports, at any depth in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # "from package import module"
    return {n for n in names if n.split(".")[0] in PACKAGES}


def moduleFile(name: str):
    path = MODULE.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module ("from .bundle import resolve_model"), not a module


def filesReachedFrom(*entries: Path) -> set:
    """Every Python file reached by following DSSM imports from the entry files (packages' __init__ too)."""
    reached, todo = set(), list(entries)
    while todo:
        path = todo.pop()
        if path in reached:
            continue
        reached.add(path)
        relative = path.relative_to(MODULE).with_suffix("")
        package = ".".join(relative.parts[:-1])
        for name in importedModules(path, package):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                found = moduleFile(".".join(parts[:depth]))
                if found:
                    todo.append(found)
    return {str(p.relative_to(MODULE)).replace("\\", "/") for p in reached}


def pathInCode(path: Path, variable: str) -> str:
    """The ``Resources/...`` part of a module-level ``VARIABLE = Path(...) / "Resources" / ... / "x"``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == variable)
    parts = []
    while isinstance(node, ast.BinOp):
        parts.insert(0, node.right.value if isinstance(node.right, ast.Constant) else None)
        node = node.left
    return "/".join(parts[parts.index("Resources"):])


def constantInCode(path: Path, variable: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == variable)


# ---------------------------------------------------------------------------------------------------------
# The module's CMakeLists.txt


def test_every_listed_file_exists(listed):
    missing = [f for f in listed["scripts"] + listed["resources"] if not (MODULE / f).is_file()]
    assert not missing, f"listed in DSSMSegment/CMakeLists.txt but absent: {missing}"
    assert len(set(listed["scripts"])) == len(listed["scripts"]), "a script is listed twice"


def test_every_python_file_the_module_runs_is_listed(listed):
    reached = filesReachedFrom(MODULE / "DSSMSegment.py", MODULE / "DSSMSegmentSlicerLib" / "Worker.py")
    assert {"DSSMSegmentSlicerLib/Widget.py", "DSSMSegmentSlicerLib/Logic.py", "DSSMSegmentLib/inference.py",
            "DSSMSegmentLib/bundle.py", "DSSMSegmentLib/networks.py", "DSSMSegmentLib/__init__.py"} <= reached
    assert not reached - set(listed["scripts"]), f"imported but not listed: {sorted(reached - set(listed['scripts']))}"
    # The whole engine and Slicer package ship, so that `PythonSlicer -m DSSMSegmentLib.cli` works too.
    onDisk = {str(p.relative_to(MODULE)).replace("\\", "/")
              for package in PACKAGES for p in (MODULE / package).rglob("*.py")}
    assert not onDisk - set(listed["scripts"]), f"not listed: {sorted(onDisk - set(listed['scripts']))}"


def test_every_resource_the_module_loads_is_listed(listed):
    from DSSMSegmentLib.bundle import BUNDLED_MODELS_DIR, META_FILE, WEIGHTS_FILE

    sampleName = constantInCode(MODULE / "DSSMSegment.py", "SAMPLE_NAME")
    needed = {
        pathInCode(MODULE / "DSSMSegmentSlicerLib" / "Widget.py", "UI_PATH"),
        pathInCode(MODULE / "DSSMSegment.py", "SAMPLE_FILE"),
        "Resources/SampleData/README.md",  # the sample's licence and citation travel with it
        "Resources/Icons/DSSMSegment.png",  # Slicer's convention for the module icon
        f"Resources/Icons/{sampleName}.png",  # the sample's thumbnail (see registerSampleData)
    }
    assert BUNDLED_MODELS_DIR == MODULE / "Resources" / "Models"
    bundles = sorted(p.parent.name for p in BUNDLED_MODELS_DIR.glob(f"*/{META_FILE}"))
    assert len(bundles) >= 5, bundles
    needed |= {f"Resources/Models/{name}/{file}" for name in bundles for file in (META_FILE, WEIGHTS_FILE)}
    assert not needed - set(listed["resources"]), f"loaded but not listed: {sorted(needed - set(listed['resources']))}"
    assert "WITH_GENERIC_TESTS" in listed["text"]


def test_the_self_test_is_registered_and_the_sample_checksum_is_right(listed):
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", listed["text"])
    source = (MODULE / "DSSMSegment.py").read_text(encoding="utf-8")
    assert re.search(r"^class DSSMSegmentTest\(ScriptedLoadableModuleTest\):", source, re.M)
    sample = MODULE / pathInCode(MODULE / "DSSMSegment.py", "SAMPLE_FILE")
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == constantInCode(MODULE / "DSSMSegment.py", "SAMPLE_SHA256")


def test_icons_are_128_pixel_pngs_and_the_copy_is_identical():
    module, topLevel = MODULE / "Resources" / "Icons" / "DSSMSegment.png", ROOT / "Resources" / "DSSMSegment.png"
    with Image.open(module) as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))
    assert topLevel.read_bytes() == module.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# Extension description: top-level CMakeLists.txt, Extensions Index entry, legacy .s4ext


def test_index_entry_validates_against_the_schema_and_the_index_rules():
    schema = json.loads((ROOT / "Testing" / "Data" / "slicer-extension-index-schema.json").read_text(encoding="utf-8"))
    entry = json.loads((ROOT / "DSSMSegment.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema, cls=jsonschema.Draft7Validator)
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    # The index's own checks: the entry's file name is the CMake project name, the extension name does not
    # start with "Slicer" and the repository name does.
    settings = topLevelSettings()
    assert settings["project"] == "DSSMSegment" == Path("DSSMSegment.json").stem
    assert not settings["project"].lower().startswith("slicer")
    assert urlsplit(entry["scm_url"]).path.rstrip("/").split("/")[-1].startswith("Slicer")
    # An entry that breaks the schema is rejected, so the validation above is not vacuous.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry, "categories": ["Segmentation"]}, schema, cls=jsonschema.Draft7Validator)


def test_top_level_cmakelists_follows_the_extension_template():
    settings = topLevelSettings()
    text = settings["text"]
    assert re.match(r"cmake_minimum_required\(VERSION [\d.]+(\.\.\.[\d.]+)? FATAL_ERROR\)", text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert settings.get(key), f"{key} is not set"
    assert settings["EXTENSION_CATEGORY"] == "Segmentation" and settings["EXTENSION_DEPENDS"] == "PyTorch"
    # The icon and screenshots are files of this repository, published on its main branch.
    for url in [settings["EXTENSION_ICONURL"], *settings["EXTENSION_SCREENSHOTURLS"].split()]:
        assert url.startswith(RAW_PREFIX), url
        assert (ROOT / url[len(RAW_PREFIX):]).is_file(), f"{url} points at no file of this repository"
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(DSSMSegment)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


def test_s4ext_agrees_with_cmakelists_and_the_index_entry():
    fields, settings = s4ext(), topLevelSettings()
    entry = json.loads((ROOT / "DSSMSegment.json").read_text(encoding="utf-8"))
    assert fields["scm"] == "git"
    assert fields["scmurl"] == entry["scm_url"] and fields["scmrevision"] == entry["scm_revision"]
    assert fields["depends"].split() == entry["build_dependencies"] == settings["EXTENSION_DEPENDS"].split()
    assert fields["build_subdirectory"] == entry["build_subdirectory"]
    assert fields["category"] == entry["category"] == settings["EXTENSION_CATEGORY"]
    assert fields["homepage"] == settings["EXTENSION_HOMEPAGE"]
    assert fields["contributors"] == settings["EXTENSION_CONTRIBUTORS"]
    assert fields["iconurl"] == settings["EXTENSION_ICONURL"]
    assert fields["screenshoturls"] == settings["EXTENSION_SCREENSHOTURLS"]
    assert fields["description"] == settings["EXTENSION_DESCRIPTION"]
    assert int(fields["tier"]) == entry["tier"]


def test_licence_is_apache_2_and_the_repository_fits_the_index_limit():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in licence
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    size = sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())
    assert size / 2**20 < INDEX_SIZE_LIMIT_MB, f"the repository would be {size / 2**20:.0f} MB"
