"""The environment is sane: torch and torchvision import together (a broken pair fails here)."""

import pytest

import ismod


def test_torch_and_torchvision_import_together():
    import torch
    import torchvision
    from torchvision.transforms import v2  # noqa: F401

    x = torchvision.transforms.functional.hflip(torch.arange(6.0).reshape(1, 2, 3))
    assert x[0, 0].tolist() == [2.0, 1.0, 0.0]


def test_version():
    assert isinstance(ismod.__version__, str) and ismod.__version__.count(".") >= 2


def test_the_changelog_names_this_version():
    import re
    from pathlib import Path

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)", changelog, re.MULTILINE)
    assert newest and newest.group(1) == ismod.__version__, (
        "add a CHANGELOG.md entry for the version"
    )


@pytest.mark.slow
def test_the_package_builds_passes_twine_check_and_its_wheel_imports_in_a_clean_environment(
    tmp_path,
):
    """What a release needs: an sdist and a wheel with a license, py.typed and complete metadata, which
    `twine check` accepts, and a wheel that imports from a fresh virtual environment (its dependencies
    are borrowed from this one by path, not installed: torch is gigabytes)."""
    import subprocess
    import sys
    import sysconfig
    import venv
    import zipfile
    from email.parser import Parser
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dist = tmp_path / "dist"
    build = [
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--sdist",
        "--wheel",
        "--outdir",
        str(dist),
    ]
    subprocess.run(build + [str(root)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("ismod-*.whl"))
    assert wheel.name.startswith(f"ismod-{ismod.__version__}-")
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                   check=True, capture_output=True)  # fmt: skip
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith("METADATA"))).decode())
    assert "ismod/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert meta["Author"] and meta["Version"] == ismod.__version__
    assert any(u.startswith("Homepage, https://") for u in meta.get_all("Project-URL"))

    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # the dependencies (torch, numpy, …) from this environment, after the new one's own packages
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    code = "import ismod, pathlib; print(ismod.__version__, pathlib.Path(ismod.__file__).resolve())"
    out = subprocess.run([str(python), "-I", "-c", code], check=True, capture_output=True, text=True,
                         cwd=tmp_path).stdout.split()  # fmt: skip
    assert out[0] == ismod.__version__ and Path(out[1]).is_relative_to(env.resolve())
