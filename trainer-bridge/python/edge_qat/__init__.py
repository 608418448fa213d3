"""edge-qat: quantization-aware training of edge-run's nested 8-bit views, bit-exact with the runtime.

contract    the nested 8-bit contract (codes, f16 group parameters, view reconstruction) in torch
fakequant   fake-quantized Llama-family models (linear layers, embedding/head), STE/LSQ gradients
train       randomized-precision QAT against the float teacher (python -m edge_qat.train)
export      the edge-qat export edge-pack imports, and an export's logits at a view
models      loading the float base model (HF folder, or a GGUF dequantized: python -m edge_qat.models)
"""

__version__ = "0.1.0"
