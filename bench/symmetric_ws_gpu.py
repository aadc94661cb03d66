"""Warp specialisation for `fastoptim.symmetric`'s upper-tile kernel, timed against it on the GPU before it is adopted.

Triton warp-specialises a loop (`tl.range(warp_specialize=True)`: producer warps issue the TMA loads while the
others run the products) on Hopper only with tensor descriptors made on the device (`tl.make_tensor_descriptor`),
where the committed kernel takes descriptors made on the host. So the variants are: device descriptors alone (what
that change costs by itself), then the persistent loop or the K loop warp-specialised, at 8 and 4 warps. The
epilogue is branch-free (a diagonal tile made symmetric by a select, every tile stored twice), as a specialised loop
needs. Each launch is checked first against torch's product in fp32 (and for exact symmetry); a launch that fails to
compile or is wrong is reported as such. Timed in rounds, every variant once per round in a rotated order, median of
the rounds' medians. The LLM-like set's stacks, bf16. Then Muon's step on the LLM-like set's 112 hidden matrices (bf16
weights), the default and `aol=True`, with each variant that passed every case patched in as `symmetric_product`,
against `torch.optim.Muon`, in interleaved rounds (ratio per round, as `bench/muon_gpu.py`).

    PYTHONPATH=$PWD/.site:$PWD python3 bench/symmetric_ws_gpu.py --out $OUT/symmetric_ws.md
"""
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
import triton
import triton.language as tl
from timing import median_ms
from muon_gpu import hidden_matrices, make, replaced, Within, interleaved
import fastoptim.symmetric as symmetric
from fastoptim.symmetric import symmetric_product, upper_tiles, processors, _described


