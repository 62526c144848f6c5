"""`.ci/gpu-check` up to where CUDA is needed: its wheel list, what it installs, its report of the tests."""

import importlib.machinery
import importlib.util

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(ROOT / ".ci" / "gpu-check"))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_torch_stack_never_travels_as_wheels(gpu_check):
    for name in ("torch", "torchvision", "triton", "nvidia-cudnn-cu13", "pip"):
        assert gpu_check.KEEP.match(name), name
    for name in ("streamlit", "captum", "numpy", "safetensors", "torchmetrics"):
        assert not gpu_check.KEEP.match(name), name


def test_only_packages_missing_here_are_installed(gpu_check, tmp_path):
    (tmp_path / gpu_check.LIST).write_text("numpy==0.0.1\nnot-a-real-package-xyz==1.0\ncaptum==9.9\n")
    assert gpu_check.missing(tmp_path) == ["not-a-real-package-xyz==1.0"]  # installed ones stay as they are


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_without_cuda_it_says_so_and_what_to_do(gpu_check, tmp_path):
    with pytest.raises(SystemExit, match="sees no CUDA device.*--dry-run"):
        gpu_check.main(["--wheels", str(tmp_path), "--out", str(tmp_path / "g.json")])


def test_the_report_counts_each_outcome(gpu_check, tmp_path):
    (tmp_path / "r.xml").write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="tests.test_cuda" name="a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="b"><skipped message="no GPU"/></testcase>'
        '<testcase classname="tests.test_cuda" name="c"><failure message="x"/></testcase></testsuite></testsuites>')
    r = gpu_check.junit_counts(tmp_path / "r.xml")
    assert (r["passed"], r["skipped"], r["failed"], r["error"]) == (1, 1, 1, 0)
    assert r["cases"][0] == {"test": "tests.test_cuda::a", "outcome": "passed", "seconds": 1.5}


def test_the_cuda_marker_is_registered():
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("cuda:") for m in markers)


def test_every_gpu_check_command_in_the_readme_parses():
    """Each `.ci/gpu-check ...` line of README.md: its sub-command and flags are ones the script's --help lists."""
    import re
    import subprocess
    import sys

    lines = re.findall(r"\.ci/gpu-check( [^`#\n]*)?(?:#|\n|`)", (ROOT / "README.md").read_text())
    words = [line.split() for line in lines]  # [] for the plain run: its --help must answer too
    assert any(w[:1] == ["download"] for w in words), "README shows no download step"
    for w in words:
        sub = ["download"] if w[:1] == ["download"] else []
        usage = subprocess.run([sys.executable, str(ROOT / ".ci" / "gpu-check"), *sub, "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
        for flag in (x for x in w if x.startswith("--")):
            assert flag in usage, (w, flag)
