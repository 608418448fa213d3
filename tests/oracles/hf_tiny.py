#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models and their logits: the oracle the HF importer's tests
match (an independent forward pass: transformers' own modelling code).

    /work/venv-torch/bin/python tests/oracles/hf_tiny.py ARCH OUT_DIR

writes OUT_DIR/{config.json, model.safetensors} (save_pretrained, f32) and
OUT_DIR/oracle.json: {"tokens": [...], "logits": [[...] per token]} for fixed token ids, every
position's logits, in float32. ARCH is one of the keys of MODELS; each config is chosen to
exercise what the architecture adds (gemma3: a sliding window shorter than the sequence, local
and global layers with different RoPE bases, q/k norms, head_dim != hidden / heads).
"""
import json
import sys

import torch
import transformers


def gemma3():
    cfg = transformers.Gemma3TextConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,  # != 32 / 4
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        sliding_window=8,  # the sequence below is 24 tokens
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        query_pre_attn_scalar=12,  # != head_dim: the scale comes from the config
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return cfg, transformers.Gemma3ForCausalLM


MODELS = {"gemma3": gemma3}


def main():
    arch, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(17)
    cfg, cls = MODELS[arch]()
    model = cls(cfg).eval().to(torch.float32)
    # Random norms (their weights are zero-initialised, which would hide the 1 + w convention).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (24,), generator=g).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    with open(f"{out}/oracle.json", "w") as f:
        json.dump({"arch": arch, "transformers": transformers.__version__, "tokens": tokens,
                   "logits": [[round(v, 6) for v in row] for row in logits.tolist()]}, f)


if __name__ == "__main__":
    main()
