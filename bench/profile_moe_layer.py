#!/usr/bin/env python3
"""Where the GPU time of the paper's MoE layer goes, kernel by kernel (torch.profiler; needs CUDA).

    python3 bench/profile_moe_layer.py [--tokens 8192]

The engine's ops for 8192 tokens (one 8 x 1024 micro-batch), d 768, 64 experts, top-8, size 384, in
bf16 autocast as in training, written again in Python: the softmax and KERN routers alone (KERN's
normalisation op by op, as the engine did, and as weight normalisation's fused kernel, as it does
now), and the expert computation with the slot dispatch of engine/model/slot_dispatch.cpp, the
gates applied when combining each token's k rows by batched 1 x k products (as the engine did) and
inside the experts, scaling the second matmul's input, so that combining is a plain sum (as it does
now). Prints, for each, the GPU time of one forward+backward and the kernels that take most of it.
Kernel times are the GPU's own, so Python's launch overhead does not enter them. For a whole
training step of the engine itself, use `moelab train --profile-steps N`.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

D, E, K, H = 768, 64, 8, 384


def route(x, proj, gamma, kind):
    with torch.autocast("cuda", enabled=False):  # router math in fp32, as the engine does
        s = proj(x.float())
        if kind == "kern":  # the row normalisation as weight normalisation's fused kernel, as the engine does
            g = gamma * torch.relu(torch._weight_norm(s + 1e-8, s.new_ones(s.shape[0], 1), 0))
        elif kind == "kern_op_by_op":  # the engine before
            g = gamma * torch.relu(s / (s.norm(dim=-1, keepdim=True) + 1e-8))
        else:
            g = torch.softmax(s, -1)
        index = g.topk(K, -1).indices
        return index, g.gather(-1, index)


def pad8(n):
    return (n + 7) // 8 * 8


def ones_column(x, cols):
    n = x.shape[0]
    return torch.cat([x, x.new_ones(n, 1), x.new_zeros(n, cols - x.shape[1] - 1)], 1)


def bias_row(w, b, rows):
    return torch.cat([w, b.unsqueeze(1), w.new_zeros(w.shape[0], rows - w.shape[1] - 1, w.shape[2])], 1)


def sum_per_token(rows, position_of_slot):
    """rows in sorted order -> each token's K rows side by side, summed."""
    return rows.index_select(0, position_of_slot).view(-1, K, rows.shape[1]).sum(1)


class GatherSlots(torch.autograd.Function):
    """rows[p] = x[token_of_position[p]]; backward: each token sums its k slots' gradients."""

    @staticmethod
    def forward(ctx, x, token_of_position, position_of_slot):
        ctx.save_for_backward(position_of_slot)
        return x.index_select(0, token_of_position)

    @staticmethod
    def backward(ctx, grad):
        (position_of_slot,) = ctx.saved_tensors
        return sum_per_token(grad, position_of_slot), None, None


class SumSlots(torch.autograd.Function):
    """GatherSlots' adjoint: out[t] = sum of token t's K rows; backward: a gather."""

    @staticmethod
    def forward(ctx, rows, token_of_position, position_of_slot):
        ctx.save_for_backward(token_of_position)
        return sum_per_token(rows, position_of_slot)

    @staticmethod
    def backward(ctx, grad):
        (token_of_position,) = ctx.saved_tensors
        return grad.index_select(0, token_of_position), None, None


class CombineSlots(torch.autograd.Function):
    """out[t] = sum_j gate[t, j] * rows[position of slot t*K + j], as a batch of 1 x K by K x D products."""

    @staticmethod
    def forward(ctx, rows, gate, token_of_position, slot_of_position, position_of_slot):
        by_token = rows.index_select(0, position_of_slot).view(-1, K, rows.shape[1])
        ctx.save_for_backward(by_token, gate, token_of_position, slot_of_position)
        return torch.bmm(gate.to(rows.dtype).unsqueeze(1), by_token).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        by_token, gate, token_of_position, slot_of_position = ctx.saved_tensors
        grad = grad.to(by_token.dtype)
        grad_rows = grad.index_select(0, token_of_position) * gate.flatten()[slot_of_position].to(grad.dtype).unsqueeze(1)
        grad_gate = torch.bmm(by_token, grad.unsqueeze(2)).squeeze(2).to(gate.dtype)
        return grad_rows, grad_gate, None, None, None


def expert_matmuls(rows, offsets, p, sorted_gate=None):
    """With sorted_gate, each row's second-matmul input is scaled by its gate (bias column included)."""
    w_in, b_in, w_out, b_out = (t.bfloat16() for t in p)
    h = torch._grouped_mm(rows, bias_row(w_in, b_in, pad8(D + 1)), offsets)
    a = ones_column(F.gelu(h), pad8(H + 1))
    if sorted_gate is not None:
        a = a * sorted_gate.to(a.dtype).unsqueeze(1)
    return torch._grouped_mm(a, bias_row(w_out, b_out, pad8(H + 1)), offsets)


def experts(x, index, gate, p, gates_in_experts):
    flat = index.flatten()
    order = flat.sort(stable=True).indices
    token = order // K
    counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    offsets = counts.cumsum(0).int()
    position = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
    rows = GatherSlots.apply(ones_column(x.bfloat16(), pad8(D + 1)), token, position)
    if gates_in_experts:
        return SumSlots.apply(expert_matmuls(rows, offsets, p, gate.flatten()[order]), token, position).float()
    return CombineSlots.apply(expert_matmuls(rows, offsets, p), gate, token, order, position).float()


def measure(name, step, iterations=10):
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in kernels) / iterations / 1e3
    print(f"\n{name}: {total:.3f} ms of GPU time per forward+backward")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
        print(f"  {e.self_device_time_total / iterations / 1e3:8.3f} ms  {e.count // iterations:3d}x  {e.key[:100]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    x = torch.randn(args.tokens, D, device=cuda, requires_grad=True)
    proj = torch.nn.Linear(D, E).to(cuda)
    gamma = torch.ones((), device=cuda, requires_grad=True)
    p = [torch.nn.Parameter(torch.randn(*shape, device=cuda) * 0.02) for shape in ((E, D, H), (E, H), (E, H, D), (E, D))]
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; {args.tokens} tokens")

    def router_step(kind):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, gate = route(x, proj, gamma, kind)
        gate.sum().backward()

    def layer_step(gates_in_experts):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            index, gate = route(x, proj, gamma, "kern")
            out = experts(x, index, gate, p, gates_in_experts)
        out.sum().backward()

    measure("router softmax", lambda: router_step("softmax"))
    measure("router kern, op by op (the engine before)", lambda: router_step("kern_op_by_op"))
    measure("router kern, fused row normalisation (the engine)", lambda: router_step("kern"))
    measure("layer, gates applied in the combine by batched 1 x K products (the engine before)", lambda: layer_step(False))
    measure("layer, gates applied inside the experts, combine a plain sum (the engine)", lambda: layer_step(True))


if __name__ == "__main__":
    main()
