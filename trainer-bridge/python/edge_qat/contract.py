"""The nested 8-bit contract of edge-run (`runtime/src/blocks.rs`), in torch, bit for bit.

A tensor W [rows, cols] is cut into groups of `g` weights along each row; a row is padded to
whole groups (padded_cols = ceil(cols / g) * g, padding codes 0). Each group stores f16
(scale, min). The code of a weight and the reconstruction of a k-bit view are

    q      = clamp(round_half_even((x - min) / scale), 0, 255)   (0 if scale <= 0 or NaN)
    q_k    = q >> (8 - k)                                         k in {2, 3, 4, 5, 6, 8}
    step   = scale * 2^(8-k)
    offset = min + scale * ((2^(8-k) - 1) / 2)                    (f32 multiply, then f32 add)
    w      = q_k * step + offset                                  (f32 multiply, then f32 add)

Every operation below is one eager torch f32 op (eager ops never fuse a multiply and an add),
so the results equal the Rust ones bit for bit; `tests/test_contract.py` checks that against
vectors the Rust side writes. Default group parameters are the packer's min/max ones
(`covering_params` in `trainer-bridge/src/quant.rs`), mirrored exactly.

Super-block parameters (`edge-pack --params super`, blocks.rs `SuperParams`): each row's groups go
8 to a block (the row's last block padded) holding f16 (d, dmin); group j has a scale code s
(0..63) and a minimum code m (-32..31), and

    scale = d * s        min = dmin * m                          (exact in f32)

`super_group_params` decodes them; `super_init_params` mirrors the packer's min/max choice.
"""

from __future__ import annotations

import torch

VIEWS = (2, 3, 4, 5, 6, 8)


