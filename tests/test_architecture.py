"""The layers keep to their boundaries: the core needs torch alone, files stay small."""

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "secu_plugin"
HEAVY = ("timm", "huggingface_hub", "accelerate", "torchvision", "lightly", "datasets", "PIL")


def modules_loaded_by(statement: str) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout)


def test_core_imports_torch_alone():
    for statement in (
        "import secu_plugin.core",
        "import secu_plugin",
        "import secu_plugin.train.presets",
    ):
        loaded = modules_loaded_by(statement)
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
        assert heavy == [], f"{statement!r} loads {heavy}"
    assert "torch" in modules_loaded_by("import secu_plugin.core")


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
