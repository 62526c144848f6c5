"""Train a gated-attention Wide ResNet (or its AD=0 baseline) and write a safetensors checkpoint.

    python -m ar_core.train --data ~/data/cifar10 --dataset-name cifar10 --epochs 30 \
        --attention-depth 3 --attention-width 4 --out checkpoints/cifar10-wrn16x4-ad3aw4.safetensors

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N -m ar_core.train ...`` (DistributedDataParallel;
``--batch-size`` is the global batch). Resumable state is saved every epoch next to ``--out``
(``OUT.state.safetensors``, with ``--ema`` the average in ``OUT.ema.state.safetensors``: tensors, and JSON
for the rest; no pickle), and inside an epoch every ``--save-every`` minutes (one process); ``--resume``
continues it, from the batch where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as D
from .checkpoint import save_checkpoint
from .model import ModelConfig, build_model
from .precision import autocast_for, device_arg, native_bf16, pick_device
from .tta import NAMES as TTA_NAMES
from .tta import TTA, TTALike


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("data")
    src.add_argument("--data", help="ImageFolder tree root/<class>/<image> (the training split)")
    src.add_argument("--torchvision", choices=["cifar10", "cifar100"], help="use torchvision's CIFAR instead")
    src.add_argument("--root", default=str(D.cache_dir() / "torchvision"), help="download folder for --torchvision")
    src.add_argument("--dataset-name", default=None, help="name recorded in the checkpoint (and normalisation "
                     "stats for cifar10/cifar100; other sets use their own mean/std)")
    src.add_argument("--val-size", type=int, default=5000, help="stratified validation images carved from train")
    src.add_argument("--split-seed", type=int, default=0)
    src.add_argument("--image-size", type=int, default=32)
    m = p.add_argument_group("model")
    m.add_argument("--depth", type=int, default=16)
    m.add_argument("--width", type=int, default=4)
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--attention-depth", type=int, default=3)
    m.add_argument("--attention-width", type=int, default=4)
    m.add_argument("--kernel-size", type=int, default=1, choices=[1, 3])
    m.add_argument("--reg-weight", type=float, default=1e-3)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--lr", type=float, default=0.1)
    o.add_argument("--schedule", choices=["onecycle", "step"], default="onecycle",
                   help="onecycle: linear warm-up then cosine to 0; step: x0.2 at --milestones (paper)")
    o.add_argument("--warmup", type=float, default=1.0, help="warm-up epochs (onecycle)")
    o.add_argument("--milestones", type=int, nargs="*", default=[60, 120, 160])
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--cutout", type=int, default=0, help="side of the square blanked in each training image (0: none)")
    o.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights (0: none); the average, with "
                        "BatchNorm statistics recomputed for it, is then the model validated and saved")
    o.add_argument("--ema-bn-images", type=int, default=5120,
                   help="augmented training images used to recompute the averaged model's BatchNorm statistics")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--tta", choices=[*TTA_NAMES, "best"], default="flip",
                   help="test-time augmentation the checkpoint is evaluated with (by the evaluator, the analysis "
                        "and the app): flip averages each image with its mirror image, shiftN adds the image moved "
                        "by up to N pixels; best: the one with the highest validation accuracy (ties: the cheapest). "
                        "Every one's validation accuracy is recorded")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="final checkpoint (.safetensors)")
    r.add_argument("--resume", action="store_true", help="continue from OUT.state.safetensors")
    r.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    r.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast on CPU (when supported) / fp16 on CUDA")
    r.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward (compiles once, ~30 s on 2 CPU threads; then faster steps)")
    r.add_argument("--save-dtype", choices=["float32", "float16"], default="float32")
    r.add_argument("--save-every", type=float, default=10.0, metavar="MINUTES",
                   help="also save the resumable state inside an epoch this often, so a stopped run loses at most "
                        "this much (0: at epoch ends only; runs of several processes save at epoch ends only)")
    r.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-history", action="store_true",
                   help="do not record OUT's training history (probe traces and per-source accuracy each epoch)")
    r.add_argument("--probe-seed", type=int, default=0, help="seed choosing the history's probe images")
    args = p.parse_args(argv)
    if bool(args.data) == bool(args.torchvision):
        p.error("give exactly one of --data DIR or --torchvision cifar10|cifar100")
    if args.torchvision and args.image_size != 32:  # the checkpoint would record a size its images never had
        p.error(f"torchvision's CIFAR images are 32x32; --image-size {args.image_size} needs --data DIR")
    return args


def nll_with_smoothing(output: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """NLL of the fused log-scores (docs/method.md, item 8), optionally label-smoothed."""
    nll = F.nll_loss(output, target)
    if smoothing <= 0:
        return nll
    return (1 - smoothing) * nll - smoothing * output.mean(dim=1).mean()


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[int], steps_per_epoch: int) -> float:
    if schedule == "step":
        epoch = step // steps_per_epoch
        return 0.2 ** sum(epoch >= m for m in milestones)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# Arguments that say where things were on the training machine, not how the model was trained.
_LOCAL_ARGS = ("data", "root", "out", "resume", "no_progress", "device", "threads", "save_every")


def recipe(args: argparse.Namespace) -> dict:
    """The training recipe as a JSON object: every argument that shapes the model, no local paths."""
    return {k: v for k, v in vars(args).items() if k not in _LOCAL_ARGS}


def command_line(argv: list[str]) -> str:
    """The training command without this machine's paths: the data folder becomes DATA, an absolute
    ``--out`` its file name."""
    local = {"--data": lambda v: "DATA", "--root": lambda v: "DATA",
             "--out": lambda v: Path(v).name if Path(v).is_absolute() else v}
    words, rest = [], iter(argv)
    for w in rest:
        flag, eq, value = w.partition("=")
        if eq and flag in local:
            words.append(f"{flag}={local[flag](value)}")
        elif w in local:
            words += [w, local[w](next(rest, ""))]
        else:
            words.append(w)
    return "python -m ar_core.train " + " ".join(words)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def code_modified(where: Path = Path(__file__).parent) -> bool:
    """Whether the tracked files under ``where`` (the library) differ from the commit: a run started from
    an edited tree trained with code no commit holds, which its card must say."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                                   capture_output=True, text=True, check=True, cwd=where).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return False


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # Two CPUs of one model name may differ in what sets the precision of --amp auto: say which.
    return f"{cpu}, {torch.get_num_threads()} threads, {'native' if native_bf16() else 'no native'} bf16"


