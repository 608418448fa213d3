"""Refitting an export's low bits to the float weights (edge_qat.refit) on stories260K."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edge_qat.export import export, load_export
from edge_qat.fakequant import quantize_model
from edge_qat.models import load_model
from edge_qat.refit import main as refit_main

MODEL = Path("/work/shared/models/stories260K-hf")
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL} missing (see /work/shared/models/README)")


@pytest.mark.parametrize("layout,group", [("f16", 64), ("super", 32)])
def test_refit_keeps_the_low_views_and_returns_the_high_ones_to_the_float_weights(tmp_path, layout, group):
    # Weights moved as training moves them (far enough to change many 8-bit codes and some
    # 4-bit buckets): after a refit keeping 4 bits, every view of 4 bits or fewer is the moved
    # model's bit for bit, and the 8-bit view is nearer the float weights than the moved one's.
    base = {n: p.detach() for n, p in load_model(MODEL).named_parameters()}
    m = load_model(MODEL)
    qs = quantize_model(m, group, layout=layout)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 2e-2 * p.abs().mean())
    moved = export(m, qs, MODEL, tmp_path / "moved", group, {"steps": 0})
    out = tmp_path / "refit"
    refit_main(["--export", str(moved), "--base", str(MODEL), "--keep", "4", "--out", str(out)])
    a, b = load_file(moved / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(a) == set(b)
    changed = 0
    for name in qs:
        for part in ("qscale", "qmin", "qd", "qdmin", "qs", "qm"):
            if f"{name}.{part}" in a:
                assert torch.equal(a[f"{name}.{part}"], b[f"{name}.{part}"]), (name, part)
        qa, qb = a[f"{name}.qcodes"], b[f"{name}.qcodes"]
        assert torch.equal(qa >> 4, qb >> 4), name
        changed += int((qa != qb).sum())
    assert changed > 0
    for k in (2, 3, 4):
        pa, pb = dict(load_export(moved, k).named_parameters()), dict(load_export(out, k).named_parameters())
        for name in qs:
            assert torch.equal(pa[name], pb[name]), (name, k)
    pa, pb = dict(load_export(moved, 8).named_parameters()), dict(load_export(out, 8).named_parameters())
    err_moved = sum(float((pa[n] - base[n]).square().sum()) for n in qs)
    err_refit = sum(float((pb[n] - base[n]).square().sum()) for n in qs)
    assert err_refit < 0.5 * err_moved, (err_refit, err_moved)


def test_refit_of_min_max_codes_changes_nothing(tmp_path):
    # The packer's own codes are already the nearest ones in their buckets.
    m = load_model(MODEL)
    qs = quantize_model(m, 64)
    ptq = export(m, qs, MODEL, tmp_path / "ptq", 64, {"ptq": "minmax"})
    refit_main(["--export", str(ptq), "--base", str(MODEL), "--keep", "3", "--out", str(tmp_path / "r")])
    a, b = load_file(ptq / "model.safetensors"), load_file(tmp_path / "r" / "model.safetensors")
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_refit_refuses_another_model_and_a_bad_keep(tmp_path):
    m = load_model(MODEL)
    qs = quantize_model(m, 64)
    ptq = export(m, qs, MODEL, tmp_path / "ptq", 64, {})
    with pytest.raises(SystemExit, match="--keep 8"):
        refit_main(["--export", str(ptq), "--base", str(MODEL), "--keep", "8", "--out", str(tmp_path / "r")])
    other = tmp_path / "other"
    name = "model.layers.0.mlp.up_proj.weight"  # 64 columns
    man = ptq / "edge-qat.json"
    man.write_text(man.read_text().replace(f'"{name}": 64', f'"{name}": 63'))
    with pytest.raises(SystemExit, match="another model"):
        refit_main(["--export", str(ptq), "--base", str(MODEL), "--out", str(other)])
    assert not other.exists()


def test_freeze_top_trains_only_the_bits_below_the_kept_views(tmp_path):
    # A run started at moved codes with their top 4 bits frozen: its export keeps every view of
    # 4 bits or fewer (codes' top bits, group parameters, norms) bit for bit, trains the rest.
    from edge_qat.train import main as train_main

    m = load_model(MODEL)
    qs = quantize_model(m, 64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 2e-2 * p.abs().mean())
    given = export(m, qs, MODEL, tmp_path / "given", 64, {"steps": 0})
    out = tmp_path / "run"
    args = ["--model", str(MODEL), "--out", str(out), "--samples", "8", "--seq-len", "32", "--batch", "4",
            "--steps", "6", "--lr", "1e-3", "--init-codes", str(given), "--device", "cpu"]
    train_main(args + ["--freeze-top", "4", "--views", "5:1,6:1,8:1,fp:1"])
    a, b = load_file(given / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    assert set(a) == set(b)
    changed = 0
    for n in a:
        if n.endswith(".qcodes"):
            assert torch.equal(a[n] >> 4, b[n] >> 4), n
            changed += int((a[n] != b[n]).sum())
        else:
            assert torch.equal(a[n], b[n]), n  # group parameters and norms
    assert changed > 1000, changed
    for bad, msg in ((["--freeze-top", "4", "--views", "4:1,8:1"], "views of 4 bits or fewer"),
                     (["--freeze-top", "4", "--views", "8:1", "--anchor", "3"], "views of 4 bits or fewer"),
                     (["--freeze-top", "8"], "not 1..7")):
        with pytest.raises(SystemExit, match=msg):
            train_main(args[:-4] + ["--device", "cpu"] + bad + ["--init-codes", str(given)])
    with pytest.raises(SystemExit, match="--init-codes"):
        train_main(args[:-4] + ["--device", "cpu", "--freeze-top", "4", "--views", "8:1"])
