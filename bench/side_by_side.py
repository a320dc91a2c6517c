#!/usr/bin/env python3
"""Side-by-side training throughput: the moelab engine against a plain PyTorch implementation of
the same model (eager, and torch.compile), same config, same data, same optimizer settings.

    .venv/bin/python bench/side_by_side.py [--repeats 3] [--steps 40] [--config FILE]

Without --config: sweeps/jobs/demo-tiny.json on the CPU, or the paper's 125M-active 64-8-384 KERN
model at sequence length 1024 in bf16 when a CUDA device is visible. The engine is the real
`moelab train` on GPT-2 tokens of the Austen corpus; its tokens/s are the ones it records in its
store for each logging interval (training only), the first interval left out as warm-up. The
PyTorch side times the same loop (micro-batches, clipping, AdamW) after the same warm-up. Each side
runs --repeats times, the sides interleaved; min, median and max are printed, and the ratios of the
medians and of the best runs.

--before-bin PATH adds a side "before": `moelab` built from an earlier commit, to measure an engine
change against its predecessor in the same run (--sides engine,before skips the PyTorch sides).
The side "graph" is the engine with its step captured as a CUDA graph (train.cuda_graph; GPU only,
bf16), and "aten" the engine with moelab's own CUDA kernels turned off (MOELAB_ATEN_ONLY=1, ATen's
kernels instead): --sides engine,aten,graph measures what each buys. The other sides run with
MOELAB_ATEN_ONLY as this script was given it (unset: every kernel on).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MOELAB = Path(os.environ.get("MOELAB_BIN", ROOT / "build" / "moelab"))  # another build: MOELAB_BIN=build6/moelab
LOG_EVERY = 10


# ---------------------------------------------------------------- the model, as in engine/model/*

class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class KernRouter(nn.Module):
    """g = gamma * ReLU(s / (||s|| + eps)), then top-k; softmax(s) then top-k for "softmax"."""

    def __init__(self, d, experts, top_k, kind):
        super().__init__()
        self.proj = nn.Linear(d, experts)
        self.gamma = nn.Parameter(torch.ones(())) if kind == "kern" else None
        self.top_k, self.kind = top_k, kind

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            s = self.proj(x.float())
            if self.kind == "kern":
                g = self.gamma * torch.relu(s / (s.norm(dim=-1, keepdim=True) + 1e-8))
            else:
                g = torch.softmax(s, -1)
            index = g.topk(self.top_k, -1).indices
            return index, g.gather(-1, index)


class Experts(nn.Module):
    """Dropless sort-based dispatch: sort (token, expert) slots by expert, one matmul per expert
    group, weighted combine with index_add."""

    def __init__(self, experts, d, hidden):
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(experts, d, hidden))
        self.b_in = nn.Parameter(torch.zeros(experts, hidden))
        self.w_out = nn.Parameter(torch.empty(experts, hidden, d))
        self.b_out = nn.Parameter(torch.zeros(experts, d))

    # Group sizes are data: torch.compile would recompile for every new set of them, so the
    # dispatch runs eagerly and compilation covers the rest of the model.
    @torch.compiler.disable
    def forward(self, x, index, gate):
        E, k = self.w_in.shape[0], index.shape[1]
        flat = index.flatten()
        order = flat.argsort(stable=True)
        token = order // k
        grouped = x.index_select(0, token)
        counts = torch.bincount(flat, minlength=E).tolist()
        # Rows and weights split into experts once: a slice per expert (grouped[a:b], self.w_in[e])
        # would have each expert's backward write its gradient into a zeroed tensor of the whole.
        w_in, b_in, w_out, b_out = (p.unbind(0) for p in (self.w_in, self.b_in, self.w_out, self.b_out))
        outputs = []
        for e, rows in enumerate(grouped.split(counts)):
            if len(rows):
                outputs.append(torch.addmm(b_out[e], F.gelu(torch.addmm(b_in[e], rows, w_in[e])), w_out[e]))
        y = torch.cat(outputs).to(x.dtype) * gate.flatten()[order].to(x.dtype).unsqueeze(1)
        return torch.zeros_like(x).index_add_(0, token, y)


class Block(nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, m["heads"])
        self.router = KernRouter(d, m["experts"], m["top_k"], m["router"])
        self.experts = Experts(m["experts"], d, m["expert_size"])

    def forward(self, x):
        h = x + self.attn(self.ln_attn(x))
        tokens = self.ln_ffn(h).reshape(-1, h.shape[-1])
        index, gate = self.router(tokens)
        return h + self.experts(tokens, index, gate).view(h.shape)


class Gpt(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.token_embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.position_embedding = nn.Embedding(m["seq_len"], m["d_model"])
        self.blocks = nn.ModuleList(Block(m) for _ in range(m["layers"]))
        self.ln_final = nn.LayerNorm(m["d_model"])
        residual_std = 0.02 / math.sqrt(2 * m["layers"])
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, residual_std if name.endswith(("attn.out.weight", "w_out")) else 0.02)

    def forward(self, tokens, targets):
        x = self.token_embedding(tokens) + self.position_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_final(x) @ self.token_embedding.weight.t()  # tied output
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


# ---------------------------------------------------------------- configs and data

def paper_125m_config(base):
    config = json.loads(json.dumps(base))
    config["name"] = "side-by-side-125m"
    config["model"].update(seq_len=1024, layers=12, d_model=768, heads=12, experts=64, top_k=8, expert_size=384)
    config["train"].update(batch_size=8, micro_batch=8, precision="bf16", device="cuda", lr=6e-4)
    return config


def prepare_data(work):
    data = work / "data"
    if not (data / "meta.json").exists():
        subprocess.run([MOELAB, "data", "prepare", "--corpus", "austen", "--tokenizer", "gpt2", "--out", data],
                       check=True, stdout=subprocess.DEVNULL)
    return data


def model_sizes(config_path):
    out = subprocess.run([MOELAB, "params", "--config", config_path, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- the two sides

def engine_tokens_per_s(binary, side, config_path, steps, work, run):
    db, run_dir = work / f"{side}-{run}.db", work / f"{side}-{run}"
    db.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    graph = ["--set", "train.cuda_graph=true"] if side == "graph" else []  # builds before it lack the key
    # The other sides keep MOELAB_ATEN_ONLY as given: scripts/gpu_machine.sh names there the kernels
    # whose CUDA tests failed, which must stay off in every side.
    env = dict(os.environ, **({"MOELAB_ATEN_ONLY": "1"} if side == "aten" else {}))
    subprocess.run([binary, "train", "--quiet", "--config", config_path, "--db", db, "--run-dir", run_dir,
                    "--set", f"train.steps={steps}", "--set", f"train.log_every={LOG_EVERY}",
                    "--set", f"train.eval_every={steps}", "--set", f"train.checkpoint_every={steps}",
                    "--set", "train.eval_batches=1", *graph], check=True, env=env)
    sql = "SELECT tokens_per_s, loss FROM metrics WHERE split = 'train' ORDER BY step"  # through db query
    table = subprocess.run([MOELAB, "db", "query", sql, "--db", db], check=True, capture_output=True, text=True).stdout
    rows = [tuple(float(v) for v in line.split()) for line in table.splitlines()[1:]]
    # The first interval holds the warm-up. The last loss: engine sides train the same model on the
    # same data, so theirs agree to bf16's run-to-run noise, a check that a variant computes the same.
    return statistics.median(r[0] for r in rows[1:]), rows[-1][1]


def pytorch_tokens_per_s(config, data, steps, compiled, device):
    m, t = config["model"], config["train"]
    torch.manual_seed(config["seed"])
    model = Gpt(m).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.get("weight_decay", 0.1)},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=t["lr"], betas=tuple(t.get("betas", (0.9, 0.95))), eps=1e-8)
    loss_fn = torch.compile(model) if compiled else model
    dtype = json.loads((data / "meta.json").read_text())["dtype"]  # headerless little-endian tokens
    tokens = np.memmap(data / "train.bin", dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    rng = np.random.default_rng(config["seed"])
    T, micro = m["seq_len"], t["micro_batch"]
    accumulation = t["batch_size"] // micro
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and t.get("precision") == "bf16")

    def batch():
        offsets = rng.integers(0, len(tokens) - T - 1, micro)
        window = torch.from_numpy(np.stack([tokens[o:o + T + 1].astype(np.int64) for o in offsets])).to(device)
        return window[:, :-1], window[:, 1:]

    def step():
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            inputs, targets = batch()
            with autocast:
                loss = loss_fn(inputs, targets) / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
        optimizer.step()
        return loss.item()  # the engine reads its loss every step too

    for _ in range(LOG_EVERY):  # warm-up (and compilation), as the engine's first interval
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps - LOG_EVERY):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    parameters = sum(p.numel() for p in model.parameters())
    return (steps - LOG_EVERY) * t["batch_size"] * T / (time.perf_counter() - start), parameters


def summary(values):
    return f"min {min(values):10.0f}  median {statistics.median(values):10.0f}  max {max(values):10.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="job config (default: demo-tiny on CPU, the 125M 64-8-384 model on GPU)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run, the first 10 warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default="engine,eager,compile",
                        help="comma-separated, in the order each repeat runs them: engine, before, aten, graph, eager, "
                             "compile (default engine,eager,compile, and before when --before-bin is given)")
    parser.add_argument("--before-bin", type=Path, help="moelab built from an earlier commit: the side 'before'")
    parser.add_argument("--batch-size", type=int, help="sequences per optimizer step (train.batch_size), both sides")
    parser.add_argument("--micro-batch", type=int, help="sequences per forward pass (train.micro_batch), both sides")
    args = parser.parse_args()
    if not MOELAB.exists():
        sys.exit(f"{MOELAB} is missing: build it first (cmake --build build --target moelab)")
    if args.steps <= 2 * LOG_EVERY:
        sys.exit(f"--steps must exceed {2 * LOG_EVERY}: the first {LOG_EVERY} steps are warm-up")
    sides = args.sides.split(",")
    if args.before_bin and "before" not in sides:
        sides.insert(1, "before")
    unknown = set(sides) - {"engine", "before", "aten", "graph", "eager", "compile"}
    if unknown or "engine" not in sides:
        sys.exit(f"--sides {args.sides}: choose among engine, before, aten, graph, eager, compile, engine included")
    if "before" in sides and not (args.before_bin and args.before_bin.exists()):
        sys.exit(f"the side 'before' needs --before-bin naming an existing moelab binary (got {args.before_bin})")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = json.loads((ROOT / "sweeps/jobs/demo-tiny.json").read_text())
    config = json.loads(Path(args.config).read_text()) if args.config else (
        paper_125m_config(base) if device.type == "cuda" else base)
    for option, field in ((args.batch_size, "batch_size"), (args.micro_batch, "micro_batch")):
        if option:
            config["train"][field] = option
    if config["model"].get("router", "kern") not in ("kern", "softmax"):
        sys.exit("the PyTorch side implements the kern and softmax routers")

    work = ROOT / "runs" / "side-by-side"
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work)
    config["data"].update(train=str(data / "train.bin"), val=str(data / "val.bin"), tokenizer="gpt2")
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config, indent=2))

    sizes = model_sizes(config_path)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {config['model']}; "
          f"batch {config['train']['batch_size']} x seq {config['model']['seq_len']}")

    results = {side: [] for side in sides}
    parameters = None
    for run in range(args.repeats):
        for side in sides:
            last_loss = ""
            if side in ("engine", "before", "aten", "graph"):
                binary = args.before_bin if side == "before" else MOELAB
                tokens_per_s, loss = engine_tokens_per_s(binary, side, config_path, args.steps, work, run)
                last_loss = f" (loss at step {args.steps}: {loss:.4f})"
            else:
                tokens_per_s, parameters = pytorch_tokens_per_s(config, data, args.steps, side == "compile", device)
            results[side].append(tokens_per_s)
            print(f"run {run}: {side} {tokens_per_s:.0f} tokens/s{last_loss}", flush=True)

    if parameters is not None:
        if parameters != sizes["total_params"]:
            sys.exit(f"parameter counts differ: engine {sizes['total_params']}, PyTorch {parameters}")
        print(f"parameters: {parameters} in both (engine: moelab params)")
    for side, values in results.items():
        print(f"{side:8s} tokens/s  {summary(values)}")
    # Medians, and the best runs (least disturbed by whatever else the machine was doing).
    engine = statistics.median(results["engine"])
    for other in (side for side in sides if side != "engine"):
        print(f"engine / {other:7s} {engine / statistics.median(results[other]):.3f}x (medians), "
              f"{max(results['engine']) / max(results[other]):.3f}x (best runs)")
    if device.type == "cuda":  # model FLOPs (moelab params: 6 x active matmul parameters + attention)
        for side, values in results.items():
            mfu = sizes["flops_per_token"] * statistics.median(values) / 989e12
            print(f"{side:8s} MFU {mfu:.1%} of 989 TFLOP/s (H100/H200 bf16 dense)")


if __name__ == "__main__":
    main()
