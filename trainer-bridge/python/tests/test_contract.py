"""The Python contract against the vectors the Rust contract writes, bit for bit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_qat import contract

DATA = Path(__file__).parent / "data" / "contract_vectors.json"
ALL = json.loads(DATA.read_text())["cases"]
CASES = [c for c in ALL if c.get("params") != "super"]
SUPER = [c for c in ALL if c.get("params") == "super"]


def f32_bits(x: torch.Tensor) -> np.ndarray:
    b = x.detach().cpu().numpy().astype(np.float32).view(np.uint32).copy()
    b[np.isnan(x.detach().cpu().numpy())] = 0x7FC00000  # the file's one NaN
    return b


def f16_bits(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float16).numpy().view(np.uint16)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_bit_exact(case):
    rows, cols, g = case["rows"], case["cols"], case["group_size"]
    w = torch.from_numpy(np.array(case["weights"], dtype=np.uint32).view(np.float32).reshape(rows, cols))
    scale, mn = contract.init_params(w, g)
    np.testing.assert_array_equal(f16_bits(scale).ravel(), np.array(case["scale"], dtype=np.uint16), "scale")
    np.testing.assert_array_equal(f16_bits(mn).ravel(), np.array(case["min"], dtype=np.uint16), "min")
    q = contract.codes(w, scale, mn, g)
    assert q.shape == (rows, contract.padded_cols(cols, g))
    np.testing.assert_array_equal(q.numpy().ravel(), np.array(case["codes"], dtype=np.uint8), "codes")
    for k in contract.VIEWS:
        r = contract.reconstruct(q, scale, mn, g, k)
        np.testing.assert_array_equal(f32_bits(r).ravel(), np.array(case["recon"][str(k)], dtype=np.uint32), f"view {k}")


@pytest.mark.parametrize("case", SUPER, ids=[c["name"] for c in SUPER])
def test_super_case_bit_exact(case):
    rows, cols, g = case["rows"], case["cols"], case["group_size"]
    w = torch.from_numpy(np.array(case["weights"], dtype=np.uint32).view(np.float32).reshape(rows, cols))
    # The packer's choice of super-blocks, mirrored.
    d, dmin, s, m = contract.super_init_params(w, g)
    np.testing.assert_array_equal(f16_bits(d), np.array(case["d"], dtype=np.uint16), "d")
    np.testing.assert_array_equal(f16_bits(dmin), np.array(case["dmin"], dtype=np.uint16), "dmin")
    np.testing.assert_array_equal(s.numpy(), np.array(case["s"]), "s")
    np.testing.assert_array_equal(m.numpy(), np.array(case["m"]), "m")
    # The contract: decoded parameters, codes and every view.
    scale, mn = contract.super_group_params(d, dmin, s, m, contract.padded_cols(cols, g) // g)
    scale, mn = scale.reshape(rows, -1), mn.reshape(rows, -1)
    q = contract.codes(w, scale, mn, g)
    np.testing.assert_array_equal(q.numpy().ravel(), np.array(case["codes"], dtype=np.uint8), "codes")
    for k in contract.VIEWS:
        r = contract.reconstruct(q, scale, mn, g, k)
        np.testing.assert_array_equal(f32_bits(r).ravel(), np.array(case["recon"][str(k)], dtype=np.uint32), f"view {k}")


def test_vectors_cover_the_edges():
    names = {c["name"] for c in CASES}
    for n in ["zeros", "ties", "negative zero", "tiny subnormal range", "f16 overflow of min", "partial last group"]:
        assert n in names
    # Super-block cases with a row's last block partial, and rows of more than one block.
    gpr = [-(-c["cols"] // c["group_size"]) for c in SUPER]
    assert any(g % 8 for g in gpr) and any(g > 8 for g in gpr)
    # Ties really are ties: the file holds codes that round-half-away would have made odd.
    ties = next(c for c in CASES if c["name"] == "ties")
    w = np.array(ties["weights"], dtype=np.uint32).view(np.float32)
    assert any(x % 1 == 0.5 and int(x) % 2 == 0 for x in w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    case = CASES[2]
    rows, cols, g = case["rows"], case["cols"], case["group_size"]
    w = torch.from_numpy(np.array(case["weights"], dtype=np.uint32).view(np.float32).reshape(rows, cols))
    s, m = contract.init_params(w.cuda(), g)
    q = contract.codes(w.cuda(), s, m, g)
    np.testing.assert_array_equal(q.cpu().numpy().ravel(), np.array(case["codes"], dtype=np.uint8))
    for k in contract.VIEWS:
        r = contract.reconstruct(q, s, m, g, k)
        np.testing.assert_array_equal(f32_bits(r).ravel(), np.array(case["recon"][str(k)], dtype=np.uint32))
