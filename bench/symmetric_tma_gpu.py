"""A candidate for `fastoptim.symmetric`'s kernel, tried on the GPU before it is adopted: the same upper tiles
(shift·I + beta·addend + alpha·YYᵀ, each tile stored twice) with the operands brought in by the Tensor Memory
Accelerator (host-side tensor descriptors) and a persistent grid (a fixed number of programs, each looping over
tiles), against the kernel as committed (pointer loads, one program per tile), on the LLM-like set's stacks in bf16.
Every launch is checked against torch's product in fp32 first.

    PYTHONPATH=$PWD python3 bench/symmetric_tma_gpu.py --out $OUT/symmetric_tma.md

Not imported by fastoptim.
"""
import argparse, itertools, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from timing import median_ms
from fastoptim.symmetric import symmetric_product, upper_tiles


@triton.jit
def symmetric_tma_kernel(y_desc, addend_desc, out_desc, tiles, P, total, N, alpha, beta, shift,
                         HAS_ADDEND: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                         PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr):
    "Upper tiles t = program, program + PROGRAMS, …: tile (i, j) of matrix t // P; `TRANSPOSED`: Y is the transpose of the described (k, n, m) stack"
    rows = tl.arange(0, BLOCK)
    for t in tl.range(tl.program_id(0), total, PROGRAMS, flatten=FLATTEN):
        matrix, tile = t // P, t % P
        ti, tj = tl.load(tiles + 2 * tile), tl.load(tiles + 2 * tile + 1)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, N, BLOCK_K):
            if TRANSPOSED:
                a = y_desc.load([matrix, k0, ti * BLOCK]).reshape(BLOCK_K, BLOCK)
                b = y_desc.load([matrix, k0, tj * BLOCK]).reshape(BLOCK_K, BLOCK)
                acc = tl.dot(tl.trans(a), b, acc)
            else:
                a = y_desc.load([matrix, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
                b = y_desc.load([matrix, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
                acc = tl.dot(a, tl.trans(b), acc)
        acc = alpha * acc
        if HAS_ADDEND: acc += beta * addend_desc.load([matrix, ti * BLOCK, tj * BLOCK]).reshape(BLOCK, BLOCK).to(tl.float32)
        if ti == tj:
            acc += tl.where(rows[:, None] == rows[None, :], shift, 0.)
            tile_out = acc.to(out_desc.dtype)
            tile_out = tl.where(rows[:, None] <= rows[None, :], tile_out, tl.trans(tile_out))
            out_desc.store([matrix, ti * BLOCK, tj * BLOCK], tile_out.reshape(1, BLOCK, BLOCK))
        else:
            tile_out = acc.to(out_desc.dtype)
            out_desc.store([matrix, ti * BLOCK, tj * BLOCK], tile_out.reshape(1, BLOCK, BLOCK))
            out_desc.store([matrix, tj * BLOCK, ti * BLOCK], tl.trans(tile_out).reshape(1, BLOCK, BLOCK))


def symmetric_tma(y, alpha=1., addend=None, beta=0., shift=0., *, block=128, block_k=64, warps=8, stages=3, programs=None, flatten=False):
    "The candidate's `shift·I + beta·addend + alpha·y·yᵀ` for a bf16 stack y (k, m, n) with m a multiple of `block`: contiguous, or the transpose of a contiguous stack"
    k, m, n = y.shape
    transposed = y.stride(-1) != 1
    src = y.mT if transposed else y
    assert src.is_contiguous() and m % block == 0
    out = torch.empty(k, m, m, dtype=y.dtype, device=y.device)
    y_desc = TensorDescriptor.from_tensor(src, [1, block_k, block] if transposed else [1, block, block_k])
    out_desc = TensorDescriptor.from_tensor(out, [1, block, block])
    addend_desc = TensorDescriptor.from_tensor(addend, [1, block, block]) if addend is not None else out_desc
    T = m // block
    P = T * (T + 1) // 2
    total = P * k
    sms = torch.cuda.get_device_properties(y.device).multi_processor_count
    programs = total if programs is None else min(total, programs * sms)
    symmetric_tma_kernel[(programs,)](y_desc, addend_desc, out_desc, upper_tiles(T, y.device), P, total, n,
                                      float(alpha), float(beta), float(shift), HAS_ADDEND=addend is not None,
                                      TRANSPOSED=transposed, BLOCK=block, BLOCK_K=block_k, PROGRAMS=programs,
                                      FLATTEN=flatten, num_warps=warps, num_stages=stages)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='symmetric_tma.md')
    ap.add_argument('--reps', type=int, default=10)
    args = ap.parse_args()
    dev = torch.device('cuda')
    torch.manual_seed(0)
    A, B, C = 3.4445, -4.7750, 2.0315
    sq = torch.randn(64, 2048, 2048, device=dev).bfloat16() / 64
    wide = torch.randn(16, 2048, 5504, device=dev).bfloat16() / 100
    tall = torch.randn(32, 5504, 2048, device=dev).bfloat16().div(100).mT  # as Muon's tall stack arrives
    cases = [('Gram, 64 × 2048×2048', sq, False), ('Gram, 16 × 2048×5504', wide, False),
             ('Gram, 32 × 2048×5504 (transposed view)', tall, False), ('aI + bA + cA², 64 × 2048×2048', torch.bmm(sq, sq.mT), True)]
    configs = [dict(warps=w, stages=s, programs=p, flatten=f)
               for w, s, p, f in itertools.product((4, 8), (3, 4), (None, 1, 2), (False, True)) if not (p is None and f)]
    lines = [f'# Upper tiles by TMA and a persistent grid, against the committed kernel: {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}, triton {triton.__version__}; median ms of {args.reps} calls; TFLOP/s of the work done '
             '(the upper tiles only); 128-row tiles, K tile 64; `programs`: per SM (None: one per tile).', '']
    for name, y, poly in cases:
        k, m, n = y.shape
        done = 2 * k * m * m * n * (m // 128 + 1) / (2 * (m // 128))
        exact = torch.baddbmm(y.float(), y.float(), y.float().mT, beta=B, alpha=C) + A * torch.eye(m, device=dev) if poly else torch.bmm(y.float(), y.float().mT)
        scale = exact.abs().max().item()
        kw = dict(alpha=C, addend=y, beta=B, shift=A) if poly else {}
        committed = (lambda: symmetric_product(y.contiguous() if poly else y, C, y, B, shift=A, block=128, block_k=64, warps=4, stages=3)) if poly \
            else (lambda: symmetric_product(y, block=128, block_k=64, warps=8, stages=3))
        base = median_ms(committed, args.reps, dev, warmup=2)
        err = ((committed().float() - exact).abs().max() / scale).item()
        lines += [f'## {name}', '', f'committed kernel: {base:.3f} ms, {done / base / 1e9:.0f} TFLOP/s, max diff {err:.1e}', '',
                  '| warps | stages | programs | flatten | ms | TFLOP/s | × committed | max diff / max |', '|---|---|---|---|---|---|---|---|']
        for cfg in configs:
            try:
                got = symmetric_tma(y, **kw, **cfg)
                err = ((got.float() - exact).abs().max() / scale).item()
                if not (err < 2e-2 and torch.equal(got, got.mT)): raise AssertionError(f'wrong: {err:.2e}')
                ms = median_ms(lambda: symmetric_tma(y, **kw, **cfg), args.reps, dev, warmup=2)
                lines.append(f"| {cfg['warps']} | {cfg['stages']} | {cfg['programs']} | {cfg['flatten']} | {ms:.3f} | "
                             f"{done / ms / 1e9:.0f} | {base / ms:.2f} | {err:.1e} |")
            except Exception as e:
                lines.append(f"| {cfg['warps']} | {cfg['stages']} | {cfg['programs']} | {cfg['flatten']} | {type(e).__name__}: {str(e)[:80]} | | | |")
            print(lines[-1], flush=True)
        lines.append('')
    open(args.out, 'w').write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
