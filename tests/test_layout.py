"""The package's shape: which stage folder may import which (arrows only point down, so there is
no cycle), and that the command line starts without the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "biocap_ray"

# What each folder may import from the project besides the neutral top-level modules (config,
# storage, tracking, runtime, plots), which import no folder. The folders' __init__ docstrings say the same.
MAY_IMPORT = {
    "data": set(),
    "models": set(),
    "context": {"data"},
    "caption": {"data", "models", "context"},
    "evaluate": {"data", "models"},
    "train": {"data", "models", "evaluate"},
    "tune": {"data", "train"},
}
NEUTRAL = {"config", "storage", "tracking", "runtime", "plots"}
ENTRY_POINTS = {"cli", "pipeline"}  # these call the stages


def _imports(path: Path) -> set[str]:
    """Every biocap_ray module ``path`` imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("biocap_ray"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("biocap_ray"))
    return found


def _part(module: str) -> str | None:
    """The folder or top-level module of ``biocap_ray.X.Y...``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_stage_folders_import_only_the_layers_below_them():
    assert set(MAY_IMPORT) | NEUTRAL | ENTRY_POINTS >= {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                                                        if (p.suffix == ".py" and p.stem != "__init__")
                                                        or (p / "__init__.py").exists()}, "a new folder or module: place it"
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = path.relative_to(PACKAGE).parts
        owner = here[0] if len(here) > 1 else Path(here[0]).stem
        if owner in ENTRY_POINTS or owner == "__init__":
            continue
        allowed = {owner} | (MAY_IMPORT.get(owner, set()) if owner not in NEUTRAL else set()) | NEUTRAL
        for module in _imports(path):
            target = _part(module)
            if target and target not in allowed and not (owner in NEUTRAL and target == owner):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_neutral_modules_import_no_stage():
    for name in NEUTRAL:
        targets = {_part(m) for m in _imports(PACKAGE / f"{name}.py")}
        assert not targets & set(MAY_IMPORT), f"{name}.py imports a stage folder: {targets & set(MAY_IMPORT)}"


def test_the_command_line_starts_without_torch_vllm_or_ray():
    probe = ("import sys, contextlib, io\n"
             "import biocap_ray\n"
             "from biocap_ray import cli\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
             "assert 'caption' in out.getvalue()\n"
             "print(sorted(m for m in ('torch', 'vllm', 'ray', 'open_clip', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
