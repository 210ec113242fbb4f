"""The repo layout must not shadow the standard library, and the stack must import."""

import subprocess
import sys


def test_platform_is_stdlib_and_stack_imports_from_repo_root(repo):
    code = (
        "import platform, sys; "
        "assert hasattr(platform, 'system') and platform.system(), platform; "
        "assert 'site-packages' not in platform.__file__ and 'activessf' not in platform.__file__; "
        "import torch, ray, mlflow, activessf; "
        "print(platform.system(), torch.__version__, ray.__version__, mlflow.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    system, torch_v, ray_v, mlflow_v = out.stdout.split()
    assert torch_v.startswith("2.14.1") and ray_v == "2.60.0" and mlflow_v == "3.17.2"


def test_no_platform_package(repo):
    assert not (repo / "platform" / "__init__.py").exists()


def test_requirements_are_pinned(repo):
    lines = [l.split("#")[0].strip() for l in (repo / "requirements.txt").read_text().splitlines()]
    reqs = [l for l in lines if l]
    assert reqs and all("==" in r for r in reqs), [r for r in reqs if "==" not in r]
    names = {r.split("==")[0].split("[")[0].lower() for r in reqs}
    assert {"ray", "torch", "torchvision", "timm", "faiss-gpu", "mlflow", "pyarrow"} <= names


def test_console_command_installed():
    out = subprocess.run([sys.executable, "-m", "activessf.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "synth" in out.stdout and "demo" in out.stdout


def _pins(path):
    """name -> (version, extras) of every ``name[extras]==version`` line of a requirements file."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = (next(iter(req.specifier)).version, req.extras)
    return pins


def _ranges(specs):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(r.name): r for r in map(Requirement, specs)}


def test_pyproject_ranges_admit_the_lock_and_keep_test_tools_out(repo):
    """`pip install .` resolves what the platform imports: pyproject's ranges admit every exact pin of
    requirements.txt (what `make` installs), name the same packages and extras, and leave the test tools
    to the `test` extra, whose ranges admit requirements-dev.txt's pins."""
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    runtime, test = _ranges(project["dependencies"]), _ranges(project["optional-dependencies"]["test"])
    pins, dev = _pins(repo / "requirements.txt"), _pins(repo / "requirements-dev.txt")
    assert set(runtime) == set(pins), set(runtime) ^ set(pins)
    for name, (version, extras) in pins.items():
        assert runtime[name].specifier.contains(version), f"{name}=={version} outside {runtime[name].specifier}"
        assert runtime[name].extras == extras, name
        assert str(runtime[name].specifier) != f"=={version}", f"{name}: a range, not the pin"
    tools = {"pytest", "pytest-timeout", "requests"}
    assert tools <= set(test) and not tools & set(runtime)
    for name in tools:
        assert test[name].specifier.contains(dev[name][0]), f"{name}=={dev[name][0]} outside {test[name].specifier}"
