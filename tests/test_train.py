"""The trainer end to end on a tiny ImageFolder: learning, checkpoint metadata, exact resume, and
2-process DDP (CPU, gloo) checked step by step against a re-computation of its definition."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ar_core import ModelConfig, build_model, load_checkpoint
from ar_core import data as D
from ar_core import train as T
from ar_core.evaluate import evaluate
from ar_core.evaluate import main as evaluate_main
from conftest import ROOT
from test_data import make_image_folder

CLASSES = ("red", "green", "blue")
PER_CLASS = 16
VAL = 6
BATCH = 8
STEPS_PER_EPOCH = (len(CLASSES) * PER_CLASS - VAL) // BATCH  # 42 training images → 5 full batches
MODEL = ["--depth", "10", "--width", "1", "--attention-width", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "toy"
    make_image_folder(root, classes=CLASSES, per_class=PER_CLASS)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))


def _args(folder, out, *extra):
    return ["--data", str(folder), *MODEL, "--val-size", str(VAL), "--batch-size", str(BATCH), "--threads", "1",
            "--no-progress", "--amp", "off", "--out", str(out), *extra]


def _log(out):
    return [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]


def test_training_learns_and_writes_a_complete_checkpoint(folder, tmp_path):
    out = tmp_path / "run" / "model.safetensors"
    history = T.main(_args(folder, out, "--epochs", "4"))["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["step"] == 4 * STEPS_PER_EPOCH
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert _log(out) == history

    model, meta = load_checkpoint(out)
    assert model.config == ModelConfig(num_classes=3, depth=10, width=1, attention_width=2)
    assert meta["classes"] == sorted(CLASSES)
    full = D.load_image_folder(folder)
    x = full.images.float() / 255  # "toy" has no fixed statistics: its own mean/std
    assert meta["normalization"]["mean"] == pytest.approx(x.mean((0, 2, 3)).tolist())
    assert meta["normalization"]["std"] == pytest.approx(x.std((0, 2, 3)).tolist())
    assert meta["dataset"] == "toy" and meta["image_size"] == 32
    _, val_idx = D.stratified_split(full.labels, VAL, 0)
    assert meta["validation_split"] == {"size": VAL, "seed": 0, "method": "stratified",
                                        "train_size": len(CLASSES) * PER_CLASS - VAL,
                                        "train_digest": D.content_digest(full), "index_digest": D.index_digest(val_idx)}
    assert meta["recipe"]["epochs"] == 4 and meta["recipe"]["lr"] == 0.1 and meta["recipe"]["amp"] == "off"
    assert meta["epochs_trained"] == 4 and meta["processes"] == 1
    # The recorded accuracy is the one the evaluator (and so the app) reproduces: flip TTA by default.
    assert meta["test_time_augmentation"] == "flip"
    assert meta["val_accuracy_single_view"] == history[-1]["val_accuracy"]
    assert meta["val_accuracy"] == evaluate(model, full.subset(val_idx), meta, amp="off", tta="flip")["accuracy"]
    # the evaluator carves the same split from the training folder and reproduces the recorded figure
    r = evaluate_main(["--checkpoint", str(out), "--data", str(folder), "--validation-split", "--amp", "off",
                       "--json", "--no-progress"])
    assert r["n"] == VAL and r["accuracy"] == meta["val_accuracy"] and r["test_time_augmentation"] == "flip"
    assert meta["training_time_s"] >= 0 and meta["hardware"] and meta["torch"] == torch.__version__
    assert "code_commit" in meta
    assert meta["command"].startswith("python -m ar_core.train ") and "--epochs 4" in meta["command"]
    # No path of the training machine anywhere in the header: the data folder is named by content.
    assert str(folder) not in json.dumps(meta) and str(tmp_path) not in json.dumps(meta)
    assert "--data DATA" in meta["command"] and "data" not in meta["recipe"]
    assert meta["val_source_accuracy"].keys() == {"group1", "group2", "group3", "network", "fused"}
    assert meta["val_source_accuracy"]["fused"] == meta["val_accuracy"]
    assert meta["val_source_accuracy"]["network"] == meta["val_net_accuracy"]


# Every key the trainer writes into a checkpoint's metadata; a shipped header must hold exactly these.
TRAINER_META_KEYS = {
    "classes", "normalization", "image_size", "dataset", "validation_split", "recipe", "epochs_trained",
    "test_time_augmentation", "val_accuracy", "val_net_accuracy", "val_accuracy_single_view",
    "val_source_accuracy", "val_accuracy_raw_weights", "training_time_s", "hardware", "processes", "torch",
    "code_commit", "code_commits", "command", "val_accuracy_by_tta", "saved_weights",
}


def header_meta(path) -> dict:
    """The metadata JSON exactly as stored (the loader adds ``config`` and ``weights_sha256``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


def test_the_trainer_writes_exactly_the_documented_header_keys(folder, tmp_path):
    out = tmp_path / "keys" / "model.safetensors"
    T.main(_args(folder, out, "--epochs", "1", "--max-steps", "2"))
    assert set(header_meta(out)) == TRAINER_META_KEYS


def test_training_without_tta_records_single_view_accuracy(folder, tmp_path):
    out = tmp_path / "plain" / "model.safetensors"
    history = T.main(_args(folder, out, "--epochs", "1", "--tta", "none"))["history"]
    meta = load_checkpoint(out)[1]
    assert meta["test_time_augmentation"] == "none"
    assert meta["val_accuracy"] == meta["val_accuracy_single_view"] == history[-1]["val_accuracy"]


def test_compile_wraps_the_training_forward_only(folder, tmp_path, monkeypatch):
    """--compile hands the training module to torch.compile; the saved weights come from the eager model.

    torch.compile itself is replaced by a recording identity here (compiling takes about a minute;
    the benchmark measures the real thing), so the run must equal the one without --compile.
    """
    seen = []
    monkeypatch.setattr(T.torch, "compile", lambda module, **kw: seen.append(module) or module)
    plain = tmp_path / "plain" / "m.safetensors"
    T.main(_args(folder, plain, "--epochs", "1", "--max-steps", "2"))
    assert not seen
    comp = tmp_path / "compiled" / "m.safetensors"
    T.main(_args(folder, comp, "--epochs", "1", "--max-steps", "2", "--compile"))
    assert len(seen) == 1 and isinstance(seen[0], torch.nn.Module)
    a, b = load_checkpoint(plain)[0], load_checkpoint(comp)[0]
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name
    assert load_checkpoint(comp)[1]["recipe"]["compile"] is True


def test_resume_continues_exactly(folder, tmp_path):
    """3 epochs in one go == 2 epochs, stopped, then resumed to 3: bit-identical weights."""
    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, "--epochs", "3"))
    split = tmp_path / "split" / "m.safetensors"
    first = T.main(_args(folder, split, "--epochs", "3", "--max-steps", str(2 * STEPS_PER_EPOCH)))["history"]
    assert [h["epoch"] for h in first] == [1, 2]
    state = split.with_name(split.name + ".state.safetensors")
    assert state.is_file() and str(folder) not in state.read_bytes().decode("latin-1")  # no local paths: it may be shared
    log = split.with_name(split.name + ".log.jsonl")  # stopped after logging epoch 3 but before saving its state
    log.write_text(log.read_text() + json.dumps({**first[-1], "epoch": 3}) + "\n")
    second = T.main(_args(folder, split, "--epochs", "3", "--resume"))["history"]
    assert [h["epoch"] for h in second] == [3] and second[0]["step"] == 3 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in _log(split)] == [1, 2, 3]

    a, meta_a = load_checkpoint(whole)
    b, meta_b = load_checkpoint(split)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name
    assert meta_b["epochs_trained"] == 3 and meta_b["val_accuracy"] == meta_a["val_accuracy"]
    assert [c["from_epoch"] for c in meta_b["code_commits"]] == [1, 3]  # which code trained which epochs
    assert meta_b["code_commit"] == meta_b["code_commits"][-1]["commit"]

    with pytest.raises(SystemExit, match="--epochs 3"):  # another schedule cannot continue this state
        T.main(_args(folder, split, "--epochs", "4", "--resume"))
    # nor another model or optimiser: each differing flag is named, before any weights load
    with pytest.raises(SystemExit, match=r"made with --attention-depth 3 \(now 1\), --lr 0\.1 \(now 0\.5\); "
                                         r"resume with the same recipe"):
        T.main(_args(folder, split, "--epochs", "3", "--resume", "--attention-depth", "1", "--lr", "0.5"))