@triton.jit
def device_described_kernel(y, addend, out, tiles, P, total, k, rows_y, cols_y, stride_matrix, stride_row, m, N,
                            alpha, beta, shift, HAS_ADDEND: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK: tl.constexpr,
                            BLOCK_K: tl.constexpr, PROGRAMS: tl.constexpr, SPECIALISE: tl.constexpr, UPCAST: tl.constexpr):
    "`symmetric_kernel` (bf16 on the GPU) with device-made descriptors and a branch-free epilogue; SPECIALISE: 0 none, 1 the persistent loop, 2 the K loop"
    y_desc = tl.make_tensor_descriptor(y, shape=[k, rows_y, cols_y], strides=[stride_matrix, stride_row, 1],
                                       block_shape=[1, BLOCK_K, BLOCK] if TRANSPOSED else [1, BLOCK, BLOCK_K])
    out_desc = tl.make_tensor_descriptor(out, shape=[k, m, m], strides=[m * m, m, 1], block_shape=[1, BLOCK, BLOCK])
    rows = tl.arange(0, BLOCK)
    lower, diagonal = rows[:, None] > rows[None, :], rows[:, None] == rows[None, :]
    for t in tl.range(tl.program_id(0), total, PROGRAMS, warp_specialize=SPECIALISE == 1):
        matrix, tile = t // P, t % P
        ti, tj = tl.load(tiles + 2 * tile), tl.load(tiles + 2 * tile + 1)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in tl.range(0, N, BLOCK_K, warp_specialize=SPECIALISE == 2):
            if TRANSPOSED:
                a = tl.trans(y_desc.load([matrix, k0, ti * BLOCK]).reshape(BLOCK_K, BLOCK))
                b = y_desc.load([matrix, k0, tj * BLOCK]).reshape(BLOCK_K, BLOCK)
            else:
                a = y_desc.load([matrix, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
                b = tl.trans(y_desc.load([matrix, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K))
            if UPCAST: a, b = a.to(tl.float32), b.to(tl.float32)  # the interpreter multiplies bf16 as integers
            acc = tl.dot(a, b, acc)
        acc = alpha * acc
        if HAS_ADDEND:
            addend_desc = tl.make_tensor_descriptor(addend, shape=[k, m, m], strides=[m * m, m, 1], block_shape=[1, BLOCK, BLOCK])
            acc += beta * addend_desc.load([matrix, ti * BLOCK, tj * BLOCK]).reshape(BLOCK, BLOCK).to(tl.float32)
        on_diagonal = ti == tj
        acc += tl.where(diagonal & on_diagonal, shift, 0.)
        tile_out = acc.to(tl.bfloat16)
        tile_out = tl.where(lower & on_diagonal, tl.trans(tile_out), tile_out)
        out_desc.store([matrix, ti * BLOCK, tj * BLOCK], tile_out.reshape(1, BLOCK, BLOCK))
        out_desc.store([matrix, tj * BLOCK, ti * BLOCK], tl.trans(tile_out).reshape(1, BLOCK, BLOCK))


def device_described(y, alpha=1., addend=None, beta=0., shift=0., *, specialise=0, warps=8, stages=4, block=128, block_k=64, upcast=False):
    k, m, n = y.shape
    out = torch.empty(k, m, m, dtype=y.dtype, device=y.device)
    source, transposed = _described(y)
    T = triton.cdiv(m, block)
    P = T * (T + 1) // 2
    programs = min(processors(y.device), P * k)
    device_described_kernel[(programs,)](source, addend if addend is not None else out, out, upper_tiles(T, y.device), P, P * k, k,
                                         source.shape[1], source.shape[2], source.stride(0), source.stride(1), m, n,
                                         float(alpha), float(beta), float(shift), HAS_ADDEND=addend is not None,
                                         TRANSPOSED=transposed, BLOCK=block, BLOCK_K=block_k, PROGRAMS=programs,
                                         SPECIALISE=specialise, UPCAST=upcast, num_warps=warps, num_stages=stages)
    return out


def patched(variant):
    "Within: the library's symmetric products (Gram matrices and bA + cA²) by `device_described` with `variant`'s options"
    return replaced(symmetric, 'symmetric_product', lambda y, alpha=1., addend=None, beta=0., out=None, *, shift=0.:
                    device_described(y, alpha, addend, beta, shift, **variant))


def steps(variants, args, dev, lines):
    from fastoptim.all import Muon
    ps, grads = make(hidden_matrices(), torch.bfloat16, dev)
    opts = {'torch.optim.Muon': (torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw'), ps)}
    for vname, vkw in variants:
        for label, options in (('default', {}), ('aol=True', dict(aol=True))):
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            opt = Muon(ps2, lr=1e-3, wd=0.1, triton=True, **options)
            opts[f'{label}, {vname}'] = (opt if vkw is None else Within(opt, lambda vkw=vkw: patched(vkw)), ps2)
    times = interleaved(opts, grads, dev, args.reps, args.step_rounds)
    lines += ['', f"Muon's step, LLM-like set's 112 hidden matrices, bf16 weights: {args.step_rounds} rounds, each timing every "
              f"optimizer ({args.reps} steps, median) in a rotated order; ratio to torch.optim.Muon in the same round", '',
              '| optimizer | symmetric products | median ms | median ratio | lowest | highest |', '|---|---|---|---|---|---|']
    for name in opts:
        ratios = sorted(t / m for t, m in zip(times['torch.optim.Muon'], times[name]))
        label, _, vname = name.partition(', ')
        lines.append(f"| {label} | {vname} | {float(np.median(times[name])):.1f} | {ratios[len(ratios) // 2]:.3f}× | {ratios[0]:.3f}× | {ratios[-1]:.3f}× |")
        print(lines[-1], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='symmetric_ws.md')
    ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--step-rounds', type=int, default=5)
    args = ap.parse_args()
    dev = torch.device('cuda')
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=dev, dtype=torch.int8))  # device descriptors' scratch
    torch.manual_seed(0)
    A, B, C = 3.4445, -4.7750, 2.0315
    sq = torch.randn(64, 2048, 2048, device=dev).bfloat16() / 64
    rect = torch.randn(48, 2048, 5504, device=dev).bfloat16() / 100
    tall = torch.randn(32, 5504, 2048, device=dev).bfloat16().div(100).mT
    a = torch.bmm(sq, sq.mT)
    poly = torch.cat([a, a[:48]])
    cases = [('Gram, 64 × 2048×2048', sq, {}), ('Gram, 48 × 2048×5504', rect, {}), ('Gram, 32 × 2048×5504 (transposed view)', tall, {}),
             ('aI + bA + cA², 112 × 2048×2048', poly, dict(alpha=C, addend=poly, beta=B, shift=A))]
    variants = [('committed', None), ('device descriptors', dict(specialise=0)),
                ('persistent loop specialised, 8 warps', dict(specialise=1)), ('persistent loop specialised, 4 warps', dict(specialise=1, warps=4)),
                ('K loop specialised, 8 warps', dict(specialise=2)), ('K loop specialised, 4 warps', dict(specialise=2, warps=4))]
    lines = [f'# Warp specialisation of the upper-tile kernel: {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}, triton {triton.__version__}; `python3 bench/symmetric_ws_gpu.py`; ms: median over '
             f'{args.rounds} rounds of the median of {args.reps} calls, the variants in a rotated order each round; TFLOP/s of the '
             'work done (the upper tiles only); committed: `symmetric_product` as committed (host descriptors, 8 warps, 4 stages, '
             'one program per SM).', '',
             '| case | ' + ' | '.join(name for name, _ in variants) + ' |', '|---|' + '---|' * len(variants)]
    failed = set()
    for name, y, kw in cases:
        yd = y.float()
        exact = torch.bmm(yd, yd.mT)
        if kw: exact = C * exact + B * kw['addend'].float() + A * torch.eye(y.shape[1], device=dev)
        scale = exact.abs().max().item()
        k, m, n = y.shape
        T = triton.cdiv(m, 128)
        work = k * T * (T + 1) // 2 * 2 * 128 * 128 * n
        calls, cells = {}, {}
        for vname, vkw in variants:
            call = (lambda: symmetric_product(y, **kw)) if vkw is None else (lambda vkw=vkw: device_described(y, **kw, **vkw))
            try:
                got = call()
                err = ((got.float() - exact).abs().max() / scale).item()
                if not (err < 1e-2 and torch.equal(got, got.mT)): raise AssertionError(f'wrong: {err:.1e}, symmetric {torch.equal(got, got.mT)}')
                calls[vname] = call
            except Exception as e:
                cells[vname] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:80] if str(e).strip() else ''}"
            print(f"{name} {vname}: {cells.get(vname, 'checked')}", flush=True)
        times = {v: [] for v in calls}
        names = list(calls)
        for r in range(args.rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                times[v].append(median_ms(calls[v], args.reps, dev, warmup=2))
        for v in calls:
            ms = float(np.median(times[v]))
            cells[v] = f"{ms:.3f} ({work / ms / 1e9:.0f})"
        lines.append(f"| {name} | " + ' | '.join(cells[v] for v, _ in variants) + ' |')
        print(lines[-1], flush=True)
        failed.update(v for v, _ in variants if v not in calls)
        del calls, exact
    del sq, rect, tall, a, poly
    torch.cuda.empty_cache()
    steps([(v, kw) for v, kw in variants if v not in failed], args, dev, lines)
    open(args.out, 'w').write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
