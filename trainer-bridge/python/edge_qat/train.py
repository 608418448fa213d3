"""Randomized-precision QAT: every view of one checkpoint trained at once, against the float model.

Each step samples a view (2, 3, 4, 5, 6, 8 bits or full precision) per tensor, per layer or for
the whole model from --views, runs the fake-quantized student, and minimises
KL(teacher || student) per token, where the teacher is a frozen copy of the float model. No
labels: data is sampled from the teacher itself by default (cached in OUT/data.pt), or a text
file of the user's (never the held-out evaluation text).

The draw alone does not hold the high views: a layer drawn at 8 bits or full precision is
distilled in the context of other layers at 2-4 bits, so it learns to make up for their error,
and the low views' gradients (KL of several nats against hundredths) move the shared latent
weights wherever those views need; Adam turns even tiny gradients into steps of about the rate,
which at 1e-4 is a tenth of a small tensor's 8-bit step. Nothing anchored the whole model's
full-precision forward, and it drifted (stories260K, 300 steps: full-precision KL 0 -> 1.18,
the 8-bit view's 0.031 -> 1.19, while the training loss fell). So every step also distils the
whole model at --anchor (8 bits by default) against the same frozen teacher, weighted by
--anchor-weight (8: the drawn views' KL is ~100x the anchor's), and the rate decays (cosine) so
the last steps refine rather than random-walk on the 8-bit grid (at a constant 1e-4 even an
8-bit-only run raises its own KL, 0.031 -> 0.054; at 1e-5 it lowers it to 0.023).

    python -m edge_qat.train --model /work/shared/models/stories260K-hf --out runs/s260k --steps 300
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import contract
from .export import export, init_from_codes
from .fakequant import FULL, layer_of, project, quantize_model, set_views
from .models import load_model


def parse_views(spec: str) -> tuple[list, list[float]]:
    """'2:1,3:1,4:2,fp:1' -> ([2, 3, 4, None], [0.2, 0.2, 0.4, 0.2])."""
    views, weights = [], []
    for part in spec.split(","):
        k, _, w = part.partition(":")
        k = k.strip()
        v = FULL if k in ("fp", "full") else int(k)
        if v is not FULL and v not in contract.VIEWS:
            raise SystemExit(f"edge-qat: error: view {k} in --views is not one of {contract.VIEWS} or fp")
        views.append(v)
        weights.append(float(w or 1))
    total = sum(weights)
    if total <= 0:
        raise SystemExit("edge-qat: error: --views weights sum to 0")
    return views, [w / total for w in weights]


def sample_views(names: list[str], granularity: str, views, probs, rng: random.Random) -> dict:
    if granularity == "model":
        v = rng.choices(views, probs)[0]
        return {n: v for n in names}
    units = {}
    for n in names:
        u = n if granularity == "tensor" else layer_of(n)
        if u not in units:
            units[u] = rng.choices(views, probs)[0]
    return {n: units[n if granularity == "tensor" else layer_of(n)] for n in names}


@torch.no_grad()
def teacher_data(teacher, n: int, seq_len: int, bos: int, seed: int, device: str, batch: int = 32) -> torch.Tensor:
    """n sequences of seq_len tokens sampled from the teacher (temperature 1, no truncation),
    each starting with BOS. Plain sampling with the KV cache, so no stopping at EOS."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in tqdm(range(0, n, batch), desc="sampling data from the teacher", file=sys.stderr):
        b = min(batch, n - i)
        ids = torch.full((b, 1), bos, dtype=torch.long, device=device)
        past, cur = None, ids
        for _ in range(seq_len - 1):
            o = teacher(cur, past_key_values=past, use_cache=True)
            past = o.past_key_values
            p = torch.softmax(o.logits[:, -1].float(), -1).cpu()
            cur = torch.multinomial(p, 1, generator=g).to(device)
            ids = torch.cat([ids, cur], 1)
        out.append(ids.cpu())
    return torch.cat(out)


