"""The rooms keep to their boundaries: every import is one docs/architecture.md's "may import"
column allows, the core needs torch alone, files stay small and are laid out by ruff format."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "secu_plugin"
FOLDERS = ("secu_plugin", "recipes", "benchmarks")  # the code the rules below cover
PAGE = ROOT / "docs" / "architecture.md"
HEAVY = ("timm", "huggingface_hub", "accelerate", "torchvision", "lightly", "datasets", "PIL")


def modules_loaded_by(statements: list[str]) -> list[list[str]]:
    """The modules loaded after each statement, run in turn by one fresh interpreter (one
    interpreter start: the sets only grow, so a heavy module shows up after the statement
    that loads it, and in every later set)."""
    lines = ["import json, sys", "loaded = []"]
    lines += [f"{statement}; loaded.append(sorted(sys.modules))" for statement in statements]
    code = "\n".join([*lines, "print(json.dumps(loaded))"])
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout)


def test_core_imports_torch_alone():
    statements = [
        "import secu_plugin.core",
        "import secu_plugin",
        "import secu_plugin.train.presets",
    ]
    loaded_after = modules_loaded_by(statements)
    for statement, loaded in zip(statements, loaded_after):
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
        assert heavy == [], f"{statement!r} loads {heavy}"
    assert "torch" in loaded_after[0]


def test_core_sources_import_nothing_above_the_core():
    for path in (PACKAGE / "core").glob("*.py"):
        text = path.read_text()
        for name in (*HEAVY, "secu_plugin.models", "secu_plugin.data", "secu_plugin.train"):
            assert f"import {name}" not in text and f"from {name}" not in text, (path, name)


def python_files() -> list[Path]:
    """Every Python file of the package, the recipes and the benchmarks."""
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_files_stay_small():
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines()) for path in python_files()}
    assert len(sizes) > 50  # the three folders were found
    assert {path: n for path, n in sizes.items() if n > 400} == {}


def test_ruff_format_decides_the_layout():
    # A marker that keeps lines packed would meet the size limit in letter only.
    marker = re.compile(r"#\s*fmt:\s*(skip|off)\b")
    marked = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in python_files()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if marker.search(line)
    ]
    assert marked == []
    assert marker.search("x = [1,  2]  # fmt: skip") and marker.search("# fmt: off")


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package's name -> __init__.py)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, str]]:
    """What ``name`` imports from the package, anywhere in the file (top level, functions,
    TYPE_CHECKING blocks): (module, name taken from it or "" for the module itself, alias)."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "", a.asname or a.name) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # a submodule
                    found.append((f"{base}.{alias.name}", "", alias.asname or alias.name))
                elif base in modules:
                    found.append((base, alias.name, alias.asname or alias.name))
    return found


