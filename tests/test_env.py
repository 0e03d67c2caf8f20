"""environment.yml and requirements.txt agree: one source of pins; pyproject.toml's floors are the
versions of requirements-min.txt (what `make test-min` tests) and the pins are at or above them."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pins(filename: str = "requirements.txt"):
    pins = {}
    for line in (REPO / filename).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"{filename}: not an exact pin: {line}"
            name, ver = line.split("==")
            pins[name.lower()] = ver
    return pins


def test_requirements_are_exact_and_torch_is_pinned():
    pins = _pins()
    assert pins["torch"] == "2.13.0"
    for pkg in ("papermill", "ipykernel", "tokenizers", "statsmodels", "pytest", "nbformat"):
        assert pkg in pins, pkg


def test_environment_yml_installs_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = [d for d in deps if isinstance(d, dict)][0]["pip"]
    assert "-r requirements.txt" in pip
    pins = _pins()
    for d in deps:  # a conda package that is also pinned by pip must not disagree with the pin
        if isinstance(d, str) and "=" in d and not d.startswith("python="):
            name, ver = d.split("=", 1)
            assert pins.get(name.lower(), ver.lstrip("=")) == ver.lstrip("="), d


def test_pyproject_floors_are_the_tested_oldest_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    floors = {}
    for r in reqs:
        (spec,) = r.specifier  # exactly one bound, a floor
        assert spec.operator == ">=", r
        floors[r.name.lower()] = spec.version
    oldest, pins = _pins("requirements-min.txt"), _pins()
    assert floors == oldest  # every direct dependency has a floor, and it is the version make test-min tests
    assert oldest["torch"] == "2.11.0"  # the CUDA image that bench/gpu_session.sh is written for
    for name, floor in floors.items():
        assert Version(pins[name]) >= Version(floor), f"requirements.txt pins {name} below its floor {floor}"
