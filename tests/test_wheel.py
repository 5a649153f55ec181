import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_pip_wheel_contains_the_compiled_core(tmp_path):
    # build from a copy of the tracked sources, the way `pip wheel .` sees a fresh clone
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(out), str(src)],
        check=True, capture_output=True,
    )
    wheel = next(out.glob("nattrav-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("nattrav/_core") and n.endswith(".so") for n in names), names
    assert "nattrav/_version.py" in names
