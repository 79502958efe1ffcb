"""The locked environment: pyproject.toml, requirements/lock.txt and the installs that use them agree."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
# Installed beside the lock on purpose, each by its own pin (Makefile TORCH_SPEC, the train workflow).
OUTSIDE_THE_LOCK = {"torch"}
# The gpu extra (DeepSpeed, Liger, bitsandbytes) needs CUDA: it is installed only on the GPU runner, with
# `-c requirements/lock.txt` so that the packages it shares with the lock keep their pins, and so it is
# not locked on this CPU machine. Only that extra is exempt.
UNLOCKED_EXTRAS = {"gpu"}


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"requirements/lock.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _declared(locked_only: bool = False) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for name, extra in project["optional-dependencies"].items():
        if not (locked_only and name in UNLOCKED_EXTRAS):
            reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _lock()
    for req in _declared(locked_only=True):
        name = canonicalize_name(req.name)
        if name in OUTSIDE_THE_LOCK:
            continue
        assert name in pins, f"{req.name} is declared but not locked: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"the lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}: run `make lock`"


def test_the_gpu_extra_is_the_only_unlocked_one_and_the_runner_installs_it_with_the_lock():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) >= UNLOCKED_EXTRAS
    gpu = {canonicalize_name(Requirement(r).name) for r in extras["gpu"]}
    assert gpu == {"deepspeed", "liger-kernel", "bitsandbytes"}
    assert not gpu & set(_lock())  # not locked here (CUDA-only), so nothing in the lock is shadowed
    train = (ROOT / ".github" / "workflows" / "train.yml").read_text()
    assert re.search(r'pip install --quiet -c requirements/lock.txt -e "\.\[train,gpu\]"', train)


def test_the_lock_leaves_torch_to_its_own_pin():
    assert not OUTSIDE_THE_LOCK & set(_lock()), "torch is pinned by TORCH_SPEC, not the lock"
    assert "TORCH_SPEC ?= torch==" in (ROOT / "Makefile").read_text()


def test_this_environment_is_the_locked_one():
    # make test installs from the lock: a package at another version means the lock was bypassed.
    wrong = {}
    for name, version in _lock().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. the core install, without the train extra
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements/lock.txt (locked, installed): {wrong}"


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "scripts" / "oig").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"oig", "__future__"}


# Imported lazily and never declared: installed by hand in an environment of its own on GPU machines
# (README: "kind: vllm"), since its torch and CUDA pins would fight the training stack's.
SEPARATE = {"vllm"}


def test_every_imported_package_is_declared():
    declared = {canonicalize_name(r.name) for r in _declared()}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules() - SEPARATE):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            pytest.fail(f"oig imports {module!r}, which no installed distribution provides")
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_install_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -c \$\(LOCK\) -e \"\.\[train,dev,eval\]\"", makefile)
    assert re.search(r"pip install -q -c \$\(LOCK\) -e \.$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for name in ("validate.yml", "ci.yml", "train.yml"):
        text = (ROOT / ".github" / "workflows" / name).read_text()
        installs = [line for line in text.splitlines() if re.search(r"pip install\b.*-e ", line)]
        installs += [line for line in text.splitlines() if "make test" in line]
        assert installs, name
        for line in installs:
            assert "requirements/lock.txt" in line or "make test" in line, f"{name}: {line.strip()}"


def test_dependabot_proposes_lock_refreshes():
    import yaml

    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    ecosystems = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert ("pip", "/requirements") in ecosystems
    assert ("github-actions", "/") in ecosystems
