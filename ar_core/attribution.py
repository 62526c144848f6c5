"""Captum attributions of the fused output, and how well they agree with the attention maps.

Attribution tools hook modules while they run, so they always work on a private copy of the
model: the cached model that serves other sessions is never hooked.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import AttendAndRectify, Trace

METHODS = {
    "integrated_gradients": "Integrated Gradients",
    "saliency": "Saliency",
    "gradcam": "Grad-CAM",
    "occlusion": "Occlusion",
}
SMOOTHGRAD_METHODS = ("integrated_gradients", "saliency")  # the gradient maps NoiseTunnel averages


@dataclass
class Attribution:
    method: str
    target: int
    map: np.ndarray  # (H, W), non-negative, at the input resolution
    seconds: float


def private_copy(model: AttendAndRectify) -> AttendAndRectify:
    """A deep copy in eval mode, safe to hook without touching the shared model."""
    return copy.deepcopy(model).eval()


def attribute(model: AttendAndRectify, x: torch.Tensor, target: int, method: str, layer: str | None = None,
              noise_tunnel: bool = False, nt_samples: int = 8, ig_steps: int = 32,
              occlusion_window: int = 4, occlusion_stride: int = 2, copy_model: bool = True) -> Attribution:
    """Attribution of the fused score of class ``target`` for one normalised image x (1, 3, H, W).

    Pixel methods are reduced to one map by summing |attribution| over colour channels;
    Grad-CAM (on the feature map ``layer``, default the last) keeps positive evidence and is
    upsampled to the input size. ``copy_model=False`` hooks ``model`` itself: only for a private model.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, 3, H, W), got {tuple(x.shape)}")
    t0 = time.perf_counter()
    maps = attribute_batch(model, x, [target], method, layer, noise_tunnel, nt_samples, ig_steps, occlusion_window,
                           occlusion_stride, copy_model)
    return Attribution(method, target, maps[0], time.perf_counter() - t0)


SMOOTHGRAD_NOISE = 0.15  # the noise's standard deviation over the range of the (normalised) input
SMOOTHGRAD_SEED = 0


def attribute_batch(model: AttendAndRectify, x: torch.Tensor, targets, method: str, layer: str | None = None,
                    noise_tunnel: bool = False, nt_samples: int = 8, ig_steps: int = 32,
                    occlusion_window: int = 4, occlusion_stride: int = 2, copy_model: bool = True) -> np.ndarray:
    """The maps of :func:`attribute` for a batch x (B, 3, H, W) and one target class per image: (B, H, W).

    In eval mode every image's attribution depends on that image alone, so a batch gives the maps
    of one image at a time in fewer, larger passes.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(METHODS)}")
    if noise_tunnel and method not in SMOOTHGRAD_METHODS:
        raise ValueError(f"NoiseTunnel (SmoothGrad) applies to {', '.join(SMOOTHGRAD_METHODS)}, not {method!r}")
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).view(-1)
    if len(targets) != len(x):
        raise ValueError(f"{len(targets)} targets for {len(x)} images")
    net = private_copy(model) if copy_model else model
    x = x.detach().clone().requires_grad_(True)
    b = len(x)
    if method == "gradcam":
        module = net.feature_module(layer or "last")
        cam = LayerGradCam(net, module).attribute(x, target=targets, relu_attributions=True)
        result = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    elif method == "occlusion":
        w, s = occlusion_window, occlusion_stride
        with torch.no_grad():
            result = Occlusion(net).attribute(x, target=targets, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                                              baselines=0.0, perturbations_per_eval=max(1, 64 // b))
    else:
        algo = IntegratedGradients(net) if method == "integrated_gradients" else Saliency(net)
        kwargs = {"n_steps": ig_steps, "internal_batch_size": 16 * b} if method == "integrated_gradients" else {}
        if method == "saliency":
            kwargs["abs"] = True
        if noise_tunnel:
            # One image at a time: its noise level and its noisy copies then depend on that image alone.
            result = torch.cat([_smoothgrad(NoiseTunnel(algo), x[i:i + 1], targets[i:i + 1], nt_samples, kwargs)
                                for i in range(b)])
        else:
            result = algo.attribute(x, target=targets, **kwargs)
    amap = result.detach().float()
    amap = amap.abs().sum(1) if method != "gradcam" else amap.sum(1).clamp(min=0)
    return amap.cpu().numpy()


def _smoothgrad(tunnel, x: torch.Tensor, target: torch.Tensor, nt_samples: int, kwargs: dict) -> torch.Tensor:
    """SmoothGrad of one image: noise of 15 % of its range (Smilkov et al. 2017 find 10-20 % best), drawn
    from a fixed seed on the image's device, so a map is reproducible and no other random stream moves."""
    sigma = SMOOTHGRAD_NOISE * float(x.detach().max() - x.detach().min())
    cuda = x.device.type == "cuda"
    with torch.random.fork_rng(devices=[x.device] if cuda else [], device_type="cuda"):
        if cuda:
            with torch.cuda.device(x.device):
                torch.cuda.manual_seed(SMOOTHGRAD_SEED)  # this device's generator only
        else:
            torch.random.default_generator.manual_seed(SMOOTHGRAD_SEED)
        return tunnel.attribute(x, target=target, nt_type="smoothgrad", nt_samples=nt_samples,
                                nt_samples_batch_size=min(nt_samples, 8), stdevs=sigma, **kwargs)


