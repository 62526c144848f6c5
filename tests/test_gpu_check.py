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


def test_download_leaves_out_what_the_gpu_machine_has(gpu_check, tmp_path, monkeypatch):
    """`download --have`: a package the GPU machine lists (any spelling, any version) is neither fetched nor listed."""
    calls = []
    monkeypatch.setattr(gpu_check, "run", lambda cmd, **kw: calls.append(cmd))
    have = tmp_path / "have.txt"
    have.write_text("# pip freeze there\nNumPy==2.5.2\nsafetensors==0.8.0\npytest_timeout==2.0\n")
    gpu_check.download(tmp_path / "w", "3.12", have)
    listed = [l.split("==")[0].lower() for l in (tmp_path / "w" / gpu_check.LIST).read_text().split()]
    assert "numpy" not in listed and "safetensors" not in listed
    assert "streamlit" in listed and "captum" in listed  # what the machine lacks still travels
    assert calls and "-r" in calls[0]


def test_the_trainer_step_runs_and_reports_its_epochs(gpu_check, tmp_path):
    """The check's trainer run, as `--dry-run` does it on a CPU: one capped step, its log read back."""
    r = gpu_check.train_run(tmp_path, dry_run=True)
    assert r["exit_code"] == 0, r
    assert [e["epoch"] for e in r["epochs"]] == [1]
    assert r["epochs"][0]["images_per_s"] > 0
    assert (tmp_path / "run" / "random.safetensors").is_file()
