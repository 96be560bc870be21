"""Installing like any Python tool: one source of dependency ranges, the Python versions told
truthfully, --version everywhere, and a bootstrap that refuses a .venv it cannot use."""
import configparser
import os
import pathlib
import re
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import scraper

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def install_requires():
    lines = setup_cfg()["options"]["install_requires"].strip().splitlines()
    return {Requirement(line).name.lower(): Requirement(line) for line in lines if line.strip()}


def pinned_lock():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            assert len(requirement.specifier) == 1 and next(
                iter(requirement.specifier)).operator == "==", f"not a pin: {line}"
            pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    return pins


def test_every_pin_of_the_lock_lies_inside_setup_cfg_ranges():
    ranges, pins = install_requires(), pinned_lock()
    assert set(pins) == set(ranges)  # the same packages in both places
    for name, version in pins.items():
        assert ranges[name].specifier.contains(version), (name, version, ranges[name])
    # what the code imports directly is declared, not left to luck
    for needed in ("requests", "urllib3", "beautifulsoup4", "pillow", "numpy", "scipy", "h5py",
                   "keras", "tensorflow-cpu", "scikit-learn", "tqdm", "matplotlib",
                   "pydicom", "python-gdcm"):
        assert needed in ranges, needed


def test_python_versions_are_told_truthfully():
    options = setup_cfg()["options"]
    allowed = SpecifierSet(options["python_requires"])
    assert "3.10" not in allowed and all(v in allowed for v in ("3.11", "3.12", "3.13"))
    readme = (ROOT / "README.md").read_text()
    assert "3.10+" not in readme and "Python 3.11–3.13" in readme
    assert setup_cfg()["metadata"]["version"] == "attr: scraper.__version__"


def test_requirements_name_no_host():
    for name in ("requirements.txt", "requirements-test.txt", "setup.cfg"):
        text = (ROOT / name).read_text()
        assert not re.search(r"(https?://|--index-url|--extra-index-url|--find-links)", text), name


@pytest.mark.parametrize("entry", setup_cfg()["options.entry_points"]["console_scripts"]
                         .strip().splitlines())
def test_every_command_has_version(entry, capsys):
    import importlib

    name, target = (part.strip() for part in entry.split("="))
    module = importlib.import_module(target.split(":")[0])
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {scraper.__version__}"


def ensure_venv(venv, python=None):
    env = dict(os.environ, CXR_VENV=str(venv))
    env.pop("PYTHON", None)
    if python:
        env["PYTHON"] = str(python)
    return subprocess.run(["bash", "-c", f"source '{ROOT}/scripts/ensure_venv.sh'"], env=env,
                          capture_output=True, text=True, timeout=60)


def fake_python(path, version):
    """An executable that answers the version probe like Python `version` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_bootstrap_refuses_a_venv_made_by_another_python(tmp_path):
    venv = tmp_path / "venv"
    fake_python(venv / "bin" / "python", "3.10")
    result = ensure_venv(venv)
    assert result.returncode == 3
    assert "was made with Python 3.10; this project needs Python 3.11-3.13" in result.stderr
    assert f"rm -rf '{venv}'" in result.stderr and "PYTHON=python3.11" in result.stderr


def test_bootstrap_refuses_a_broken_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "vanished-python")
    result = ensure_venv(venv)
    assert result.returncode == 3 and "is unusable" in result.stderr


def test_bootstrap_refuses_an_old_python_before_creating_anything(tmp_path):
    venv = tmp_path / "venv"
    result = ensure_venv(venv, fake_python(tmp_path / "python3.10", "3.10"))
    assert result.returncode == 3
    assert "is Python 3.10; this project needs Python 3.11-3.13" in result.stderr
    assert not venv.exists()


def test_bootstrap_refuses_a_venv_of_another_python_than_asked(tmp_path):
    venv = tmp_path / "venv"
    fake_python(venv / "bin" / "python", "3.12")
    result = ensure_venv(venv, fake_python(tmp_path / "python3.11", "3.11"))
    assert result.returncode == 3 and "was made with Python 3.12 but PYTHON=" in result.stderr
