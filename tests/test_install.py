"""`pip install .` on a copy of the repository gives `import ar_core` anywhere and the console command.

The install goes into a fresh virtual environment that sees this environment's packages (torch and
the rest) through a .pth file, so no download is needed: ``pip install --no-deps --no-build-isolation``.
"""

import re
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

COMMANDS = ("train", "evaluate", "analyze", "compare", "convert", "perturb", "bench", "card")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file() and not name.startswith("checkpoints/"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "venv" / site.split(str(venv) + "/", 1)[1] / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(src)], check=True, capture_output=True, cwd=tmp)
    return venv, tmp


def test_import_from_anywhere_is_the_installed_copy(installed):
    venv, tmp = installed
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import ar_core; print(ar_core.__file__)"],
                         capture_output=True, text=True, check=True, cwd=tmp).stdout.strip()
    assert out.startswith(str(venv)) and out.endswith("ar_core/__init__.py")


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z0-9-]*", help_text))


def _module_help(command: str, capsys) -> str:
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"ar_core.{command}").main(["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_console_command_runs_each_module(installed, capsys):
    venv, tmp = installed
    exe = venv / "bin" / "attend-rectify"
    top = subprocess.run([str(exe)], capture_output=True, text=True, cwd=tmp)
    assert top.returncode == 2 and all(c in top.stdout for c in COMMANDS)
    bad = subprocess.run([str(exe), "fly"], capture_output=True, text=True, cwd=tmp)
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr
    for command in COMMANDS:
        via_cli = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, cwd=tmp)
        assert via_cli.returncode == 0, (command, via_cli.stderr)
        assert f"usage: attend-rectify {command}" in via_cli.stdout
        options = _options(_module_help(command, capsys))
        assert len(options) >= 2 and _options(via_cli.stdout) == options, command  # --help and its own
