"""Variants of `fastoptim.symmetric`'s upper-tile kernel, timed against it on the GPU before any is adopted: an
epilogue without branches (a tile on the diagonal made symmetric by a select, then every tile stored twice, the
diagonal one over itself), alone and with the persistent loop flattened into its K loop (`tl.range(flatten=True)`,
which lets the pipeliner load the next tile's blocks during a tile's epilogue). Each launch is checked against
torch's product in fp32 first. The LLM-like set's stacks, bf16.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/symmetric_variants_gpu.py --out $OUT/symmetric_variants.md
"""
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import triton
import triton.language as tl
from timing import median_ms
from fastoptim.symmetric import symmetric_product, upper_tiles, processors, _described, _strides, TensorDescriptor


@triton.jit
def branchless_kernel(y, addend, out, tiles, P, total, N, alpha, beta, shift, HAS_ADDEND: tl.constexpr, TRANSPOSED: tl.constexpr,
                      BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr):
    "`fastoptim.symmetric.symmetric_kernel` (bf16 on the GPU) with its epilogue's branches replaced by selects"
    rows = tl.arange(0, BLOCK)
    lower, diagonal = rows[:, None] > rows[None, :], rows[:, None] == rows[None, :]
    for t in tl.range(tl.program_id(0), total, PROGRAMS, flatten=FLATTEN):
        matrix, tile = t // P, t % P
        ti, tj = tl.load(tiles + 2 * tile), tl.load(tiles + 2 * tile + 1)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, N, BLOCK_K):
            if TRANSPOSED:
                a = tl.trans(y.load([matrix, k0, ti * BLOCK]).reshape(BLOCK_K, BLOCK))
                b = y.load([matrix, k0, tj * BLOCK]).reshape(BLOCK_K, BLOCK)
            else:
                a = y.load([matrix, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
                b = tl.trans(y.load([matrix, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K))
            acc = tl.dot(a, b, acc)
        acc = alpha * acc
        if HAS_ADDEND: acc += beta * addend.load([matrix, ti * BLOCK, tj * BLOCK]).reshape(BLOCK, BLOCK).to(tl.float32)
        on_diagonal = ti == tj
        acc += tl.where(diagonal & on_diagonal, shift, 0.)
        tile_out = acc.to(out.dtype)
        tile_out = tl.where(lower & on_diagonal, tl.trans(tile_out), tile_out)  # a diagonal tile: its upper half mirrored
        out.store([matrix, ti * BLOCK, tj * BLOCK], tile_out.reshape(1, BLOCK, BLOCK))
        out.store([matrix, tj * BLOCK, ti * BLOCK], tl.trans(tile_out).reshape(1, BLOCK, BLOCK))


def branchless(y, alpha=1., addend=None, beta=0., shift=0., *, flatten=False, warps=8, stages=4, block=128, block_k=64):
    k, m, n = y.shape
    out = torch.empty(k, m, m, dtype=y.dtype, device=y.device)
    source, transposed = _described(y)
    T = triton.cdiv(m, block)
    P = T * (T + 1) // 2
    programs = min(processors(y.device), P * k)
    describe = lambda t, shape: TensorDescriptor(t, list(t.shape), _strides(t), [1, *shape])
    out_desc = describe(out, (block, block))
    branchless_kernel[(programs,)](describe(source, (block_k, block) if transposed else (block, block_k)),
                                   out_desc if addend is None else describe(addend, (block, block)), out_desc,
                                   upper_tiles(T, y.device), P, P * k, n, float(alpha), float(beta), float(shift),
                                   HAS_ADDEND=addend is not None, TRANSPOSED=transposed, BLOCK=block, BLOCK_K=block_k,
                                   PROGRAMS=programs, FLATTEN=flatten, num_warps=warps, num_stages=stages)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='symmetric_variants.md')
    ap.add_argument('--reps', type=int, default=10)
    args = ap.parse_args()
    dev = torch.device('cuda')
    torch.manual_seed(0)
    A, B, C = 3.4445, -4.7750, 2.0315
    sq = torch.randn(64, 2048, 2048, device=dev).bfloat16() / 64
    rect = torch.randn(48, 2048, 5504, device=dev).bfloat16() / 100
    tall = torch.randn(32, 5504, 2048, device=dev).bfloat16().div(100).mT
    a = torch.bmm(sq, sq.mT)
    poly = torch.cat([a, a[:48]])
    cases = [('Gram, 64 × 2048×2048', sq, {}), ('Gram, 48 × 2048×5504', rect, {}), ('Gram, 32 × 2048×5504 (transposed view)', tall, {}),
             ('aI + bA + cA², 112 × 2048×2048', poly, dict(alpha=C, addend=poly, beta=B, shift=A))]
    lines = [f'# Variants of the upper-tile kernel: {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}, triton {triton.__version__}; median ms of {args.reps} calls, interleaved by case; '
             'committed: `symmetric_product` as committed (8 warps, 4 stages, one program per SM).', '',
             '| case | committed ms | branchless | branchless, flattened | branchless, 4 warps | branchless, flattened, 4 warps |', '|---|---|---|---|---|---|']
    for name, y, kw in cases:
        yd = y.float()
        exact = torch.bmm(yd, yd.mT)
        if kw: exact = C * exact + B * kw['addend'].float() + A * torch.eye(y.shape[1], device=dev)
        scale = exact.abs().max().item()
        cells = [f"{median_ms(lambda: symmetric_product(y, **kw), args.reps, dev, warmup=2):.3f}"]
        for flatten, warps in ((False, 8), (True, 8), (False, 4), (True, 4)):
            try:
                got = branchless(y, **kw, flatten=flatten, warps=warps)
                err = ((got.float() - exact).abs().max() / scale).item()
                if not (err < 1e-2 and torch.equal(got, got.mT)): raise AssertionError(f'wrong: {err:.1e}')
                cells.append(f"{median_ms(lambda: branchless(y, **kw, flatten=flatten, warps=warps), args.reps, dev, warmup=2):.3f}")
            except Exception as e:
                cells.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:60] if str(e).strip() else ''}")
        lines.append(f"| {name} | " + ' | '.join(cells) + ' |')
        print(lines[-1], flush=True)
    open(args.out, 'w').write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