def test_a_run_stopped_inside_an_epoch_resumes_from_its_last_batch_exactly(folder, tmp_path, capsys):
    """A state saved inside an epoch (--save-every) holds where the epoch stopped: resumed from it, the run
    ends bit-identical to an uninterrupted one, augmentation, dropout masks, the moving average and the
    epoch's logged loss included."""
    recipe = ["--epochs", "2", "--dropout", "0.3", "--ema", "0.9", "--ema-bn-images", "16"]
    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, *recipe, "--save-every", "0"))
    split = tmp_path / "split" / "m.safetensors"
    # a save after every batch, and a stop after batch 2 of epoch 2 (as if the machine went away there)
    T.main(_args(folder, split, *recipe, "--save-every", "1e-9", "--max-steps", str(STEPS_PER_EPOCH + 2)))
    capsys.readouterr()
    second = T.main(_args(folder, split, *recipe, "--resume"))["history"]
    assert f"resuming inside epoch 2 of 2, after its batch 2 of {STEPS_PER_EPOCH}," in capsys.readouterr().err
    assert [h["epoch"] for h in second] == [2] and second[0]["step"] == 2 * STEPS_PER_EPOCH

    (a, meta_a), (b, meta_b) = load_checkpoint(whole), load_checkpoint(split)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name
    log_a, log_b = _log(whole), _log(split)
    assert [h["epoch"] for h in log_b] == [1, 2]
    for key in ("train_loss", "lr", "val_accuracy", "val_accuracy_raw", "val_nll"):
        assert [h[key] for h in log_b] == [h[key] for h in log_a], key
    stretches = meta_b["code_commits"]
    assert [(c["from_epoch"], c.get("from_step")) for c in stretches] == [(1, None), (2, STEPS_PER_EPOCH + 3)]


