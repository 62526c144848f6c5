"""The project's own promises: README commands, CI script, import cost."""

import re
import subprocess
import sys

from conftest import ROOT


def _readme_commands():
    return re.findall(r"```bash\n# \d\..*\n(.+)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_quickstart_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert "streamlit run streamlit_app.py" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci


def test_import_is_cheap_on_top_of_torch():
    """`import ar_core` must not drag in torchvision, safetensors, PIL or Streamlit."""
    code = ("import sys, time, torch; t = time.perf_counter(); import ar_core; dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torchvision', 'streamlit', 'PIL', 'matplotlib', 'captum') if m in sys.modules]; "
            "print(dt, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    dt, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(dt) < 1.0


def test_ar_core_has_no_streamlit_imports():
    for path in (ROOT / "ar_core").rglob("*.py"):
        assert "import streamlit" not in path.read_text(), path


def test_ar_core_never_imports_the_app():
    """The layering is entry → app → ar_core: no module of the core names the app, and importing
    every core module loads no ``app`` module."""
    import ast

    modules = sorted(p.stem for p in (ROOT / "ar_core").glob("*.py") if p.stem != "__init__")
    for path in (ROOT / "ar_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n == "app" or n.startswith("app.") for n in names), f"{path.name} imports {names}"
    code = ("import importlib, sys; [importlib.import_module('ar_core.' + m) for m in %r]; "
            "print([m for m in sys.modules if m == 'app' or m.startswith('app.')])" % modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_bench_quick_run(tmp_path):
    """The benchmark CLI runs end to end and writes its JSON (numbers themselves are not asserted)."""
    import json

    out = tmp_path / "not-yet" / "bench.json"  # its folder is made, not found missing after the measurements
    code = ("import torch; torch.set_num_threads(1); from ar_core.bench import main; "
            "main(['--quick', '--skip-training', '--device', 'cpu', '--out', %r])")
    subprocess.run([sys.executable, "-c", code % str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    cost = result["attention_cost"]
    assert len(cost) == 4 and all(r["gflops_attention"] > r["gflops_baseline"] for r in cost)
    assert result["inference_cpu"]["batch_images_per_s"] > 0
    assert result["faithfulness_cpu"]["images"] == 4 and result["faithfulness_cpu"]["images_per_s"] > 0
    assert "app" not in result and "inference_cuda" not in result


def test_app_bench_quick_run(tmp_path):
    """`python -m app.bench` times the page with AppTest; a display control never re-runs the model."""
    import json

    out = tmp_path / "app-bench.json"
    code = ("import torch; torch.set_num_threads(1); from app.bench import main; "
            "main(['--quick', '--skip-browser', '--out', %r])")
    subprocess.run([sys.executable, "-c", code % str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    app = json.loads(out.read_text())["apptest"]
    assert app["model_runs_on_control_change"] == 0
    assert app["first_upload_ms"] > 0 and app["upload_to_views_ms"] > 0 and app["display_control_rerun_ms"] > 0
    assert app["photos_uploaded"] == 1 and app["open_tab_with_photos_ms"] > 0


def test_streamlit_config_keeps_loopback_xsrf_and_upload_limit():
    import tomllib

    from ar_core.inference import MAX_UPLOAD_BYTES

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["address"] == "127.0.0.1"  # loopback unless the operator decides otherwise
    assert cfg["server"]["maxUploadSize"] * 1024 * 1024 == MAX_UPLOAD_BYTES
    assert cfg["client"]["showErrorDetails"] == "none"


def test_readme_python_blocks_run_as_written():
    """Every ```python block of README.md, in one fresh interpreter from the repository root."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    code = "\n".join(blocks)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_readme_inline_python_commands_run_and_print_what_the_prose_says():
    """Each `python -c "..."` of README.md's prose (wrapped over lines there) runs from the repository root."""
    snippets = [" ".join(code.split("\n")) for code in
                re.findall(r'`python -c "(.*?)"`', (ROOT / "README.md").read_text(), flags=re.S)]
    assert len(snippets) >= 2
    printed = {}
    for code in snippets:
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (code, run.stderr[-2000:])
        printed[code] = run.stdout
    (mcnemar,) = [out for code, out in printed.items() if "mcnemar_exact(108, 80)" in code]
    split_108_80, split_104_84 = map(float, mcnemar.split())
    assert split_108_80 < 0.05 and round(split_104_84, 2) == 0.17  # as the prose reads them


def test_every_cli_the_readme_names_answers_help():
    """`python -m X --help` for each module the README runs: each exists and its arguments parse."""
    modules = sorted(set(re.findall(r"python -m ((?:ar_core|app)\.\w+)", (ROOT / "README.md").read_text())))
    assert {"ar_core.train", "ar_core.evaluate", "ar_core.analyze", "ar_core.perturb", "ar_core.bench",
            "ar_core.convert"} <= set(modules)
    code = ("import runpy, sys\n"
            "for name in sys.argv[1:]:\n"
            "    sys.argv = [name, '--help']\n"
            "    try:\n"
            "        runpy.run_module(name, run_name='__main__', alter_sys=True)\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), (name, e.code)\n"
            "    else:\n"
            "        raise AssertionError(name + ' --help did not exit')\n"
            "    print('HELP-OK', name, flush=True)\n")
    run = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("HELP-OK")] == modules


def test_no_readme_training_command_writes_over_a_shipped_checkpoint():
    """The trainer writes over its --out: a command copied from README must not replace a shipped file."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [line for line in text.splitlines() if "ar_core.train " in line and "--out" in line]
    assert len(commands) >= 3
    outs = [re.search(r"--out\s+(\S+)", c).group(1) for c in commands]
    assert not [o for o in outs if o.startswith("checkpoints/")], outs


def test_every_method_citation_names_an_item_of_docs_method_md():
    """Docstrings cite docs/method.md by item number ([N] in attention.py): each cited item exists."""
    doc = (ROOT / "docs" / "method.md").read_text()
    items = {int(n) for n in re.findall(r"^(\d+)\. \*\*", doc, flags=re.M)}
    assert items == set(range(1, 12))
    cited = {}
    for path in [*(ROOT / "ar_core").rglob("*.py"), *(ROOT / "app").rglob("*.py")]:
        text = path.read_text()
        for n in re.findall(r"method\.md, item (\d+)", text):
            cited.setdefault(int(n), []).append(path.name)
        if path.name == "attention.py":
            assert "docs/method.md" in text
            for n in re.findall(r"\[(\d+)\]", text):
                cited.setdefault(int(n), []).append(path.name)
    assert cited and set(cited) <= items, {n: f for n, f in cited.items() if n not in items}


def test_streamlit_does_not_watch_the_virtual_environment():
    """No recursive inotify watch over the repository and its .venv, and no per-session polling."""
    import tomllib

    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none"
    assert ".venv" in server["folderWatchBlacklist"]
