"""AOL's start of Muon's Newton–Schulz iteration (`aol=True`, notebook 56) on the LLM-like set's stacks, one H200: what the
rescaling itself costs, in the form `fastoptim.muon.newton_schulz` computes it and in two cheaper ones, each against
the quintic's five iterations from the Frobenius norm.

- kernels (`fastoptim.symmetric.aol_start`, what `newton_schulz(aol=True)` runs on CUDA): two Triton passes, the first
  reads A's rows for s and writes diag(s)·X, the second rescales A in place, each value rounded once;
- as written (`aol_by_torch`, the form before the kernels, still the CPU's): s = (Σⱼ|A|ᵢⱼ)^-½ by `abs().sum()`, then
  A·(sᵢsⱼ) and diag(s)·X in fp32 temporaries, each rounded once to bf16;
- in place: s by one `vector_norm(ord=1)`, A and X scaled in place in bf16 (A rounded twice: by its rows' scale, then
  its columns');
- recomputed: s as above, X scaled in place, and its Gram matrix computed again instead of rescaled.

Each is checked against the same start in fp64 (max |diff| / max |fp64|). Writes DIR/aol_gpu.md.

On the GPU machine, from the repository root: python3 bench/aol_gpu.py --out DIR
"""
import argparse, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from fastoptim.muon import newton_schulz, ns_coefficients
from fastoptim.symmetric import gram, polynomial_product, aol_start, aol_by_torch, aol_rescale
from timing import median_ms, write_report, copy_bandwidth


def start_in(x, form, eps=1e-7):
    "X's rows rescaled by AOL's s, and their Gram matrix (None where it is computed again), in `form`"
    if form == 'kernels': return aol_start(x, eps)
    A = gram(x)
    if form == 'as written': return aol_by_torch(x, A, eps)
    s = torch.linalg.vector_norm(A, ord=1, dim=-1, dtype=torch.float32).clamp_(min=eps).rsqrt_()
    x = x.mul_(s[..., :, None])
    return x, (A.mul_(s[..., :, None]).mul_(s[..., None, :]) if form == 'in place' else None)


def aol_newton_schulz(stack, form, steps=4):
    "`newton_schulz(stack, steps, aol=True)` with its start in `form`, in place"
    tall = stack.shape[-2] > stack.shape[-1]
    x, A = start_in(stack.mT if tall else stack, form)
    a, b, c = ns_coefficients
    for i in range(steps):
        if i or A is None: A = gram(x)
        x = polynomial_product(x, A, a, b, c, out=(stack.mT if tall else stack) if i == steps - 1 else None)
    return stack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    ap.add_argument('--reps', type=int, default=10)
    args = ap.parse_args()
    dev = torch.device('cuda')
    g = torch.Generator(device=dev).manual_seed(0)
    forms = ('kernels', 'as written', 'in place', 'recomputed')
    bandwidth = copy_bandwidth(dev)
    lines = [f'# AOL\'s start, four forms: {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
             f'Command: `python3 {" ".join(sys.argv)}`; median of {args.reps}, bf16.', '',
             '| stack | quintic, 5 steps ms | ' + ' | '.join(f'AOL {f}, 4 steps ms' for f in forms) + ' | '
             + ' | '.join(f'start {f} ms' for f in forms) + ' |', '|---' * (2 + 2 * len(forms)) + '|']
    totals = [0.] * (1 + 2 * len(forms))
    for k, shape in ((64, (2048, 2048)), (32, (5504, 2048)), (16, (2048, 5504))):
        stack = torch.randn(k, *shape, device=dev, dtype=torch.bfloat16, generator=g)
        work = stack.clone()
        x_of = lambda t: t.mT if shape[0] > shape[1] else t
        ms = [median_ms(lambda: newton_schulz(work.copy_(stack)), args.reps, dev, warmup=2)]
        ms += [median_ms(lambda: aol_newton_schulz(work.copy_(stack), f), args.reps, dev, warmup=2) for f in forms]
        ms += [median_ms(lambda: start_in(x_of(work.copy_(stack)), f), args.reps, dev, warmup=2) - median_ms(lambda: work.copy_(stack), args.reps, dev)
               for f in forms]
        totals = [t + m for t, m in zip(totals, ms)]
        lines.append(f'| {k} × {shape[0]}×{shape[1]} | ' + ' | '.join(f'{m:.2f}' for m in ms) + ' |')
        del stack, work
    lines.append('| all 112 | ' + ' | '.join(f'{m:.2f}' for m in totals) + ' |')
    lines += ['', 'Error of each form\'s four iterations against the same start and iterations in fp64 (max |diff| / max |fp64|), '
              '4 matrices of each shape, and the quintic\'s five for scale:', '',
              '| matrices | quintic, 5 steps | ' + ' | '.join(f'AOL {f}' for f in forms) + ' |', '|---' * (2 + len(forms)) + '|']
    for shape in ((2048, 2048), (5504, 2048), (2048, 5504)):
        y = torch.randn(4, *shape, device=dev, dtype=torch.float64, generator=g)
        err = lambda got, ref: ((got.double() - ref).abs().max() / ref.abs().max()).item()
        row = [err(newton_schulz(y.bfloat16()), newton_schulz(y.clone()))]
        exact = aol_newton_schulz(y.clone(), 'as written')  # in fp64 every form is the same (on CUDA `aol_start` takes fp64 to torch's form)
        row += [err(aol_newton_schulz(y.bfloat16(), f), exact) for f in forms]
        lines.append(f'| 4 × {shape[0]}×{shape[1]} Gaussian | ' + ' | '.join(f'{e:.2e}' for e in row) + ' |')
    lines += ['', '`aol_rescale` alone (the two kernels, without the Gram product), launches swept, against the bytes it must move at '
              f'the copy bandwidth measured here ({bandwidth:.0f} GB/s): A read twice and written once, X read and its rescaled copy written:', '',
              '| stack | rows | cols | block | warps | ms | fraction of the byte bound |', '|---|---|---|---|---|---|---|']
    for k, shape in ((64, (2048, 2048)), (32, (5504, 2048)), (16, (2048, 5504))):
        stack = torch.randn(k, *shape, device=dev, dtype=torch.bfloat16, generator=g)
        x = stack.mT if shape[0] > shape[1] else stack
        A0 = gram(x)
        A = A0.clone()
        bound = (3 * A.numel() + 2 * x.numel()) * 2 / (bandwidth * 1e9) * 1e3
        for rows, cols, block, warps in LAUNCHES:
            ms = median_ms(lambda: aol_rescale(x, A.copy_(A0), rows=rows, cols=cols, block=block, warps=warps), args.reps, dev, warmup=2) \
                - median_ms(lambda: A.copy_(A0), args.reps, dev)
            lines.append(f'| {k} × {shape[0]}×{shape[1]} | {rows} | {cols} | {block} | {warps} | {ms:.3f} | {bound / ms:.2f} |')
        del stack, x, A0, A
    write_report('\n'.join(lines), os.path.join(args.out, 'aol_gpu.md'))


LAUNCHES = [(16, 256, 64, 4), (16, 256, 64, 8), (64, 128, 64, 4), (64, 128, 128, 8), (32, 256, 128, 4), (8, 512, 64, 4), (64, 64, 64, 4)]


if __name__ == '__main__': main()
