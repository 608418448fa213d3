"""The post-training study's variants: super-block parameters cover every group (no code
clips), and the affine refinement never does worse than the bucket centre it replaces."""

import torch

from edge_qat import contract
from edge_qat.ptq_study import params_bpw, superblock_params, views_of


def weights(rows=48, cols=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3] = 0.0  # an all-zero row
    w[5, :40] += 2.0  # a group far from the others in its super-block
    return w


def test_superblock_params_cover_every_group():
    w = weights()
    for group, bits in [(32, 6), (32, 8), (64, 6)]:
        scale, mn = superblock_params(w, group, bits)
        lo = contract.grouped(w, group, float("inf")).amin(-1)
        hi = contract.grouped(w, group, float("-inf")).amax(-1)
        assert (mn <= lo).all() and (mn + 255 * scale >= hi * (1 - 1e-6) - 1e-7).all()
        # The 8-bit view is then within half a step of every weight.
        rec = views_of(w, group, f"sb{bits}", None)[8]
        s = scale.repeat_interleave(group, 1)[:, : w.shape[1]]
        assert ((rec - w).abs() <= s * 0.5 + 1e-6).all()
    assert params_bpw("f16", 64) == 0.5 and params_bpw("sb6", 32) == 0.5


def test_affine_refinement_is_no_worse_than_the_bucket_centre():
    w = weights(seed=1)
    scale, _ = contract.init_params(w, 64)
    s2 = (scale.repeat_interleave(64, 1)[:, : w.shape[1]]) ** 2
    plain, refined = views_of(w, 64, "f16", None), views_of(w, 64, "f16", "affine")
    assert torch.equal(plain[8], refined[8])
    for k in (2, 3, 4, 5, 6):
        # The fit minimises the scale^2-weighted squared code error, which is this error.
        e_plain = ((plain[k] - w) ** 2 / s2.clamp_min(1e-30)).mul(s2).sum()
        e_ref = ((refined[k] - w) ** 2 / s2.clamp_min(1e-30)).mul(s2).sum()
        assert e_ref <= e_plain * (1 + 1e-5), (k, e_ref, e_plain)