def text_data(path: Path, tokenizer: str, seq_len: int) -> torch.Tensor:
    """Windows of seq_len tokens of a text file, tokenized with a HF folder's tokenizer or a
    sentencepiece tokenizer.model."""
    text = path.read_text()
    if tokenizer.endswith(".model"):
        import sentencepiece as spm

        ids = spm.SentencePieceProcessor(model_file=tokenizer).encode(text)
    else:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(tokenizer)(text)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise SystemExit(f"edge-qat: error: {path} has {len(ids)} tokens, fewer than --seq-len {seq_len}")
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)


def run_data(path: Path, seq_len: int, vocab: int) -> torch.Tensor:
    """The sequences another run trained on (its OUT/data.pt), so that a second run (a
    --freeze-top one, say) sees the same data without sampling it again."""
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:  # missing, truncated or not a tensor file
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"edge-qat: error: --data {path} is not a run's data.pt ({why}); pass 'teacher', a text file or a run's OUT/data.pt")
    if not (isinstance(data, torch.Tensor) and data.dim() == 2 and data.dtype == torch.long and data.numel()):
        raise SystemExit(f"edge-qat: error: --data {path} holds no [sequences, tokens] token ids; pass a run's OUT/data.pt")
    if data.shape[1] != seq_len:
        raise SystemExit(f"edge-qat: error: --data {path} holds sequences of {data.shape[1]} tokens, this run {seq_len}: "
                         f"pass --seq-len {data.shape[1]}")
    if int(data.min()) < 0 or int(data.max()) >= vocab:
        raise SystemExit(f"edge-qat: error: --data {path} has token ids outside this model's {vocab}: it is another model's data")
    return data


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student)."""
    t = F.log_softmax(teacher_logits.float(), -1)
    s = F.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def parse_anchor(spec: str):
    """'8' -> 8, 'fp' -> FULL, 'none' -> False (no anchor)."""
    if spec == "none":
        return False
    v = FULL if spec in ("fp", "full") else int(spec) if spec.isdigit() else -1
    if v is not FULL and v not in contract.VIEWS:
        raise SystemExit(f"edge-qat: error: --anchor {spec} is not one of {contract.VIEWS}, fp or none")
    return v


def lr_at(args, step: int) -> float:
    """The rate of step `step` (0-based): constant, or cosine from --lr down to 0 over --steps."""
    if args.schedule == "constant":
        return args.lr
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(args.steps, 1)))


def build(args):
    """Teacher, student, quantizers and optimizer for a run's arguments."""
    teacher = load_model(args.model, args.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    quantizers = quantize_model(student, args.group, learnable=args.learn_params, act_int8=args.act_int8,
                                layout=getattr(args, "params", "f16"))
    if getattr(args, "init_codes", None):
        init_from_codes(student, quantizers, args.init_codes)
    k = getattr(args, "freeze_top", None)
    if k:
        # Only the codes' bits below the top k train: the other tensors (norms) are frozen too,
        # so every view of k bits or fewer is exactly the starting checkpoint's.
        params = dict(student.named_parameters())
        for p in student.parameters():
            p.requires_grad_(False)
        for name, q in quantizers.items():
            q.freeze_top(params[name], k)
            params[name].requires_grad_(True)
    # Group scales are 1e-4..1e-2 (a weight range / 255): at the weights' rate Adam would change
    # them by whole percents a step, so learned group parameters get their own multiple of it.
    weights = [p for n, p in student.named_parameters() if p.requires_grad and ".wq." not in n]
    params = [p for n, p in student.named_parameters() if p.requires_grad and ".wq." in n]
    groups = [{"params": weights, "lr_mult": 1.0}]
    if params:
        groups.append({"params": params, "lr_mult": getattr(args, "param_lr_mult", 1.0)})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    return teacher, student, quantizers, opt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base HF folder (or a folder with a GGUF, dequantized)")
    ap.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, log.jsonl, data.pt, export/")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak Adam rate")
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine", help="rate over the run (cosine: --lr down to 0)")
    ap.add_argument("--anchor", default="8", help="view (8, 6, ..., fp) the whole model is also distilled at every step, or 'none'")
    ap.add_argument("--anchor-weight", type=float, default=8.0, help="weight of the anchor's KL against the drawn views' KL")
    ap.add_argument("--group", type=int, help="group size (a multiple of 8) [default: 64; 32 with --params super]")
    ap.add_argument("--params", choices=["f16", "super"], default="f16",
                    help="group parameters as the runtime stores them: an f16 scale and minimum per group, or 6-bit codes "
                         "under an f16 pair per 8 groups (edge-pack --params super; fixed at min/max, not learnable)")
    ap.add_argument("--views", default="2:1,3:1,4:1,5:1,6:1,8:1,fp:1", help="view distribution, VIEW:WEIGHT,... (VIEW in 2,3,4,5,6,8,fp)")
    ap.add_argument("--granularity", choices=["tensor", "layer", "model"], default="layer")
    ap.add_argument("--learn-params", action="store_true", help="learn group scale and min (LSQ), rounded to f16 in the forward pass")
    ap.add_argument("--param-lr-mult", type=float, default=0.01, help="with --learn-params: the group parameters' rate as a multiple of --lr")
    ap.add_argument("--act-int8", action="store_true", help="emulate the runtime's int8 activations before nested matmuls")
    ap.add_argument("--init-codes", type=Path, help="start at these codes instead of min/max ones: an export, or "
                    "`edge-pack PACK.edge --export-codes DIR` of a post-training pack (GPTQ's, say)")
    ap.add_argument("--freeze-top", type=int, metavar="K", help="with --init-codes: keep the top K bits of every code (so every "
                    "view of K bits or fewer, and the norms) as given and train only the bits below them, at views above K "
                    "(e.g. after `edge_qat.refit --keep K` of a run that favoured the low views)")
    ap.add_argument("--data", default="teacher", help="'teacher' (sequences sampled from the float model), a text file, or "
                    "another run's OUT/data.pt (its sequences again, e.g. for a --freeze-top run)")
    ap.add_argument("--tokenizer", help="for --data FILE: a HF folder or a sentencepiece .model (default: --model)")
    ap.add_argument("--samples", type=int, default=256, help="teacher sequences to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)
    if args.group is None:
        args.group = 32 if args.params == "super" else 64
    if args.params == "super" and args.learn_params:
        raise SystemExit("edge-qat: error: super-block group parameters are fixed (min/max): drop --learn-params or use --params f16")
    if args.group <= 0 or args.group % 8:
        raise SystemExit(f"edge-qat: error: --group {args.group} is not a positive multiple of 8")
    views, probs = parse_views(args.views)
    anchor = parse_anchor(args.anchor)
    if args.freeze_top is not None:
        k = args.freeze_top
        if not 1 <= k <= 7:
            raise SystemExit(f"edge-qat: error: --freeze-top {k} is not 1..7")
        if not args.init_codes:
            raise SystemExit("edge-qat: error: --freeze-top keeps the bits of given codes: pass --init-codes DIR")
        if args.learn_params:
            raise SystemExit("edge-qat: error: --freeze-top needs fixed group parameters: drop --learn-params")
        low = [v for v in views if v is not FULL and v <= k] + ([anchor] if anchor not in (False, FULL) and anchor <= k else [])
        if low:
            raise SystemExit(f"edge-qat: error: --freeze-top {k} leaves views of {k} bits or fewer as given: "
                             f"draw (--views) and anchor (--anchor) above {k} bits, e.g. --views 5:1,6:1,8:1")
    args.out.mkdir(parents=True, exist_ok=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    teacher, student, quantizers, opt = build(args)
    names = list(quantizers)

    # Data: cached, so a resumed run trains on the same sequences.
    data_file = args.out / "data.pt"
    if data_file.exists():
        data = torch.load(data_file)
    elif args.data == "teacher":
        bos = teacher.config.bos_token_id if teacher.config.bos_token_id is not None else 1
        data = teacher_data(teacher, args.samples, args.seq_len, bos, args.seed, args.device)
        torch.save(data, data_file)
    elif args.data.endswith(".pt"):
        data = run_data(Path(args.data), args.seq_len, teacher.config.vocab_size)
        torch.save(data, data_file)
    else:
        data = text_data(Path(args.data), args.tokenizer or args.model, args.seq_len)
        torch.save(data, data_file)

    step, log, seconds = 0, [], 0.0
    ckpt = args.out / "checkpoint.pt"
    view_rng = random.Random(args.seed)
    if args.resume:
        if not ckpt.exists():
            raise SystemExit(f"edge-qat: error: --resume but {ckpt} does not exist")
        c = torch.load(ckpt, weights_only=False)
        student.load_state_dict(c["student"])
        opt.load_state_dict(c["opt"])
        step, seconds = c["step"], c["seconds"]
        random.setstate(c["rng"]["python"])
        np.random.set_state(c["rng"]["numpy"])
        torch.set_rng_state(c["rng"]["torch"])
        view_rng.setstate(c["view_rng"])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(f"edge-qat: seed {args.seed}, device {args.device}, {len(names)} quantized tensors, group {args.group}, "
          f"views {dict(zip(map(str, views), probs))}, anchor {args.anchor} x{args.anchor_weight}, lr {args.lr} {args.schedule}, "
          f"data {args.data} ({tuple(data.shape)})", file=sys.stderr)

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"student": student.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds,
                    "rng": rng_state(), "view_rng": view_rng.getstate(), "config": config}, tmp)
        tmp.replace(ckpt)

    bar = tqdm(total=args.steps, initial=step, desc="QAT", file=sys.stderr)
    with open(args.out / "log.jsonl", "a") as logf:
        while step < args.steps:
            t0 = time.perf_counter()
            idx = torch.randint(0, data.shape[0], (args.batch,))
            x = data[idx].to(args.device)
            with torch.no_grad():
                t_logits = teacher(x).logits
            for g in opt.param_groups:
                g["lr"] = lr_at(args, step) * g["lr_mult"]
            opt.zero_grad(set_to_none=True)
            set_views(quantizers, sample_views(names, args.granularity, views, probs, view_rng))
            loss = kl_loss(student(x).logits, t_logits)
            loss.backward()
            rec = {"step": step + 1, "loss": loss.item()}
            if anchor is not False and args.anchor_weight > 0:
                set_views(quantizers, anchor)
                a_loss = kl_loss(student(x).logits, t_logits)
                (args.anchor_weight * a_loss).backward()
                rec["anchor_loss"] = a_loss.item()
            opt.step()
            project(student, quantizers)
            step += 1
            seconds += time.perf_counter() - t0
            rec["seconds"] = round(seconds, 3)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()  # so that a running job's log can be followed
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
            if step % args.ckpt_every == 0 or step == args.steps:
                save()
    bar.close()
    set_views(quantizers, FULL)
    if not args.no_export:
        train = {"steps": step, "seed": args.seed, "views": args.views, "granularity": args.granularity,
                 "anchor": args.anchor, "anchor_weight": args.anchor_weight, "schedule": args.schedule,
                 "data": args.data, "samples": int(data.shape[0]), "seq_len": args.seq_len, "batch": args.batch,
                 "lr": args.lr, "learn_params": args.learn_params, "act_int8": args.act_int8, "params": args.params,
                 "init_codes": str(args.init_codes) if args.init_codes else None, "freeze_top": args.freeze_top,
                 "device": args.device, "seconds": round(seconds, 1)}
        out = export(student, quantizers, args.model, args.out / "export", args.group, train)
        print(f"edge-qat: exported {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
