import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import online_select
from online_select.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_module_its_type_marker_and_the_version_of_the_package(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "online_select", source / "online_select", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "online_select").rglob("*.py")}
    assert modules <= names and "online_select/py.typed" in names  # PEP 561: type checkers read the hints
    assert not any(name.startswith("tests/") for name in names)
    assert wheel.name.startswith(f"online_select-{online_select.__version__}-")


def test_the_command_line_says_its_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"online-select {online_select.__version__}"