def averaged_state_path(path: Path) -> Path:
    """Where :func:`save_state` keeps the moving average: OUT.ema.state.safetensors beside OUT.state.safetensors."""
    return path.with_name(path.name.replace(".state.safetensors", ".ema.state.safetensors"))


def save_state(path: Path, model, optimizer, scheduler, info: dict, ema=None,
               generators: dict[str, torch.Tensor] | None = None, scaler=None) -> None:
    """Resumable state as safetensors: weights and optimizer buffers as tensors, the rest as JSON.

    ``generators``: random generators' states (uint8 tensors) of a state saved inside an epoch, which
    the rest of that epoch's augmentation and dropout continue from. ``scaler``: float16 training's
    gradient scaler, whose scale a resumed run must start from rather than relearn.

    The moving average goes to its own file (:func:`averaged_state_path`), so that neither file is much
    larger than the weights twice over (a repository that keeps them can cap file sizes). Both name their
    epoch and step. Both are written in full to temporary files before either is renamed, and the replaced
    average is kept as ``….prev`` until the new state is in place: a stop at any point leaves a pair that
    :func:`load_state` can match.
    """
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars = {}
    for i, per_param in opt["state"].items():
        for k, v in per_param.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{i}.{k}"] = v
            else:
                scalars[f"{i}.{k}"] = v
    tensors.update({f"rng.{k}": v for k, v in (generators or {}).items()})
    header = {"param_groups": opt["param_groups"], "optimizer_scalars": scalars,
              "scheduler": scheduler.state_dict(), **info}
    if scaler is not None:
        header["grad_scaler"] = scaler.state_dict()
    files = [(path, tensors, {"state": json.dumps(header)})]
    if ema is not None:
        at = json.dumps({k: info.get(k) for k in ("epoch", "step")})
        files.insert(0, (averaged_state_path(path), {f"ema.{k}": v for k, v in ema.state_dict().items()}, {"at": at}))
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for target, content, metadata in files:
        tmp = target.with_name(target.name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in content.items()}, str(tmp), metadata=metadata)
        written.append((tmp, target))
    side = averaged_state_path(path)
    previous = _previous(side)
    if ema is not None and side.is_file():
        side.replace(previous)  # the state still on disk names this one until the new state replaces it
    for tmp, target in written:
        tmp.replace(target)
    previous.unlink(missing_ok=True)