def test_a_state_saved_inside_an_epoch_holds_the_generators_and_the_epoch_so_far(folder, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--save-every", "1e-9", "--max-steps", "3"))
    with safe_open(str(out.with_name(out.name + ".state.safetensors")), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        generators = {k: f.get_tensor(k) for k in f.keys() if k.startswith("rng.")}
    assert (state["epoch"], state["step"]) == (0, 3)
    assert state["in_epoch"]["batches"] == 3 and state["in_epoch"]["seen"] == 3 * BATCH
    assert state["in_epoch"]["loss_sum"] > 0 and state["in_epoch"]["time_s"] > 0
    assert set(generators) == {"rng.augment", "rng.torch"} and all(g.dtype == torch.uint8 for g in generators.values())
    assert "save_every" not in state["args"]  # how often a run saves does not shape the model


def test_each_stretch_of_a_resumed_run_records_its_precision_and_machine(folder, tmp_path, capsys):
    """A run resumed on a CPU without native bf16 trains on in float32 under --amp auto: the card must say
    which epochs trained at which precision, and the resume says so when it happens."""
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--max-steps", str(STEPS_PER_EPOCH), "--amp", "on"))
    capsys.readouterr()
    T.main(_args(folder, out, "--epochs", "2", "--resume"))  # --amp off
    assert "epochs up to 1 trained in bfloat16, the rest trains in float32" in capsys.readouterr().err
    stretches = load_checkpoint(out)[1]["code_commits"]
    assert [(c["from_epoch"], c["precision"]) for c in stretches] == [(1, "bfloat16"), (2, "float32")]
    assert all(c["hardware"] == T.hardware(torch.device("cpu")) for c in stretches)
    assert stretches[0]["hardware"].endswith(("threads, native bf16", "threads, no native bf16"))
    T.main(_args(folder, tmp_path / "same" / "m.safetensors", "--epochs", "2", "--max-steps", str(STEPS_PER_EPOCH)))
    T.main(_args(folder, tmp_path / "same" / "m.safetensors", "--epochs", "2", "--resume"))
    assert "warning" not in capsys.readouterr().err  # same precision: nothing to say


def test_a_run_stopped_before_writing_its_checkpoint_finishes_on_resume(folder, tmp_path):
    """Every epoch trained and its state saved, then stopped before the checkpoint was written:
    --resume trains nothing and writes the checkpoint the uninterrupted run wrote."""
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16"))
    model_a, meta_a = load_checkpoint(out)
    out.unlink()
    assert T.main(_args(folder, out, "--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16",
                        "--resume"))["history"] == []
    model_b, meta_b = load_checkpoint(out)
    for (name, ta), (_, tb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(ta, tb), name
    for key in ("epochs_trained", "val_accuracy", "val_accuracy_by_tta", "val_source_accuracy",
                "val_accuracy_raw_weights", "saved_weights", "code_commits"):
        assert meta_b[key] == meta_a[key], key
    assert meta_b["epochs_trained"] == 2 and meta_b["val_accuracy"] is not None
    assert [h["epoch"] for h in _log(out)] == [1, 2]


def test_a_stop_between_the_state_files_renames_resumes_exactly(folder, tmp_path, monkeypatch):
    """The moving average and the state are two files: a stop after the average's new file is in place
    but before the state's is must leave a pair that resumes, to the uninterrupted run's weights."""
    recipe = ["--epochs", "2", "--ema", "0.9", "--ema-bn-images", "16", "--save-every", "0"]
    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, *recipe))
    split = tmp_path / "split" / "m.safetensors"
    replace = Path.replace
    saves = []

    def stop_at_the_second_state_rename(self, target):
        if self.name == "m.safetensors.state.safetensors.tmp":
            saves.append(self)
            if len(saves) == 2:
                raise KeyboardInterrupt("the machine went away")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", stop_at_the_second_state_rename)
    with pytest.raises(KeyboardInterrupt):
        T.main(_args(folder, split, *recipe))
    monkeypatch.setattr(Path, "replace", replace)
    assert T.averaged_state_path(split.with_name(split.name + ".state.safetensors")).is_file()
    assert [h["epoch"] for h in T.main(_args(folder, split, *recipe, "--resume"))["history"]] == [2]
    (a, _), (b, _) = load_checkpoint(whole), load_checkpoint(split)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name
    assert not list(split.parent.glob("*.prev"))  # the kept average goes once the new state is in place


def test_two_stops_in_a_row_between_the_renames_still_resume_exactly(folder, tmp_path, monkeypatch):
    """A run resumed from the kept average, then stopped again at the same point of its next save, must
    not have moved the only matching average out of the way."""
    recipe = ["--epochs", "3", "--ema", "0.9", "--ema-bn-images", "16", "--save-every", "0"]
    whole = tmp_path / "whole" / "m.safetensors"
    T.main(_args(folder, whole, *recipe))
    split = tmp_path / "split" / "m.safetensors"
    replace = Path.replace

    def stopping_at(n):
        saves = []

        def stop(self, target):
            if self.name == "m.safetensors.state.safetensors.tmp":
                saves.append(self)
                if len(saves) == n:
                    raise KeyboardInterrupt("the machine went away")
            return replace(self, target)
        return stop

    monkeypatch.setattr(Path, "replace", stopping_at(2))  # at the end of epoch 2
    with pytest.raises(KeyboardInterrupt):
        T.main(_args(folder, split, *recipe))
    monkeypatch.setattr(Path, "replace", stopping_at(1))  # resumed, at the end of epoch 2 again
    with pytest.raises(KeyboardInterrupt):
        T.main(_args(folder, split, *recipe, "--resume"))
    monkeypatch.setattr(Path, "replace", replace)
    assert [h["epoch"] for h in T.main(_args(folder, split, *recipe, "--resume"))["history"]] == [2, 3]
    (a, _), (b, _) = load_checkpoint(whole), load_checkpoint(split)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name


def test_a_log_line_cut_short_by_a_stop_does_not_block_the_resume(folder, tmp_path):
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--max-steps", str(STEPS_PER_EPOCH)))
    log = out.with_name(out.name + ".log.jsonl")
    log.write_text(log.read_text() + '{"epoch": 2, "step": 1')
    T.main(_args(folder, out, "--epochs", "2", "--resume"))
    assert [h["epoch"] for h in _log(out)] == [1, 2]


def test_the_gradient_scaler_resumes_from_its_scale(tmp_path):
    """float16 training's loss scale is learnt over thousands of steps; a resume must not start over."""
    model = build_model(ModelConfig(num_classes=3, depth=10, width=1, attention_width=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 37})
    path = tmp_path / "m.safetensors.state.safetensors"
    T.save_state(path, model, optimizer, scheduler, {"epoch": 1, "step": 5}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    T.load_state(path, model, optimizer, scheduler, scaler=fresh)
    assert fresh.get_scale() == 512.0 and fresh.state_dict()["_growth_tracker"] == 37


def test_resume_refuses_another_probe_seed(folder, tmp_path):
    """The probe images are drawn by --probe-seed: a history that changed them mid-run would show other
    images' maps as one image's."""
    out = tmp_path / "run" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "2", "--max-steps", str(STEPS_PER_EPOCH)))
    with pytest.raises(SystemExit, match=r"--probe-seed 0 \(now 1\)"):
        T.main(_args(folder, out, "--epochs", "2", "--resume", "--probe-seed", "1"))