def padded_cols(cols: int, group: int) -> int:
    return -(-cols // group) * group


def _div(a: torch.Tensor, b: float) -> torch.Tensor:
    # True f32 division by a tensor (never a multiply by a reciprocal, as a scalar divisor may be).
    return a / torch.full_like(a, b)


def f16_round(x: torch.Tensor) -> torch.Tensor:
    """f32 -> nearest f16 (ties to even, overflow to inf), returned as f32."""
    return x.to(torch.float16).to(torch.float32)


def _f16_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF


def _from_f16_bits(b: torch.Tensor) -> torch.Tensor:
    b = torch.where(b >= 0x8000, b - 0x10000, b)
    return b.to(torch.int16).view(torch.float16).to(torch.float32)


def _next_down_bits(b: torch.Tensor) -> torch.Tensor:
    """Bits of the next f16 below the finite f16 with bits b (quant.rs `next_down`)."""
    zero = (b & 0x7FFF) == 0
    return torch.where(zero, torch.full_like(b, 0x8001), torch.where(b & 0x8000 == 0, b - 1, b + 1))


def covering_params(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f16 (scale, min), as f32 tensors, whose 8-bit span covers [lo, hi] (f32 tensors of one
    shape): quant.rs `covering_params` element by element."""
    lo = lo.to(torch.float32)
    hi = hi.to(torch.float32)
    mbits = _f16_bits(lo)
    mn = _from_f16_bits(mbits)
    mbits = torch.where(mn > lo, _next_down_bits(mbits), mbits)
    mn = _from_f16_bits(mbits)
    degenerate = hi <= mn
    sbits = _f16_bits(_div(hi - mn, 255.0))
    while True:
        s = _from_f16_bits(sbits)
        short = ((s * 255.0) + mn < hi) & ~degenerate
        if not bool(short.any()):
            break
        sbits = torch.where(short, sbits + 1, sbits)
    scale = torch.where(degenerate, torch.zeros_like(lo), _from_f16_bits(sbits))
    return scale, mn


def grouped(w: torch.Tensor, group: int, pad: float = 0.0) -> torch.Tensor:
    """[rows, cols] -> [rows, padded_cols / group, group], padded with `pad`."""
    rows, cols = w.shape
    p = padded_cols(cols, group)
    if p != cols:
        w = torch.nn.functional.pad(w, (0, p - cols), value=pad)
    return w.reshape(rows, p // group, group)


def init_params(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packer's min/max group parameters of w [rows, cols]: (scale, min), each
    [rows, padded_cols / group], f32 holding f16 values. Only real weights count (not padding)."""
    w = w.detach().to(torch.float32)
    lo = grouped(w, group, float("inf")).amin(dim=-1)
    hi = grouped(w, group, float("-inf")).amax(dim=-1)
    return covering_params(lo, hi)


def codes(w: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int) -> torch.Tensor:
    """The 8-bit codes (uint8 [rows, padded_cols], padding 0) of w [rows, cols] under per-group
    f16-valued (scale, min) [rows, groups]: blocks.rs `nested8_quantize`."""
    rows, cols = w.shape
    wg = grouped(w.to(torch.float32), group)
    s = scale.unsqueeze(-1).expand_as(wg)
    u = (wg - mn.unsqueeze(-1)) / s
    q = torch.round(u).clamp(0.0, 255.0)
    q = torch.where(torch.isnan(q) | ~(s > 0), torch.zeros_like(q), q)
    q = q.to(torch.uint8).reshape(rows, -1)
    if q.shape[1] != cols:
        q[:, cols:] = 0
    return q


def step_offset(scale: torch.Tensor, mn: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks.rs `nested8_step_offset`: (step, offset) of the k-bit view, f32."""
    drop = 8 - k
    step = scale * float(1 << drop)
    offset = mn + scale * (((1 << drop) - 1) * 0.5)
    return step, offset


def view_codes(q: torch.Tensor, k: int) -> torch.Tensor:
    return q >> (8 - k)


def top_bucket(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and last 8-bit codes (int32) that share each code's top k bits: the span a code
    can move in without changing any view of k bits or fewer."""
    lo = (q.to(torch.int32) >> (8 - k)) << (8 - k)
    return lo, lo + ((1 << (8 - k)) - 1)


def reconstruct(q: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int, k: int) -> torch.Tensor:
    """The k-bit view's weights [rows, padded_cols] (f32) of codes q [rows, padded_cols]."""
    if k not in VIEWS:
        raise ValueError(f"view {k} is not one of {VIEWS}")
    rows, p = q.shape
    step, offset = step_offset(scale, mn, k)
    qk = view_codes(q, k).to(torch.float32).reshape(rows, p // group, group)
    return ((qk * step.unsqueeze(-1)) + offset.unsqueeze(-1)).reshape(rows, p)


SUPER_GROUPS = 8


def super_group_params(
    d: torch.Tensor, dmin: torch.Tensor, s: torch.Tensor, m: torch.Tensor, groups_per_row: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks.rs `SuperParams::group`: per-group (scale, min), f32 [groups], from the blocks'
    f16-valued (d, dmin) [rows * blocks per row] and the groups' codes s, m [groups] (row-major)."""
    g = torch.arange(s.numel())
    per_row = -(-groups_per_row // SUPER_GROUPS)
    idx = (g // groups_per_row) * per_row + (g % groups_per_row) // SUPER_GROUPS
    return d.to(torch.float32)[idx] * s.to(torch.float32), dmin.to(torch.float32)[idx] * m.to(torch.float32)


def _f16_up(x: torch.Tensor) -> torch.Tensor:
    """The least f16 at or above x >= 0 (quant.rs `f16_up`), as f32."""
    b = _f16_bits(x)
    return _from_f16_bits(torch.where(_from_f16_bits(b) < x, b + 1, b))


def super_init_params(w: torch.Tensor, group: int) -> tuple[torch.Tensor, ...]:
    """The packer's min/max super-blocks of w [rows, cols] (quant.rs `super_blocks` over
    `covering_params`): (d, dmin) [rows * blocks per row] f16-valued f32, (s, m) [groups] int64,
    row-major."""
    scale, mn = init_params(w, group)
    rows, gpr = mn.shape
    per_row = -(-gpr // SUPER_GROUPS)
    pad = per_row * SUPER_GROUPS - gpr
    blocks = rows * per_row
    lo_r = mn
    hi_r = mn + scale * 255.0
    lo_b = torch.nn.functional.pad(lo_r, (0, pad)).reshape(blocks, SUPER_GROUPS)
    hi_b = torch.nn.functional.pad(hi_r, (0, pad)).reshape(blocks, SUPER_GROUPS)
    real = torch.nn.functional.pad(torch.ones(rows, gpr, dtype=torch.bool), (0, pad)).reshape(blocks, SUPER_GROUPS)
    big = torch.where(real, lo_b.abs(), torch.zeros_like(lo_b)).amax(dim=1, keepdim=True)
    dmin = torch.where(big > 0, f16_round(_div(big, 31.0)), torch.zeros_like(big))

    def codes_under(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        safe = torch.where(dmin > 0, dmin, torch.ones_like(dmin))
        m = torch.where(dmin > 0, torch.floor(lo_b / safe).clamp(-32.0, 31.0), torch.zeros_like(lo_b))
        need = _div(hi_b - dmin * m, 255.0)
        dsafe = torch.where(d > 0, d, torch.ones_like(d))
        s = torch.where(d > 0, torch.ceil(need / dsafe).clamp(1.0, 63.0), torch.zeros_like(need))
        return s, m, need

    _, _, need = codes_under(torch.zeros_like(dmin))
    top = torch.where(real, need, torch.zeros_like(need)).amax(dim=1, keepdim=True)
    d = torch.where(top > 0, _f16_up(_div(top, 63.0)), torch.zeros_like(top))
    s, m, _ = codes_under(d)
    s = s.reshape(rows, -1)[:, :gpr].reshape(-1)
    m = m.reshape(rows, -1)[:, :gpr].reshape(-1)
    return d.reshape(-1), dmin.reshape(-1), s.to(torch.int64), m.to(torch.int64)