def _previous(side: Path) -> Path:
    return side.with_name(side.name + ".prev")


# What a resumed run may change: how and where it runs, and what is done once at the end. Every other
# argument of the recipe shapes the data, the model or the schedule and must be repeated.
_RESUMABLE_CHANGES = ("tta", "amp", "compile", "save_dtype", "max_steps", "no_history")


def check_resumable(path: Path, args: argparse.Namespace) -> None:
    """Refuse to resume the state at ``path`` with another recipe, naming each flag that differs (a resumed
    run's checkpoint records the recipe it was resumed with, and its schedule would be recomputed)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = json.loads(f.metadata()["state"])["args"]
    ours = recipe(args)
    changed = [k for k in ours if k in saved and k not in _RESUMABLE_CHANGES and saved[k] != ours[k]]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {_flag_value(saved[k])} (now {_flag_value(ours[k])})"
                          for k in changed)
        raise SystemExit(f"{path} was made with {flags}; resume with the same recipe, or train anew under "
                         f"another --out")


def trim_log(log_path: Path, epochs: int) -> dict:
    """Keep the log's records of the ``epochs`` a resumed state holds: a run stopped between logging an
    epoch and saving its state logged one more, and one stopped while writing a line left it cut short.
    Rewritten in one rename, so a stop here loses nothing; returns the last record kept."""
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a stop: its epoch is trained again
        if record["epoch"] <= epochs:
            kept.append(record)
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(log_path)
    return kept[-1] if kept else {}


def _flag_value(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def load_state(path: Path, model, optimizer, scheduler, ema=None, scaler=None) -> dict:
    """Restore what :func:`save_state` wrote; returns its JSON part (epoch, step, elapsed, args), and
    under ``generators`` the random generators' states it holds (none for a state of an epoch's end)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    side = averaged_state_path(path)
    if ema is not None and not any(k.startswith("ema.") for k in tensors):  # states before the split held it
        wanted = {k: header.get(k) for k in ("epoch", "step")}
        found = []  # a save stopped between its renames leaves the matching average as .prev
        for candidate in (side, _previous(side)):
            if candidate.is_file():
                with safe_open(str(candidate), framework="pt") as f:
                    at = json.loads(f.metadata()["at"])
                    if at == wanted:
                        tensors.update({k: f.get_tensor(k) for k in f.keys()})
                found.append(f"{candidate.name} (epoch {at['epoch']}, step {at['step']})")
                if at == wanted:
                    if candidate != side:  # made the pair again on disk: the next save moves side to .prev
                        candidate.replace(side)
                    break
        else:
            if found:
                raise SystemExit(f"no moving average beside {path} matches its epoch {wanted['epoch']}, step "
                                 f"{wanted['step']}: found {', '.join(found)}; remove them and the state to "
                                 f"start again")
    if ema is not None:
        averaged = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not averaged:
            raise SystemExit(f"{path} holds no averaged weights; resume with the --ema it was started with")
        ema.load_state_dict(averaged)
    per_param: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            i, name = k[len("optimizer."):].split(".", 1)
            per_param.setdefault(int(i), {})[name] = v
    for k, v in header.pop("optimizer_scalars").items():
        i, name = k.split(".", 1)
        per_param.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": per_param, "param_groups": header.pop("param_groups")})
    scheduler.load_state_dict(header.pop("scheduler"))
    if scaler is not None and header.get("grad_scaler"):
        scaler.load_state_dict(header.pop("grad_scaler"))
    header["generators"] = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return header


