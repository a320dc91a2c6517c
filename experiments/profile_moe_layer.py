#!/usr/bin/env python3
"""Where the GPU time of the paper's MoE layer goes, kernel by kernel (torch.profiler; needs CUDA).

    python3 experiments/profile_moe_layer.py [--tokens 8192]

The engine's ops for 8192 tokens (one 8 x 1024 micro-batch), d 768, 64 experts, top-8, size 384, in
bf16 autocast as in training, written again in Python, each as the engine computed it before and as
it does now:
- the routers alone: softmax, and KERN's row normalisation as weight normalisation's fused kernel with
  scale 1 followed by gamma * ReLU (before), and with gamma as the scale followed by ReLU (now);
- the expert computation with the slot dispatch of engine/model/slot_dispatch.cpp: the gates applied
  when combining each token's k rows by batched 1 x k products (the last form measured on a GPU);
  the gates scaling the second matmul's input, its bias a weight row against a column of ones, so
  that combining is a plain sum; and that with the output bias added per token after the combine,
  spread gates [T, E] times biases [E, d], so the second matmul takes the activation as it is; and
  that with each token's k rows summed by an embedding bag instead of a gather and a sum, and the
  expert ids sorted as bytes; and that with the input bias added to the first matmul's output by a
  one-hot [slots, E] x b_in product instead of riding in it as a weight row; and that with w_in stored
  as [E, H, D] in memory, so that its gradient, computed in the weight's layout, is [H, D] per expert:
  3 x 3 full CUTLASS tiles of 128 x 256 instead of 6 x 2 with a quarter empty (now); and, as an
  experiment not in the engine, that with each weight's gradient computed over chunks of at most C rows
  of an expert and the chunks' products summed per expert (index_add_): ATen's grouped kernel gives
  each expert's gradient tiles a loop over all of the expert's rows, so tiles of busy experts run
  longest and the rest of the GPU waits, where the other grouped products of the same FLOPs have
  tiles that are all alike.
Prints, for each, the GPU time of one forward+backward and the kernels that take most of it.
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
        if kind == "kern_scale_one":  # the engine before
            g = gamma * torch.relu(torch._weight_norm(s + 1e-8, s.new_ones(s.shape[0], 1), 0))
        elif kind == "kern":
            g = torch.relu(torch._weight_norm(s + 1e-8, gamma.expand(s.shape[0], 1), 0))
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


def sum_per_token(rows, position_of_slot, bags):
    """rows in sorted order -> each token's K rows summed: gathered side by side and summed, or, with
    bags, as an embedding bag of K rows per token, which reads them in place (as the engine does)."""
    if bags:
        return F.embedding_bag(position_of_slot.view(-1, K), rows, mode="sum")
    return rows.index_select(0, position_of_slot).view(-1, K, rows.shape[1]).sum(1)


class GatherSlots(torch.autograd.Function):
    """rows[p] = x[token_of_position[p]]; backward: each token sums its k slots' gradients."""

    @staticmethod
    def forward(ctx, x, token_of_position, position_of_slot, bags):
        ctx.save_for_backward(position_of_slot)
        ctx.bags = bags
        return x.index_select(0, token_of_position)

    @staticmethod
    def backward(ctx, grad):
        (position_of_slot,) = ctx.saved_tensors
        return sum_per_token(grad, position_of_slot, ctx.bags), None, None, None


class SumSlots(torch.autograd.Function):
    """GatherSlots' adjoint: out[t] = sum of token t's K rows; backward: a gather."""

    @staticmethod
    def forward(ctx, rows, token_of_position, position_of_slot, bags):
        ctx.save_for_backward(token_of_position)
        return sum_per_token(rows, position_of_slot, bags)

    @staticmethod
    def backward(ctx, grad):
        (token_of_position,) = ctx.saved_tensors
        return grad.index_select(0, token_of_position), None, None, None


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


