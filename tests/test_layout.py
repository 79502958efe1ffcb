"""The package's shape: stages above a small shared core, every import pointing downward, no cycles,
and light commands that never import the training stack."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scripts" / "oig"
# The stages, lowest first. A module may import its own stage and the ones below it, never one above
# it or a peer (stages of the same rank know nothing of each other). The core is everything at the
# top of the package.
RANKS = {"core": 0, "data": 1, "serve": 2, "generate": 2, "bugs": 3, "eval": 4, "publish": 5, "train": 6, "history": 6, "cli": 7}
HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if module == "oig.__main__":
        return "cli"
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "core"


def resolve(module: str, name: str) -> str:
    """``from module import name``: the submodule when name is one, else the module itself."""
    candidate = f"{module}.{name}"
    rel = Path(*candidate.split("."))
    return candidate if (PACKAGE.parent / rel.with_suffix(".py")).is_file() or (PACKAGE.parent / rel).is_dir() else module


def imports() -> dict[str, set[str]]:
    """Every oig module -> the oig modules it imports (module level and inside functions alike)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name == "oig" or a.name.startswith("oig.")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module == "oig" or node.module.startswith("oig.")):
                found |= {resolve(node.module, a.name) for a in node.names}
        graph[mod] = found - {mod, "oig"}
    return graph


def test_every_import_points_down_the_stages():
    wrong = []
    for mod, targets in imports().items():
        for target in targets:
            here, there = stage(mod), stage(target)
            if here == there:
                continue
            if RANKS[there] >= RANKS[here]:
                wrong.append(f"{mod} ({here}) imports {target} ({there})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_there_are_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt in graph and nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_stages_are_packages_and_the_core_is_small():
    for name in RANKS:
        if name not in ("core", "eval"):
            assert (PACKAGE / name / "__init__.py").is_file(), name
    core = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(core) <= 12, f"the shared core grew to {len(core)} modules: {core}"


def test_no_module_is_long_unless_it_says_why():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > 420:
            head = "\n".join(lines[:12]).lower()
            assert "one cohesive" in head, f"{path.relative_to(ROOT)} has {len(lines)} lines and no reason at its top"


def test_validate_and_mix_import_no_training_stack(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.yaml").write_text("IOPairs:\n  - input: hi\n    output: hello\n")
    (tmp_path / "training.yaml").write_text("Training:\n  seed: 1\n")
    code = ("import sys\nfrom oig.cli import main\n"
            f"assert main(['validate', {str(data)!r}]) == 0\n"
            f"assert main(['mix', '--data', {str(data)!r}, '--config', {str(tmp_path / 'training.yaml')!r}, '--plan']) == 0\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