def test_no_import_circles_between_package_modules():
    modules = package_modules()
    graph = {
        name: {module for module, _, _ in imports_of(name, path, modules)}
        for name, path in modules.items()
    }
    circles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                circles.append([*trail[trail.index(target) :], target])
            elif target not in done:
                visit(target, [*trail, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert circles == []


def test_no_private_name_is_used_across_modules():
    crossings = []
    modules = package_modules()
    for name, path in modules.items():
        imported = imports_of(name, path, modules)
        crossings += [(name, module, taken) for module, taken, _ in imported if private(taken)]
        module_aliases = {alias: module for module, taken, alias in imported if not taken}
        for node in ast.walk(ast.parse(path.read_text())):  # module._name
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and private(node.attr)
            ):
                crossings.append((name, module_aliases[node.value.id], node.attr))
    assert crossings == []


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# The page's table and the code's imports, room by room -----------------------------------

EVERY_ROOM = "secu_plugin.*"  # in the "may import" column: every room of the package


def page_table() -> dict[str, list[str]]:
    """Room -> the names in backticks of its "may import" cell, in the page's row order."""
    rows: dict[str, list[str]] = {}
    columns: list[str] | None = None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            columns = None
        elif columns is None and "may import" in cells:
            columns = cells
        elif columns is not None and not set(line) <= set("|- :"):
            room = re.findall(r"`([^`]+)`", cells[columns.index("room")])
            allowed = re.findall(r"`([^`]+)`", cells[columns.index("may import")])
            assert len(room) == 1 and room[0] not in rows, line
            rows[room[0]] = allowed
    return rows


def room_of_file(path: Path) -> str:
    """``secu_plugin/core/bank.py`` -> ``core``, ``secu_plugin/viz.py`` -> ``viz``,
    ``secu_plugin/__init__.py`` -> ``secu_plugin``, ``recipes/train.py`` -> ``recipes``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] != "secu_plugin":
        return parts[0]
    return "secu_plugin" if parts[1:] == ("__init__",) else parts[1]


def package_rooms() -> set[str]:
    return {room_of_file(path) for path in PACKAGE.rglob("*.py")} - {"secu_plugin"}


def imported_rooms(path: Path, source: str | None = None) -> set[str]:
    """The rooms and libraries a file imports, anywhere in it (functions and TYPE_CHECKING
    blocks too): a module of the package counts as its room, a sibling script of a recipe or
    benchmark as that folder's room, anything else as its top-level name; the standard
    library is left out. ``source``: the file's text, when not read from ``path``."""
    rooms = package_rooms()
    own_package = path.relative_to(ROOT).parent.parts
    siblings = {sibling.stem for sibling in path.parent.glob("*.py")}
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = list(own_package[: len(own_package) - node.level + 1] if node.level else [])
            base = ".".join([*parts, *([node.module] if node.module else [])])
            # from secu_plugin import viz: the room; from secu_plugin import SeCuModel: the front
            names += [f"{base}.{a.name}" for a in node.names] if base == "secu_plugin" else [base]
    found = set()
    for name in names:
        top, _, rest = name.partition(".")
        if top == "secu_plugin":
            room = rest.split(".")[0]
            found.add(room if room in rooms else "secu_plugin")
        elif top in ("recipes", "benchmarks"):
            found.add(top)
        elif top in siblings and path.parent.name in ("recipes", "benchmarks"):
            found.add(path.parent.name)
        elif top not in sys.stdlib_module_names:
            found.add(top)
    return found


def allowed_imports(table: dict[str, list[str]], room: str) -> set[str]:
    allowed = {room, *table.get(room, [])}
    return allowed | package_rooms() | {"secu_plugin"} if EVERY_ROOM in allowed else allowed


def test_every_room_of_the_code_is_a_row_of_the_page():
    code_rooms = {room_of_file(path) for path in python_files()}
    assert {"core", "train", "frozen", "recipes", "benchmarks", "secu_plugin"} <= code_rooms
    assert sorted(page_table()) == sorted(code_rooms)


def test_every_import_is_one_the_page_allows():
    table = page_table()
    found = {path: imported_rooms(path) for path in python_files()}
    # the walker sees what is known to be there, so an empty result cannot pass unseen
    assert {"core", "accelerate", "torch"} <= found[PACKAGE / "train" / "scaffold.py"]
    assert "recipes" in found[ROOT / "recipes" / "train_imagenet.py"]
    outside = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in found.items()
        for name in sorted(names - allowed_imports(table, room_of_file(path)))
    ]
    assert outside == [], "either the import or docs/architecture.md's table is wrong"


def test_the_pages_rooms_form_layers():
    """Each row names rooms above it only (so no two rooms import each other), libraries that
    exist under the name they are imported by, and ``train`` never ``frozen``."""
    table = page_table()
    above: set[str] = set()
    for room, allowed in table.items():
        for name in allowed:
            if name == EVERY_ROOM:
                assert package_rooms() | {"secu_plugin"} <= above, (room, name)
            elif name in table:
                assert name in above, f"{room} may import {name}, which is not above it"
            else:
                assert importlib.util.find_spec(name) is not None, (room, name)
        above.add(room)
    assert "frozen" not in allowed_imports(table, "train")
    assert allowed_imports(table, "core") == {"core", "torch"}


@pytest.mark.parametrize("room", ["core", "train"])
def test_an_import_past_the_row_is_found(room):
    """A module of ``core`` or ``train`` that imports ``frozen`` (in a function) and timm is
    reported: the walker finds both and neither row allows them."""
    path = PACKAGE / room / "probe.py"  # never written: the source is given
    source = "def later():\n    from secu_plugin.frozen import features\n    import timm, os\n"
    found = imported_rooms(path, source)
    assert found == {"frozen", "timm"}
    assert found - allowed_imports(page_table(), room) == {"frozen", "timm"}
