"""The layers keep to their boundaries: the core needs torch alone, files stay small."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "secu_plugin"
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


def test_modules_stay_small():
    sizes = {
        path.relative_to(PACKAGE): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {path: n for path, n in sizes.items() if n > 400} == {}


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