def test_a_stretch_trained_from_an_edited_tree_says_so(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "model.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "model.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (repo / "notes.txt").write_text("untracked files are not code that trained\n")
    assert not T.code_modified(repo)
    (repo / "model.py").write_text("x = 2\n")
    assert T.code_modified(repo)
    assert not T.code_modified(tmp_path / "no-repo-here")  # no git: nothing to compare with


def test_resume_says_what_it_found(folder, tmp_path, capsys):
    out = tmp_path / "fresh" / "m.safetensors"
    T.main(_args(folder, out, "--epochs", "1", "--max-steps", "1", "--resume"))
    assert "no state at" in capsys.readouterr().err
    old = tmp_path / "old" / "m.safetensors"
    old.parent.mkdir()
    old.with_name(old.name + ".state.pt").write_bytes(b"\x80\x04not read")
    with pytest.raises(SystemExit, match="pickle state of an older version"):
        T.main(_args(folder, old, "--epochs", "1", "--resume"))


# ---------------------------------------------------------------- DDP

def _replay(folder, meta, epochs: int, world: int) -> dict[str, torch.Tensor]:
    """What ``world`` data-parallel processes compute, re-done in this process, in the trainer's order.

    Each step: every process takes its slice of the same augmented global batch, and the update
    uses the mean of the per-slice gradients (DDP's all-reduce). BatchNorm sees only its own
    slice, and rank 0's running statistics, computed from slice 0 alone, are the ones saved.
    """
    full = D.load_image_folder(folder)
    train_idx, val_idx = D.stratified_split(full.labels, VAL, 0)
    assert len(val_idx) == meta["validation_split"]["size"]
    train = full.subset(train_idx)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(meta["config"])).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    total = STEPS_PER_EPOCH * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: T.lr_factor(s, total, STEPS_PER_EPOCH, "onecycle", [], STEPS_PER_EPOCH))
    params = list(model.parameters())
    local = BATCH // world
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))
        aug = torch.Generator().manual_seed(epoch + 10**6)
        for i in range(STEPS_PER_EPOCH):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            x_all = D.normalize(D.augment(train.images[idx], aug), mean, std)
            y_all = train.labels[idx]
            grads, rank0_buffers = [], None
            for rank in range(world):
                x = x_all[rank * local:(rank + 1) * local].contiguous(memory_format=torch.channels_last)
                model.zero_grad(set_to_none=True)
                output, reg = model(x)
                (T.nll_with_smoothing(output.float(), y_all[rank * local:(rank + 1) * local], 0.0) + reg).backward()
                grads.append([p.grad.clone() for p in params])
                if rank == 0:
                    rank0_buffers = {n: b.clone() for n, b in model.named_buffers()}
            for k, p in enumerate(params):
                p.grad = sum(g[k] / world for g in grads)
            for n, b in model.named_buffers():
                b.copy_(rank0_buffers[n])
            opt.step()
            sched.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_on_cpu(folder, tmp_path):
    epochs = 2
    ddp_out = tmp_path / "ddp" / "m.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AR_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "ar_core.train", *_args(folder, ddp_out, "--epochs", str(epochs), "--dropout", "0")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ddp_out.is_file()
    single_out = tmp_path / "single" / "m.safetensors"
    T.main(_args(folder, single_out, "--epochs", str(epochs), "--dropout", "0"))

    ddp_model, ddp_meta = load_checkpoint(ddp_out)
    single_model, single_meta = load_checkpoint(single_out)
    ddp_log, single_log = _log(ddp_out), _log(single_out)
    # What must agree: the schedule, the data split, the recorded recipe; both runs learn.
    assert ddp_meta["processes"] == 2 and single_meta["processes"] == 1
    assert [r["step"] for r in ddp_log] == [r["step"] for r in single_log] == [5, 10]
    assert ddp_meta["validation_split"] == single_meta["validation_split"]
    assert ddp_meta["classes"] == single_meta["classes"] and ddp_meta["normalization"] == single_meta["normalization"]
    assert ddp_meta["recipe"] == single_meta["recipe"]
    assert ddp_log[-1]["train_loss"] < ddp_log[0]["train_loss"]
    assert single_log[-1]["train_loss"] < single_log[0]["train_loss"]

    # What differs, and only through BatchNorm: a batch of 8 normalised as two halves of 4. Replaying
    # both runs here shows each is exactly its definition, the DDP one as the mean of per-half gradients
    # (bit-exact: the same kernels on one thread, and halving then summing two gradients is exact).
    for model, meta, world in ((single_model, single_meta, 1), (ddp_model, ddp_meta, 2)):
        want = _replay(folder, meta, epochs, world)
        got = model.state_dict()
        for name, tensor in want.items():
            assert torch.equal(got[name], tensor), f"{world} process(es): {name}"
    differs = [n for n, t in ddp_model.state_dict().items()
               if t.is_floating_point() and not torch.equal(t, single_model.state_dict()[n])]
    assert differs  # the two runs are not the same computation


