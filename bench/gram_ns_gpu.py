"""Muon's Newton–Schulz in its Gram form (issue 18, an exploration): for a wide X (m ≤ n), every iterate is Q·X₀ with
Q a polynomial in the Gram matrix G = X₀X₀ᵀ, so the iteration can run on m × m matrices, A ← h(A)²·A and Q ← h(A)·Q
with h(A) = aI + bA + cA², and apply Q to X once at the end. In exact arithmetic it is the quintic itself. In bf16 the
recursion for A drifts (CPU, 256 × 688: 7× the quintic's error on a spectrum decaying over two decades); restarting it
once, after three iterations, from X₃ = Q₃X₀ keeps it at the quintic's error on the matrices tried. This script times it
against `fastoptim.muon.newton_schulz` on the LLM-like set's rectangular stacks (48 × 2048×5504) and measures both
against the quintic in fp64.

Products: `gram` and `square_plus` (upper tiles, `fastoptim.symmetric`) where the result is a Gram matrix or bA + cA²;
torch's `bmm` for h²·A and h·Q (symmetric in exact arithmetic, computed whole) and for Q·X.

On the GPU machine, from the repository root:
    python3 bench/gram_ns_gpu.py --out $OUT/gram_ns.md
"""
import argparse, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
from fastoptim.muon import newton_schulz, ns_coefficients
from fastoptim.symmetric import gram, square_plus
from timing import median_ms, write_report

ap = argparse.ArgumentParser()
ap.add_argument('--stack', type=int, default=48)
ap.add_argument('--rows', type=int, default=2048)
ap.add_argument('--cols', type=int, default=5504)
ap.add_argument('--reps', type=int, default=10)
ap.add_argument('--out', default=None)
args = ap.parse_args()
dev = torch.device('cuda')
a, b, c = ns_coefficients


def gram_newton_schulz(stack, steps=5, restart=3, eps=1e-7):
    "The quintic in its Gram form, for a wide stack (k, m, n), restarted from X = Q·X₀ before iteration `restart`"
    x = stack / torch.linalg.vector_norm(stack, dim=(-2, -1), keepdim=True).clamp(min=eps)
    A, Q = gram(x), None
    for i in range(steps):
        if i == restart:
            x, Q = torch.bmm(Q, x), None
            A = gram(x)
        h = square_plus(A, alpha=c, beta=b)
        h.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = h if Q is None else torch.bmm(h, Q)
        if i < steps - 1 and i + 1 != restart: A = torch.bmm(gram(h), A)  # h²·A: gram(h) = h·hᵀ = h² (h symmetric)
    return torch.bmm(Q, x)


def decaying(k, m, n, decades, gen):
    "k matrices with singular values log-spaced over `decades` decades, random singular vectors"
    u, _ = torch.linalg.qr(torch.randn(k, m, m, device=dev, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(k, n, m, device=dev, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -decades, m, device=dev, dtype=torch.float64)
    return (u * s) @ v.mT


def main():
    k, m, n = args.stack, args.rows, args.cols
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(k, m, n, device=dev, generator=gen).bfloat16()
    plain = torch.randn(k, m, m, device=dev, generator=gen).bfloat16()
    bmm_ms = median_ms(lambda: torch.bmm(plain, x), args.reps, dev, warmup=3)
    rate = 2 * k * m * m * n / (bmm_ms * 1e-3) / 1e12
    quintic_ms = median_ms(lambda: newton_schulz(x.clone()), args.reps, dev, warmup=3)
    gram_ms = median_ms(lambda: gram_newton_schulz(x), args.reps, dev, warmup=3)
    quintic_flops = 5 * (2 * k * m * m * n * 2 + 2 * k * m ** 3)  # torch's products as written: XXᵀ, A², BX
    lines = [f'# Newton–Schulz in its Gram form: {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
             f'Stack {k} × {m}×{n}, bf16; median of {args.reps}. Plain bmm {k} × ({m}×{m})·({m}×{n}): {bmm_ms:.3f} ms, {rate:.0f} TFLOP/s.', '',
             f'Command: `python3 {" ".join(sys.argv)}`', '',
             '| iteration | ms | TFLOP/s, the quintic as written |', '|---|---|---|',
             f'| `newton_schulz` (quintic, upper tiles) | {quintic_ms:.3f} | {quintic_flops / (quintic_ms * 1e-3) / 1e12:.0f} |',
             f'| Gram form, restarted after 3 | {gram_ms:.3f} | {quintic_flops / (gram_ms * 1e-3) / 1e12:.0f} |', '',
             'Error: ‖result − the quintic in fp64‖ / ‖the quintic in fp64‖, on 4 matrices of each kind:', '',
             '| matrices | quintic bf16 | Gram form bf16 |', '|---|---|---|']
    for name, decades in (('Gaussian', None), ('spectrum over 2 decades', 2), ('spectrum over 4 decades', 4)):
        y = torch.randn(4, m, n, device=dev, dtype=torch.float64, generator=gen) if decades is None else decaying(4, m, n, decades, gen)
        ref = newton_schulz(y.clone())  # in fp64: torch's products
        err = lambda r: ((r.double() - ref).norm() / ref.norm()).item()
        yb = y.bfloat16()
        lines.append(f'| {name} | {err(newton_schulz(yb.clone())):.4f} | {err(gram_newton_schulz(yb)):.4f} |')
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__': main()
