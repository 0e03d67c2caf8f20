"""environment.yml and requirements.txt agree: one source of pins."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"requirements.txt: not an exact pin: {line}"
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
