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
