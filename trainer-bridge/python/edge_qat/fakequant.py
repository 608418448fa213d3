"""Fake quantization of a Hugging Face Llama-family model's weights at the nested views.

Every nn.Linear weight and the token embedding (and the output head: in a tied model the head
*is* the embedding, one tensor, one quantizer) gets a `WeightQuantizer` holding its group
(scale, min). The forward pass uses exactly the runtime's reconstruction of the tensor's current
view (`contract.py`); the backward pass is straight-through (LSQ-style for scale and min when
they are learnable). A view of `None` is full precision.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from . import contract

FULL = None  # the full-precision "view"


class _FakeQuant(torch.autograd.Function):
    """Forward: the contract's k-bit reconstruction of w. Backward: straight-through for w
    inside the 8-bit span; LSQ gradients for scale and min (summed per group)."""

    @staticmethod
    def forward(ctx, w, scale, mn, group, k, grad_scale):
        rows, cols = w.shape
        q = contract.codes(w, scale, mn, group)
        r = contract.reconstruct(q, scale, mn, group, k)[:, :cols]
        ctx.save_for_backward(w, scale, mn, q)
        ctx.group, ctx.k, ctx.grad_scale = group, k, grad_scale
        return r

    @staticmethod
    def backward(ctx, grad):
        w, scale, mn, q = ctx.saved_tensors
        group, k = ctx.group, ctx.k
        rows, cols = w.shape
        wg = contract.grouped(w, group)
        s = scale.clamp_min(2.0**-24).unsqueeze(-1)
        u = (wg - mn.unsqueeze(-1)) / s
        # Where the code is not clamped: round_half_even(u) in [0, 255].
        inside = (u >= -0.5) & (u < 255.5)
        gg = contract.grouped(grad, group)  # padding gradient is 0
        gw = (gg * inside).reshape(rows, -1)[:, :cols]
        gs = gm = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d = 8 - k
            centre = contract.grouped(contract.view_codes(q, k).to(torch.float32), group) * float(1 << d) + ((1 << d) - 1) / 2
            gs = (gg * torch.where(inside, centre - u, centre)).sum(-1) * ctx.grad_scale
            gm = (gg * ~inside).sum(-1) * ctx.grad_scale
        return gw, gs, gm, None, None, None


class _RoundF16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return contract.f16_round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class WeightQuantizer(nn.Module):
    """The group parameters of one weight tensor and the view it is read at.

    `layout` is how the runtime stores them: "f16" (an f16 scale and minimum per group) or
    "super" (`edge-pack --params super`: 6-bit codes under an f16 pair per 8 groups). Super-block
    parameters are fixed at the packer's min/max choice (not learnable); `scale` and `min` then
    hold their exact decoded values, and `sd`, `sdmin`, `ss`, `sm` the stored codes."""

    def __init__(self, weight: torch.Tensor, group: int, learnable: bool = False, layout: str = "f16"):
        super().__init__()
        self.group = group
        self.rows, self.cols = weight.shape
        self.layout = layout
        if layout == "super":
            if learnable:
                raise ValueError("super-block group parameters are fixed: drop --learn-params or use --params f16")
            self.set_super(*contract.super_init_params(weight.detach().to(torch.float32), group))
            self.learnable = False
            self.view: int | None = FULL
            return
        if layout != "f16":
            raise ValueError(f"group parameter layout {layout!r} is not 'f16' or 'super'")
        scale, mn = contract.init_params(weight, group)
        if learnable:
            self.scale = nn.Parameter(scale)
            self.min = nn.Parameter(mn)
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("min", mn)
        self.learnable = learnable
        self.view: int | None = FULL

    def set_super(self, d: torch.Tensor, dmin: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> None:
        """Take super-block parameters: (d, dmin) [rows * blocks per row] f16-valued, (s, m)
        [rows * groups per row] integer codes, row-major."""
        gpr = contract.padded_cols(self.cols, self.group) // self.group
        scale, mn = contract.super_group_params(d, dmin, s, m, gpr)
        for name, t in (("scale", scale.reshape(self.rows, gpr)), ("min", mn.reshape(self.rows, gpr)),
                        ("sd", d.reshape(self.rows, -1)), ("sdmin", dmin.reshape(self.rows, -1)),
                        ("ss", s.reshape(self.rows, gpr)), ("sm", m.reshape(self.rows, gpr))):
            t = t.detach().to(torch.float32 if name in ("scale", "min", "sd", "sdmin") else torch.int64)
            if name in self._buffers:
                self._buffers[name] = t.to(self._buffers[name].device)
            else:
                self.register_buffer(name, t)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The f16 (scale, min) as f32 (rounded to f16 with a straight-through gradient)."""
        if not self.learnable:
            return self.scale, self.min
        # A learned scale must stay positive: below the smallest f16 subnormal codes would be 0.
        return _RoundF16.apply(self.scale.clamp_min(2.0**-24)), _RoundF16.apply(self.min)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.view is FULL:
            return w
        s, m = self.params()
        gs = 1.0 / math.sqrt(self.group * ((1 << self.view) - 1))
        return _FakeQuant.apply(w, s, m, self.group, self.view, gs)

    def freeze_top(self, w: torch.Tensor, k: int) -> None:
        """Hold the top k bits of w's codes: from now on `project` keeps each weight inside the
        span of the 8-bit codes that share its current top k bits, so every view of k bits or
        fewer stays what it is while the views above it train."""
        if self.learnable:
            raise ValueError("freezing the top bits needs fixed group parameters")
        q = contract.codes(w.detach().to(torch.float32), self.scale, self.min, self.group)
        rows, p = q.shape
        s, m = self.scale.unsqueeze(-1), self.min.unsqueeze(-1)
        for name, c in zip(("top_lo", "top_hi"), contract.top_bucket(q, k)):
            self.register_buffer(name, (contract.grouped(c.to(torch.float32), self.group) * s + m).reshape(rows, p))

    def export(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the runtime reads of w, by export suffix: `qcodes` (uint8 [rows, padded_cols]),
        then `qscale`, `qmin` (f16 [rows, groups]) or, for super-block parameters, `qd`, `qdmin`
        (f16 [rows, blocks]), `qs` (uint8 [rows, groups]), `qm` (int8 [rows, groups])."""
        with torch.no_grad():
            s, m = self.params()
            out = {"qcodes": contract.codes(w, s, m, self.group)}
            if self.layout == "super":
                out.update(qd=self.sd.to(torch.float16), qdmin=self.sdmin.to(torch.float16),
                           qs=self.ss.to(torch.uint8), qm=self.sm.to(torch.int8))
            else:
                out.update(qscale=s.to(torch.float16), qmin=m.to(torch.float16))
            return out


@torch.no_grad()
def project(model: nn.Module, quantizers: dict[str, WeightQuantizer]) -> None:
    """Clamp every weight with fixed group parameters into its group's 8-bit span
    [min, min + 255 * scale] (after an optimizer step). A weight that left the span would have
    its code clamped and no straight-through gradient, so it could never come back, while its
    full-precision value, which the anchor and the fp draw see, went on drifting with Adam's
    momentum. Learned parameters move the span instead (LSQ), so those are left alone. A
    quantizer whose top bits are frozen (`WeightQuantizer.freeze_top`) clamps into that code
    span instead."""
    params = dict(model.named_parameters())
    for name, q in quantizers.items():
        if q.learnable:
            continue
        w = params[name]
        rows, cols = w.shape
        if "top_lo" in q._buffers:
            w.data.copy_(torch.minimum(torch.maximum(w.data, q.top_lo[:, :cols]), q.top_hi[:, :cols]))
            continue
        lo = q.min.unsqueeze(-1)
        hi = lo + q.scale.unsqueeze(-1) * 255.0
        wg = contract.grouped(w.data, q.group)
        w.data.copy_(torch.minimum(torch.maximum(wg, lo), hi).reshape(rows, -1)[:, :cols])


def quantize_acts_int8(x: torch.Tensor, block: int) -> torch.Tensor:
    """The runtime's int8 activation quantization (`runtime/src/kernels/acts.rs`), dequantized:
    per block of `block` values, d = amax / 127, q = round_half_even(x * 127 / amax). Gradient
    straight through."""
    cols = x.shape[-1]
    flat = x.reshape(-1, cols)
    xg = contract.grouped(flat.detach().float(), block)
    amax = xg.abs().amax(-1, keepdim=True)
    nz = amax > 0
    d = torch.where(nz, amax / torch.full_like(amax, 127.0), torch.zeros_like(amax))
    inv = torch.where(nz, torch.full_like(amax, 127.0) / torch.where(nz, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    q = torch.round(xg * inv).clamp(-127, 127)
    xq = (q * d).reshape(flat.shape[0], -1)[:, :cols].reshape(x.shape).to(x.dtype)
    return x + (xq - x).detach()


def _linear_forward(self, x):
    if self.act_int8 and self.wq.view is not FULL:
        x = quantize_acts_int8(x, self.wq.group)
    return nn.functional.linear(x, self.wq(self.weight), self.bias)


def _embedding_forward(self, ids):
    return nn.functional.embedding(ids, self.wq(self.weight), self.padding_idx)


def quantize_model(model: nn.Module, group: int = 64, learnable: bool = False, act_int8: bool = False,
                   layout: str = "f16") -> dict[str, WeightQuantizer]:
    """Attach a WeightQuantizer (group parameters in `layout`, "f16" or "super") to every
    nn.Linear and nn.Embedding of `model` (in place).
    Returns {HF tensor name: quantizer}; a tied embedding/head is one entry (the embedding's
    name) shared by both modules. Starts at full precision (see `set_views`)."""
    by_param: dict[int, tuple[str, WeightQuantizer]] = {}
    out: dict[str, WeightQuantizer] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Embedding)):
            continue
        key = id(mod.weight)
        if key not in by_param:
            wq = WeightQuantizer(mod.weight.detach(), group, learnable, layout).to(mod.weight.device)
            by_param[key] = (f"{name}.weight", wq)
            out[f"{name}.weight"] = wq
        mod.wq = by_param[key][1]
        if isinstance(mod, nn.Linear):
            mod.act_int8 = act_int8
            mod.forward = types.MethodType(_linear_forward, mod)
        else:
            mod.forward = types.MethodType(_embedding_forward, mod)
    return out


def layer_of(name: str) -> str:
    """The unit a per-layer view choice covers: `model.layers.N`, else the tensor itself."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return ".".join(parts[: i + 2])
    return name


def set_views(quantizers: dict[str, WeightQuantizer], views) -> None:
    """views: an int (every tensor), None (full precision), or {name: view}."""
    for name, q in quantizers.items():
        v = views.get(name, FULL) if isinstance(views, dict) else views
        if v is not FULL and v not in contract.VIEWS:
            raise ValueError(f"view {v} of {name} is not one of {contract.VIEWS}")
        q.view = v
