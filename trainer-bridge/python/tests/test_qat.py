"""Fake quantization, training and export on stories260K (a real model, 260K parameters)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edge_qat import contract
from edge_qat.export import export, load_export
from edge_qat.fakequant import quantize_model, set_views
from edge_qat.models import load_model
from edge_qat.train import main as train_main

MODEL = Path("/work/shared/models/stories260K-hf")
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL} missing (see /work/shared/models/README)")


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


def test_fake_quant_is_the_contract_and_ste_gradients_flow(model):
    qs = quantize_model(model, 64, learnable=True)
    # Tied embedding/head: one tensor, one quantizer, under the embedding's name.
    assert "model.embed_tokens.weight" in qs and "lm_head.weight" not in qs
    assert model.lm_head.wq is model.model.embed_tokens.wq
    name = "model.layers.0.mlp.down_proj.weight"  # 172 columns: a partial last group
    w = dict(model.named_parameters())[name]
    q = qs[name]
    assert q.scale.shape == (w.shape[0], 3)
    for k in contract.VIEWS:
        q.view = k
        fq = q(w)
        s, m = contract.init_params(w, 64)
        ref = contract.reconstruct(contract.codes(w, s, m, 64), s, m, 64, k)[:, : w.shape[1]]
        assert torch.equal(fq, ref), k
    set_views(qs, 3)
    ids = torch.randint(0, 512, (2, 16))
    model.zero_grad()
    model(ids).logits.float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        if ".wq." in n or "norm" in n:
            continue
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.abs().sum() > 0, n
    assert q.scale.grad.shape == q.scale.shape and q.scale.grad.abs().sum() > 0
    assert q.min.grad is not None
    set_views(qs, None)


def test_export_round_trip(tmp_path, model):
    m = load_model(MODEL)
    qs = quantize_model(m, 32)
    with torch.no_grad():  # move weights off their initial parameters' grid, as training does
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    out = export(m, qs, MODEL, tmp_path / "exp", 32, {"steps": 0})
    man = json.loads((out / "edge-qat.json").read_text())
    assert man["format"] == "edge-qat" and man["version"] == 1 and man["group_size"] == 32
    st = load_file(out / "model.safetensors")
    assert "model.embed_tokens.weight" not in st and "lm_head.weight" not in st
    assert st["model.layers.0.mlp.down_proj.weight.qcodes"].shape == (64, 192)
    assert st["model.layers.0.mlp.down_proj.weight.qscale"].dtype == torch.float16
    assert st["model.norm.weight"].dtype == torch.float32
    params = dict(m.named_parameters())
    ids = torch.tensor([[1, 403, 11, 90, 7, 300, 2]])
    for k in (2, 4, 8):
        set_views(qs, k)
        e = load_export(out, k)
        ep = dict(e.named_parameters())
        for n, q in qs.items():
            assert torch.equal(ep[n], q(params[n]).detach()), (n, k)
        with torch.no_grad():
            assert torch.equal(e(ids).logits, m(ids).logits)
    set_views(qs, None)


def test_resume_gives_the_same_state(tmp_path):
    common = ["--model", str(MODEL), "--samples", "4", "--seq-len", "16", "--batch", "2", "--seed", "3",
              "--learn-params", "--no-export", "--device", "cpu"]
    train_main(common + ["--out", str(tmp_path / "a"), "--steps", "4"])
    train_main(common + ["--out", str(tmp_path / "b"), "--steps", "2"])
    train_main(common + ["--out", str(tmp_path / "b"), "--steps", "4", "--resume"])
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k
    la = [json.loads(l)["loss"] for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert la == lb
