#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models and their logits: the oracles of edge-pack's HF import.

    /work/venv-torch/bin/python tests/oracles/make_tiny_hf.py [OUT_DIR]   (default tests/fixtures/hf)

Writes, for each model, OUT_DIR/NAME/{config.json, model.safetensors, logits.json}:
- tiny-qwen2: Qwen2ForCausalLM (q/k/v biases, untied head), config as transformers 5 writes it
  (`rope_parameters`);
- tiny-llama3: LlamaForCausalLM with Llama 3 RoPE scaling, config in the Hub's form
  (`rope_theta` + `rope_scaling` with rope_type llama3), original context short enough that the
  scaling changes the logits of the positions scored.
- tiny-qwen3: Qwen3ForCausalLM (transformers 5 config): head_dim 32 with hidden 64 and 4/2 heads
  (q is 128 wide), q/k head norms random around 1, no biases, tied head, RoPE base 1e6;
- tiny-gemma3: Gemma3ForCausalLM (transformers 5 config): head_dim 16 with hidden 32 and 4/2
  heads, a sliding window of 8 over the 24 tokens, layers local/global/local/global with RoPE
  bases 1e4/1e6, query_pre_attn_scalar 12 (not head_dim), tied head; norms random around 1
  (Gemma computes x * (1 + w), so the importer's +1 shows).
Weights are random (biases and norms too, so that each term shows in the logits), rounded to f16
and stored as f16 (small fixtures; the logits are the f32 forward pass of those exact weights).
logits.json: {"tokens": [...], "logits": [[vocab floats] per token], "torch", "transformers"}.
Committed, so the Rust tests need no torch.
"""
import json
import os
import sys

import torch
import transformers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    hidden_act="silu",
)
TOKENS = [1, 17, 99, 3, 64, 127, 5, 42, 8, 77, 23, 101, 0, 56, 90, 12, 31, 64, 64, 2, 115, 9, 48, 70]


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
            p.copy_(v.half().float())  # exactly representable in the f16 file


def save(model, out, hub_config=None):
    os.makedirs(out, exist_ok=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS])).logits[0].float()
    model.half().save_pretrained(out, safe_serialization=True)
    if hub_config is not None:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(hub_config, f, indent=2)
    for extra in ["generation_config.json"]:
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)
    with open(os.path.join(out, "logits.json"), "w") as f:
        json.dump({
            "tokens": TOKENS,
            "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }, f)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
    torch.manual_seed(0)

    qcfg = Qwen2Config(max_position_embeddings=512, rope_theta=10000.0, **COMMON)
    qwen = Qwen2ForCausalLM(qcfg).float()
    randomize(qwen, 1)
    save(qwen, os.path.join(root, "tiny-qwen2"))

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    lcfg = LlamaConfig(max_position_embeddings=512, rope_theta=10000.0, rope_scaling=scaling, **COMMON)
    llama = LlamaForCausalLM(lcfg).float()
    randomize(llama, 2)
    hub = {  # the Hub's (transformers 4) form of the same config
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rope_scaling": scaling,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **COMMON,
    }
    save(llama, os.path.join(root, "tiny-llama3"), hub)

    # The same llama without scaling gives other logits: the fixture tests the scaling.
    plain = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, rope_theta=10000.0, **COMMON)).float()
    plain.load_state_dict(llama.float().state_dict())
    with torch.no_grad():
        a = plain(torch.tensor([TOKENS])).logits[0]
        b = llama(torch.tensor([TOKENS])).logits[0]
    print("max |logit change| from the llama3 scaling:", float((a - b).abs().max()))

    q3cfg = Qwen3Config(max_position_embeddings=512, rope_theta=1_000_000.0, head_dim=32, attention_bias=False,
                        **{**COMMON, "tie_word_embeddings": True})
    qwen3 = Qwen3ForCausalLM(q3cfg).float()
    randomize(qwen3, 4)
    save(qwen3, os.path.join(root, "tiny-qwen3"))

    gcfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        query_pre_attn_scalar=12,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    gemma = Gemma3ForCausalLM(gcfg).float()
    randomize(gemma, 3)
    save(gemma, os.path.join(root, "tiny-gemma3"))


if __name__ == "__main__":
    main()