def layer_attention(trace: Trace, i: int, layer: int, size: int | None = None) -> np.ndarray:
    """Σ_k g^l_k H^l_k: a layer's attention fused over its heads by the confidence gates.

    Upsampled (bilinear) to ``size`` x ``size`` when given.
    """
    lt = trace.layers[layer]
    m = torch.einsum("k,khw->hw", lt.confidence_gates[i].float(), lt.attention_maps[i].float())
    if size is not None and m.shape[-1] != size:
        m = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return m.detach().numpy()


def gated_attention_maps(trace: Trace, size: int) -> np.ndarray:
    """Σ_l g_O^l Σ_k g^l_k H^l_k for every image of a trace, each layer upsampled: (B, size, size).

    The attention that the fusion itself uses, as one ``size`` x ``size`` map per image.
    """
    if not trace.layers:
        raise ValueError("this model has no attention modules (AD = 0): there is no attention map")
    total = 0
    for l, lt in enumerate(trace.layers):
        m = torch.einsum("bk,bkhw->bhw", lt.confidence_gates.float(), lt.attention_maps.float())
        if m.shape[-1] != size:
            m = F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        total = total + trace.global_gates[:, l, None, None].float() * m
    return total.detach().numpy()


def gated_attention(trace: Trace, i: int, size: int) -> np.ndarray:
    """:func:`gated_attention_maps` of image ``i`` alone."""
    return gated_attention_maps(trace.map(lambda t: t[i:i + 1]), size)[0]


def compare_maps(baseline: AttendAndRectify, base_trace: Trace, base_x: torch.Tensor,
                 attentive: AttendAndRectify, att_trace: Trace, att_x: torch.Tensor) -> dict[str, np.ndarray]:
    """Baseline vs attention for one image: title → (H, W) map, in display order.

    The baseline's Grad-CAM, the attention model's gated attention and its Grad-CAM. Each x is the
    image (1, 3, H, W) normalised as that model expects; each Grad-CAM (last feature map) explains
    that model's own answer as its trace gives it.
    """
    b_pred, a_pred = int(base_trace.output[0].argmax()), int(att_trace.output[0].argmax())
    return {"baseline: Grad-CAM": attribute(baseline, base_x, b_pred, "gradcam").map,
            "attention: gated attention": gated_attention(att_trace, 0, att_x.shape[-1]),
            "attention: Grad-CAM": attribute(attentive, att_x, a_pred, "gradcam").map}


def unit_range(maps) -> np.ndarray:
    """Each map (the last two axes) rescaled to [0, 1], its minimum to 0 and maximum to 1; a constant map
    becomes zeros. How maps are compared by eye (overlays) and by SSIM, whatever their own scale."""
    m = np.asarray(maps, dtype=np.float64)
    lo, hi = m.min(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.divide(m - lo, span, out=np.zeros_like(m), where=span > 0)


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(len(v))
    # Ties share their mean rank, so constant regions do not invent an order.
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps of the same shape (NaN when either is constant)."""
    ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the top ``fraction`` pixels of ``a`` that are also in the top ``fraction`` of ``b``."""
    n = max(1, int(round(fraction * a.size)))
    ta = set(np.argsort(-a.ravel(), kind="stable")[:n].tolist())
    tb = set(np.argsort(-b.ravel(), kind="stable")[:n].tolist())
    return len(ta & tb) / n


def agreement(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> dict[str, float]:
    """How much two explanation maps agree: rank correlation and top-20 % overlap."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return {"spearman": spearman(a, b), f"top{int(fraction * 100)}_overlap": top_overlap(a, b, fraction)}