def generators(augment: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The states of the generators the rest of an epoch draws from: its augmentation's, and the global
    ones that draw dropout masks."""
    states = {"augment": augment.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_generators(states: dict[str, torch.Tensor], augment: torch.Generator, device: torch.device) -> None:
    augment.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


@torch.no_grad()
def evaluate_split(model, images, labels, mean, std, device, autocast, batch_size=500, tta: TTALike = "none") -> dict:
    """Accuracy of the fused output and of the network's own output on a uint8 split.

    ``tta``: with that test-time augmentation, as the evaluator and the app apply it.
    """
    aug = TTA.parse(tta)
    model.eval()
    correct = None  # per output: each attended layer's hypothesis, the network, the fused output
    gates = 0.0
    nll = 0.0
    for i in range(0, len(labels), batch_size):
        x = D.normalize(images[i:i + batch_size].to(device), mean, std).contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size].to(device)
        with autocast():
            t = model.trace(x, flip=aug.flip, shift=aug.shift)
        scores = [l.hypothesis for l in t.layers] + [t.net_output, t.output]
        hits = torch.stack([(s.argmax(1) == y).sum() for s in scores]).cpu()
        correct = hits if correct is None else correct + hits
        gates = gates + t.global_gates.float().sum(0).cpu()
        nll += F.cross_entropy(t.output.float(), y, reduction="sum").item()
    n = len(labels)
    acc = (correct.double() / n).tolist()
    return {"val_accuracy": acc[-1], "val_net_accuracy": acc[-2], "val_nll": nll / n,
            "val_source_accuracy": acc, "val_mean_global_gates": (gates / n).tolist()}


def recompute_bn_statistics(model, images, mean, std, device, autocast, seed: int, n: int, batch_size: int = 512):
    """BatchNorm statistics that match ``model``'s own weights (an averaged model's would otherwise be
    the average of the running statistics of other weights): a cumulative mean over ``n`` augmented
    training images, drawn by ``seed`` so a resumed run draws the same ones."""
    from torch.optim.swa_utils import update_bn

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:n]
    batches = [D.normalize(D.augment(images[idx[i:i + batch_size]], g).to(device), mean, std)
               .contiguous(memory_format=torch.channels_last) for i in range(0, len(idx), batch_size)]
    with autocast():
        update_bn(batches, model, device=device)


def main(argv=None) -> dict:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = pick_device(args.device)
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    main_process = rank == 0
    out = Path(args.out)
    state_path = out.with_name(out.name + ".state.safetensors")
    log_path = out.with_name(out.name + ".log.jsonl")

    # Data: decode once, carve the validation split, keep everything as uint8 tensors.
    full = D.load_image_folder(args.data, args.image_size) if args.data else \
        D.load_torchvision_cifar(args.torchvision, args.root, train=True)
    name = args.dataset_name or args.torchvision or Path(args.data).name
    if name in D.STATS:
        mean, std = D.STATS[name]
    else:
        x = full.images.float() / 255
        mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    train_idx, val_idx = D.stratified_split(full.labels, args.val_size, args.split_seed) if args.val_size \
        else (torch.arange(len(full)), torch.arange(0))
    train, val = full.subset(train_idx), full.subset(val_idx)
    # Names the training images by content, not by this machine's paths (see evaluate --validation-split).
    # "size" is the size asked for: the evaluator re-carves the split with it (per-class rounding can
    # carve a few images more or fewer).
    split_record = {"size": args.val_size, "seed": args.split_seed, "method": "stratified", "train_size": len(train),
                    "train_digest": D.content_digest(full), "index_digest": D.index_digest(val_idx)}

    config = ModelConfig(num_classes=len(full.classes), depth=args.depth, width=args.width, dropout=args.dropout,
                         attention_depth=args.attention_depth, attention_width=args.attention_width,
                         kernel_size=args.kernel_size, reg_weight=args.reg_weight)
    torch.manual_seed(args.seed)
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(train) // args.batch_size  # drop the last partial batch: BN needs a full one
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train)} training images are fewer than one batch of {args.batch_size}; "
                         f"lower --batch-size or --val-size")
    total_steps = steps_per_epoch * args.epochs
    warmup = round(args.warmup * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, args.schedule, args.milestones, steps_per_epoch))
    autocast, precision = autocast_for(device, args.amp)
    scaler = torch.amp.GradScaler("cuda") if precision == "float16" else None  # fp16 gradients need scaling
    ema = None
    if args.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=False)
    kept = ema.module if ema is not None else model  # the model validated, recorded and saved
    recorder = None
    if main_process and len(val) and not args.no_history:
        from .history import HistoryRecorder, history_path, probe_indices

        probes = probe_indices(val.labels, seed=args.probe_seed)
        recorder = HistoryRecorder(history_path(out), model.sources, full.classes, probes, val.labels[probes],
                                   {"probe_seed": args.probe_seed, "model": "ema" if ema is not None else "raw",
                                    "validation_split": split_record})

    start_epoch, elapsed, step = 0, 0.0, 0
    partial = None  # where a state saved inside an epoch stopped: its batches, their loss and time, the generators
    last_logged = {}  # the log's last epoch: what a run stopped after its last epoch finishes from
    # What trained each stretch of epochs: the code (read now, since the tree may change while training),
    # the precision and the machine. A run resumed elsewhere may train on at another precision ("auto"
    # is bf16 only on CPUs with native bf16), so each stretch records its own.
    commits = [{"from_epoch": 1, "commit": git_commit(), **({"modified": True} if code_modified() else {}),
                "precision": precision, "hardware": hardware(device)}]
    if args.resume and state_path.is_file():
        check_resumable(state_path, args)  # before any weights load: another model would fail on its shapes
        state = load_state(state_path, model, optimizer, scheduler, ema, scaler)
        start_epoch, elapsed, step = state["epoch"], state["elapsed"], state["step"]
        if state.get("in_epoch"):
            partial = {**state["in_epoch"], "generators": state["generators"]}
        current, commits = commits[0], state.get("code_commits", [])
        if start_epoch < args.epochs:  # a finished schedule only writes its checkpoint: no code trains it
            commits.append({**current, "from_epoch": start_epoch + 1, **({"from_step": step + 1} if partial else {})})
        if main_process:
            where = (f"inside epoch {start_epoch + 1} of {args.epochs}, after its batch {partial['batches']} of "
                     f"{steps_per_epoch}," if partial else f"after epoch {start_epoch} of {args.epochs}")
            print(f"resuming {where} from {state_path}", file=sys.stderr)
            before = commits[-2].get("precision") if len(commits) > 1 else None
            if start_epoch < args.epochs and before and before != precision:
                print(f"warning: epochs up to {start_epoch} trained in {before}, the rest trains in {precision} "
                      f"(--amp {args.amp} on {current['hardware']}); the card records both stretches",
                      file=sys.stderr)
        if recorder is not None:
            lacking = recorder.resume(start_epoch)
            if lacking:
                span = ", ".join(map(str, lacking)) if len(lacking) <= 4 else \
                    f"{lacking[0]}, {lacking[1]}, …, {lacking[-1]} ({len(lacking)} epochs)"
                print(f"warning: {recorder.path} lacks epoch{'s' * (len(lacking) > 1)} {span} of the {start_epoch} "
                      f"trained; the history goes on without them (only training again from the start records "
                      f"them)", file=sys.stderr)
        if main_process and log_path.is_file():
            last_logged = trim_log(log_path, start_epoch)
    elif args.resume:
        legacy = out.with_name(out.name + ".state.pt")
        if legacy.is_file():
            raise SystemExit(f"{legacy} is the pickle state of an older version, which is no longer read; "
                             f"start the run again without --resume")
        if main_process:
            print(f"no state at {state_path}: starting from epoch 1", file=sys.stderr)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:  # training steps only: validation and the saved weights use the eager model
        net = torch.compile(net)

    local_batch = args.batch_size // world
    history = []
    last_save = time.time()
    for epoch in range(start_epoch, args.epochs):
        # The epoch's order and augmentation depend only on (seed, epoch): resume replays them exactly.
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(train), generator=g)
        aug_g = torch.Generator().manual_seed(args.seed * 1000 + epoch + 10**6)
        torch.manual_seed(args.seed * 1000 + epoch + 2 * 10**6 + rank)  # dropout masks: replayed on resume too
        net.train()
        t0 = time.time()
        loss_sum = torch.zeros((), device=device)
        seen, first, earlier = 0, 0, 0.0
        if partial is not None:  # resumed inside this epoch: carry on from the batch after the saved one
            first, seen, earlier = partial["batches"], partial["seen"], partial["time_s"]
            loss_sum.fill_(partial["loss_sum"])
            set_generators(partial["generators"], aug_g, device)
            partial = None
        bar = range(first, steps_per_epoch)
        if main_process and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", dynamic_ncols=True,
                       initial=first, total=steps_per_epoch)
        for i in bar:
            # Every process augments the whole global batch alike and keeps its own slice, so N
            # processes see exactly the images one process would.
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = D.augment(train.images[idx], aug_g, cutout=args.cutout)[rank * local_batch:(rank + 1) * local_batch]
            x = D.normalize(x.to(device, non_blocking=True), mean, std).contiguous(memory_format=torch.channels_last)
            y = train.labels[idx][rank * local_batch:(rank + 1) * local_batch].to(device, non_blocking=True)
            with autocast():
                output, reg = net(x)
                loss = nll_with_smoothing(output.float(), y, args.label_smoothing) + reg
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            loss_sum += loss.detach()
            seen += len(y) * world
            if main_process and hasattr(bar, "set_postfix") and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (earlier + time.time() - t0):.0f}",
                                lr=f"{scheduler.get_last_lr()[0]:.4f}")
            if (args.save_every > 0 and not distributed and i + 1 < steps_per_epoch
                    and time.time() - last_save >= 60 * args.save_every):
                in_epoch = {"batches": i + 1, "seen": seen, "loss_sum": loss_sum.item(), "time_s": earlier + time.time() - t0}
                save_state(state_path, model, optimizer, scheduler,
                           {"epoch": epoch, "step": step, "elapsed": elapsed, "in_epoch": in_epoch,
                            "args": recipe(args), "code_commits": commits}, ema, generators(aug_g, device), scaler)
                last_save = time.time()
            if args.max_steps and step >= args.max_steps:
                break
        epoch_time = earlier + time.time() - t0
        elapsed += epoch_time
        finished = i + 1 == steps_per_epoch  # --max-steps may stop inside an epoch
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(loss_sum)
            loss_sum /= world
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum.item() / (i + 1),
                  "lr": scheduler.get_last_lr()[0], "epoch_time_s": round(epoch_time, 1),
                  "images_per_s": round(seen / epoch_time, 1)}
        if main_process:
            if ema is not None:
                recompute_bn_statistics(kept, train.images, mean, std, device, autocast,
                                        seed=args.seed * 1000 + epoch + 3 * 10**6, n=args.ema_bn_images)
            if len(val):
                figures = evaluate_split(kept, val.images, val.labels, mean, std, device, autocast)
                record.update(figures)
                if ema is not None:  # the raw weights' figure, to see what averaging gives
                    record["val_accuracy_raw"] = evaluate_split(model, val.images, val.labels, mean, std, device,
                                                                autocast)["val_accuracy"]
                if recorder is not None:
                    kept.eval()
                    with torch.no_grad(), autocast():
                        probe_x = D.normalize(val.images[probes].to(device), mean, std)
                        probe_trace = kept.trace(probe_x.contiguous(memory_format=torch.channels_last))
                    recorder.append(epoch + 1, probe_trace, figures["val_source_accuracy"],
                                    figures["val_mean_global_gates"])
            history.append(record)
            print(json.dumps(record), file=sys.stderr)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if finished:  # resumable state marks whole epochs only; a partial one would be skipped on resume
                save_state(state_path, model, optimizer, scheduler,
                           {"epoch": epoch + 1, "step": step, "elapsed": elapsed, "args": recipe(args),
                            "code_commits": commits}, ema, scaler=scaler)
                last_save = time.time()
        if args.max_steps and step >= args.max_steps:
            break

    if main_process:
        # a run stopped after saving its last epoch's state but before writing the checkpoint
        # trains nothing on --resume: its last logged epoch is the one the checkpoint reports
        final = history[-1] if history else last_logged
        chosen, by_tta, saved = ("flip" if args.tta == "best" else args.tta), {}, kept
        if len(val) and final:
            if ema is not None and final["val_accuracy_raw"] > final["val_accuracy"]:
                saved = model  # the average did not help on validation: ship the raw weights
                final = {**final, **evaluate_split(model, val.images, val.labels, mean, std, device, autocast)}
                print("the raw weights beat their moving average on validation: saving the raw weights",
                      file=sys.stderr)
            # every augmentation's figure, then the chosen one's in full: the figure the evaluator, the
            # analysis and the app reproduce
            figures = {name: evaluate_split(saved, val.images, val.labels, mean, std, device, autocast, tta=name)
                       for name in TTA_NAMES if name != "none"}  # "none" is the last epoch's own figure
            by_tta = {name: final["val_accuracy"] if name == "none" else figures[name]["val_accuracy"]
                      for name in TTA_NAMES}
            if args.tta == "best":
                chosen = max(TTA_NAMES, key=lambda name: by_tta[name])  # NAMES go cheapest first: ties keep it
            if chosen != "none":
                final = {**final, **figures[chosen], "val_accuracy_single_view": final["val_accuracy"]}
            if ema is not None:
                final["val_accuracy_raw"] = evaluate_split(model, val.images, val.labels, mean, std, device, autocast,
                                                           tta=chosen)["val_accuracy"]
        meta = {
            "classes": full.classes,
            "normalization": {"mean": list(mean), "std": list(std)},
            "image_size": args.image_size,
            "dataset": name,
            "validation_split": split_record,
            "recipe": recipe(args),
            "epochs_trained": final.get("epoch", start_epoch),
            "test_time_augmentation": chosen,
            "val_accuracy_by_tta": by_tta,
            "val_accuracy": final.get("val_accuracy"),
            "val_net_accuracy": final.get("val_net_accuracy"),
            "val_accuracy_single_view": final.get("val_accuracy_single_view", final.get("val_accuracy")),
            "val_source_accuracy": dict(zip([*model.sources, "fused"], final.get("val_source_accuracy", []))),
            "val_accuracy_raw_weights": final.get("val_accuracy_raw"),
            "saved_weights": "raw" if saved is model else "moving average",
            "training_time_s": round(elapsed, 1),
            "hardware": hardware(device),
            "processes": world,
            "torch": torch.__version__,
            "code_commit": commits[-1]["commit"],
            "code_commits": commits,
            "command": command_line(sys.argv[1:] if argv is None else argv),
        }
        save_checkpoint(saved, out, meta, dtype=getattr(torch, args.save_dtype))
        print(f"wrote {out}", file=sys.stderr)
    if distributed:
        import torch.distributed as dist

        dist.barrier()  # tearing the group down while rank 0 still evaluates and saves aborts the others
        dist.destroy_process_group()
    return {"history": history}


if __name__ == "__main__":
    main()