def chunk_layout(offsets, rows, chunk):
    """Each expert's rows cut into chunks of at most `chunk` rows: the chunks' row ends, as group ends
    for a grouped matmul over a fixed number of chunks (those past the last are empty), and each
    chunk's expert (E for the empty ones)."""
    ends = offsets.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    counts = ends - starts
    per_expert = (counts + chunk - 1) // chunk
    after_last = per_expert.cumsum(0)
    i = torch.arange(rows // chunk + E + 1, device=offsets.device)  # at least the sum of ceil(count / chunk)
    expert = torch.searchsorted(after_last, i, right=True)
    e = expert.clamp(max=E - 1)
    j = i - (after_last[e] - per_expert[e])
    chunk_ends = torch.where(expert < E, starts[e] + torch.minimum((j + 1) * chunk, counts[e]), ends[-1])
    return chunk_ends.int(), expert


class ChunkedWeightGrad(torch.autograd.Function):
    """y = grouped_mm(a, w, offsets); the backward computes w's gradient per chunk of an expert's rows
    (in w's memory layout, as autograd does) and sums each expert's chunks."""

    @staticmethod
    def forward(ctx, a, w, offsets, chunk_ends, chunk_expert):
        ctx.save_for_backward(a, w, offsets, chunk_ends, chunk_expert)
        return torch._grouped_mm(a, w, offs=offsets)

    @staticmethod
    def backward(ctx, grad):
        a, w, offsets, chunk_ends, chunk_expert = ctx.saved_tensors
        grad_a = torch._grouped_mm(grad, w.transpose(-2, -1), offs=offsets)
        transposed = w.stride(-2) == 1
        partial = (torch._grouped_mm(grad.t(), a, offs=chunk_ends) if transposed
                   else torch._grouped_mm(a.t(), grad, offs=chunk_ends))
        summed = partial.new_zeros((E + 1,) + partial.shape[1:], dtype=torch.float32)
        summed.index_add_(0, chunk_expert, partial.float())
        grad_w = summed[:E].to(w.dtype)
        return grad_a, grad_w.transpose(-2, -1) if transposed else grad_w, None, None, None


# The expert forms in the order the engine went through them; each has the changes of those before.
FORMS = ("combine", "gates_inside", "bias_after", "bags", "bias_addmm", "dw_chunks")


def has(form, change):
    """Whether `form` has `change`, the form that brought it ("dw_chunks_512" is the form "dw_chunks")."""
    return FORMS.index(form.rsplit("_", 1)[0] if form.startswith("dw_chunks") else form) >= FORMS.index(change)


def expert_matmuls(rows, offsets, p, form, sorted_gate, expert_of_position):
    """Each form's grouped matmuls; all but "combine" scale each row's second-matmul input by its gate."""
    w_in, b_in, w_out, b_out = (t.bfloat16() for t in p)
    if has(form, "dw_chunks"):
        chunks = chunk_layout(offsets, rows.shape[0], int(form.rsplit("_", 1)[1]))
        grouped = lambda a, w: ChunkedWeightGrad.apply(a, w, offsets, *chunks)
    else:
        grouped = lambda a, w: torch._grouped_mm(a, w, offs=offsets)
    if has(form, "bias_addmm"):  # rows without the ones column, the input biases added in place
        one_hot = rows.new_zeros(rows.shape[0], E).scatter_(1, expert_of_position.unsqueeze(1), 1)
        a = F.gelu(grouped(rows, w_in).addmm_(one_hot, b_in))
    else:
        a = F.gelu(grouped(rows, bias_row(w_in, b_in, pad8(D + 1))))
    if has(form, "bias_after"):
        return grouped(a * sorted_gate.to(a.dtype).unsqueeze(1), w_out)
    a = ones_column(a, pad8(H + 1))
    if has(form, "gates_inside"):
        a = a * sorted_gate.to(a.dtype).unsqueeze(1)
    return grouped(a, bias_row(w_out, b_out, pad8(H + 1)))


def experts(x, index, gate, p, form):
    flat = index.flatten()
    bags = has(form, "bags")
    keys, order = (flat.to(torch.uint8) if bags else flat).sort(stable=True)
    token = order // K
    if bags:  # the engine's group ends: a binary search in the sorted ids
        offsets = torch.searchsorted(keys, torch.arange(E, dtype=keys.dtype, device=x.device), out_int32=True, right=True)
    else:
        counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        offsets = counts.cumsum(0).int()
    position = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
    rows = x.bfloat16() if has(form, "bias_addmm") else ones_column(x.bfloat16(), pad8(D + 1))
    rows = GatherSlots.apply(rows, token, position, bags)
    y = expert_matmuls(rows, offsets, p, form, gate.flatten()[order], keys.long())
    if form == "combine":
        return CombineSlots.apply(y, gate, token, order, position).float()
    out = SumSlots.apply(y, token, position, bags)
    if has(form, "bias_after"):
        spread = torch.zeros(x.shape[0], E, device=x.device).scatter(1, index, gate)
        out = out + spread @ p[3]
    return out.float()


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

    # the same values, w_in lying in memory as [E, H, D] (the engine's layout)
    p_transposed = [torch.nn.Parameter(p[0].detach().transpose(1, 2).contiguous().transpose(1, 2))] + p[1:]

    def layer_step(form, params=p):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            index, gate = route(x, proj, gamma, "kern")
            out = experts(x, index, gate, params, form)
        out.sum().backward()

    measure("router softmax", lambda: router_step("softmax"))
    measure("router kern, weight norm with scale 1, then gamma * ReLU (the engine before)", lambda: router_step("kern_scale_one"))
    measure("router kern, gamma as the weight norm's scale, then ReLU (the engine)", lambda: router_step("kern"))
    measure("layer, gates applied in the combine by batched 1 x K products (last measured on a GPU)", lambda: layer_step("combine"))
    measure("layer, gates inside the experts, output bias as a weight row", lambda: layer_step("gates_inside"))
    measure("layer, gates inside the experts, output bias added after the combine", lambda: layer_step("bias_after"))
    measure("layer, that with embedding-bag sums and expert ids sorted as bytes", lambda: layer_step("bags"))
    measure("layer, that with the input bias added by a one-hot matmul, not a weight row",
            lambda: layer_step("bias_addmm"))
    measure("layer, that with w_in stored as [E, H, D], its gradient [H, D] per expert (the engine)",
            lambda: layer_step("bias_addmm", p_transposed))
    for chunk in (512, 1024):
        measure(f"layer, the engine's with each weight gradient summed over chunks of {chunk} rows (an experiment)",
                lambda: layer_step(f"dw_chunks_{chunk}", p_transposed))


if __name__ == "__main__":
    main()
