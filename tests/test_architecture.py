"""The layers keep to their boundaries: the core needs torch alone, files stay small."""

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
    assert {path: n for path, n in sizes.items() if n > 420} == {}