def test_best_tta_is_chosen_on_validation_and_every_one_recorded(folder, tmp_path):
    from ar_core.tta import NAMES

    out = tmp_path / "best" / "model.safetensors"
    history = T.main(_args(folder, out, "--epochs", "2", "--tta", "best"))["history"]
    model, meta = load_checkpoint(out)
    by = meta["val_accuracy_by_tta"]
    assert list(by) == list(NAMES) and by["none"] == history[-1]["val_accuracy"] == meta["val_accuracy_single_view"]
    best = max(by.values())
    assert meta["test_time_augmentation"] == next(n for n in NAMES if by[n] == best)  # ties: the cheapest
    assert meta["val_accuracy"] == best
    full = D.load_image_folder(folder)
    val = full.subset(D.stratified_split(full.labels, VAL, 0)[1])
    assert {n: evaluate(model, val, meta, amp="off", tta=n)["accuracy"] for n in NAMES} == by


@pytest.mark.parametrize("decay", [0.9999, 0.5])
def test_the_moving_average_is_shipped_only_when_it_beats_the_raw_weights(folder, tmp_path, decay):
    out = tmp_path / f"ema{decay}" / "model.safetensors"
    last = T.main(_args(folder, out, "--epochs", "3", "--ema", str(decay), "--ema-bn-images", "16",
                        "--tta", "none"))["history"][-1]
    model, meta = load_checkpoint(out)
    raw_wins = last["val_accuracy_raw"] > last["val_accuracy"]
    if decay == 0.9999:  # an average that has barely left the first step's weights loses to the trained ones
        assert raw_wins
    assert meta["saved_weights"] == ("raw" if raw_wins else "moving average")
    assert meta["val_accuracy"] == max(last["val_accuracy_raw"], last["val_accuracy"])
    # the header's raw-weights figure is the raw weights' whatever was saved (the card relies on it)
    assert meta["val_accuracy_raw_weights"] == last["val_accuracy_raw"]
    full = D.load_image_folder(folder)
    val = full.subset(D.stratified_split(full.labels, VAL, 0)[1])
    assert evaluate(model, val, meta, amp="off")["accuracy"] == meta["val_accuracy"]


def test_torchvision_data_refuses_another_image_size(tmp_path, capsys):
    """CIFAR from torchvision is 32x32: a checkpoint must not record 64 for it (the app would upsample inputs)."""
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--torchvision", "cifar10", "--image-size", "64", "--out", str(tmp_path / "m.safetensors")])
    assert e.value.code == 2 and "--image-size 64 needs --data DIR" in capsys.readouterr().err
    assert T.parse_args(["--torchvision", "cifar10", "--out", str(tmp_path / "m.safetensors")]).image_size == 32
