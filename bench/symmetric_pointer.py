"""The upper-tile kernel `fastoptim.symmetric` had until 060c721 (pointer loads, one program per tile, 3 stages),
kept as the baseline `bench/symmetric_gpu.py` times the committed kernel against (tensor descriptors, a persistent
grid). CUDA only; not imported by fastoptim.
"""
import torch
import triton
import triton.language as tl
from fastoptim.symmetric import upper_tiles


@triton.jit
def pointer_kernel(y, addend, out, tiles, P, M, N, stride_k, stride_m, stride_n, alpha, beta, shift, HAS_ADDEND: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    "The pointer-load kernel of 060c721: one upper tile (i, j), i ≤ j, of one matrix: alpha·Yᵢ·Yⱼᵀ (+ beta·addendᵢⱼ, + shift on the diagonal), stored at (i, j) and transposed at (j, i)"
    pid = tl.program_id(0)
    matrix, tile = pid // P, pid % P  # consecutive programs: one matrix's tiles, row tile after row tile (L2 reuse)
    ti, tj = tl.load(tiles + 2 * tile), tl.load(tiles + 2 * tile + 1)
    rows_i, rows_j = ti * BLOCK + tl.arange(0, BLOCK), tj * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_K)
    start = y + matrix.to(tl.int64) * stride_k
    a_ptrs = start + rows_i[:, None].to(tl.int64) * stride_m + cols[None, :] * stride_n  # int64: large stacks
    b_ptrs = start + rows_j[:, None].to(tl.int64) * stride_m + cols[None, :] * stride_n
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        inside = cols[None, :] < N - k0
        a = tl.load(a_ptrs, mask=(rows_i[:, None] < M) & inside, other=0.)
        b = tl.load(b_ptrs, mask=(rows_j[:, None] < M) & inside, other=0.)
        if UPCAST:  # the interpreter multiplies bf16 as raw 16-bit integers; in fp32 the products are the same, exactly
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_n
        b_ptrs += BLOCK_K * stride_n
    acc = alpha * acc
    first = matrix.to(tl.int64) * M * M  # this matrix's, in the result and the addend
    upper = rows_i[:, None].to(tl.int64) * M + rows_j[None, :]
    inside = (rows_i[:, None] < M) & (rows_j[None, :] < M)
    if HAS_ADDEND: acc += beta * tl.load(addend + first + upper, mask=inside, other=0.).to(tl.float32)
    if ti == tj: acc += tl.where(rows_i[:, None] == rows_j[None, :], shift, 0.)  # in fp32: rounded once, with the rest
    tile = acc.to(out.dtype.element_ty)
    if ti == tj: tile = tl.where(rows_i[:, None] <= rows_j[None, :], tile, tl.trans(tile))  # exactly symmetric
    tl.store(out + first + upper, tile, mask=inside)
    if ti != tj: tl.store(out + first + rows_j[:, None].to(tl.int64) * M + rows_i[None, :], tl.trans(tile), mask=tl.trans(inside))


def pointer_product(y, alpha=1., addend=None, beta=0., shift=0., *, warps=8):
    "060c721's `symmetric_product` on CUDA: 128-row tiles, K tile 64, 3 stages"
    k, m, n = y.shape
    out = torch.empty(k, m, m, dtype=y.dtype, device=y.device)
    T = triton.cdiv(m, 128)
    P = T * (T + 1) // 2
    pointer_kernel[(P * k,)](y, out if addend is None else addend, out, upper_tiles(T, y.device), P, m, n, *y.stride(),
                             float(alpha), float(beta), float(shift), HAS_ADDEND=addend is not None, PRECISION='tf32',
                             UPCAST=False, BLOCK=128, BLOCK_K=64, num_warps=warps, num_stages=3)
    return out
