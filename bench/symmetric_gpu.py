"""Symmetric products for Muon's Newton–Schulz iteration (`fastoptim.symmetric`, notebook 08): the Triton kernel that
computes only the tiles on and above the diagonal of `y @ y.mT` (the Gram product A = XXᵀ, and A·A = A·Aᵀ for
symmetric A), against torch's products on Muon's stacks from the LLM-like set, for a sweep of launches (tile, K
tile, warps, stages, programs: one per multiprocessor, each looping over tiles, or one per tile), each checked against
torch's result first; then the launches `gram` and `square_plus` use, including a transposed view (Muon's tall
matrices), against torch and against the pointer-load kernel they replaced (`symmetric_pointer.py`). Writes
DIR/symmetric_gpu.md and DIR/symmetric_gpu.json.

On the GPU machine, from the repository root: python3 bench/symmetric_gpu.py --out DIR
The kernel's tests (CPU, Triton's interpreter) are in nbs/08_symmetric.ipynb.
"""
import argparse, datetime, itertools, json, os, sys, time
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
import triton
from fastoptim.symmetric import symmetric_product, gram, square_plus
from symmetric_pointer import pointer_product
from timing import median_ms


def work_fraction(m, block):
    "The fraction of the full product's tiles the kernel computes: (T+1)/(2T) for T tiles per side"
    T = triton.cdiv(m, block)
    return (T + 1) / (2 * T)


# ---------------------------------------------------------------- GPU benchmark

CONFIGS = [dict(block=b, block_k=bk, warps=w, stages=s, programs=p)  # 64-row tiles: slower in every case (first sweep)
           for b, bk, w, s, p in itertools.product((128,), (64, 128), (4, 8), (3, 4), ('per SM', 'per tile'))]
A_COEF, B_COEF, C_COEF = 3.4445, -4.7750, 2.0315  # Muon's quintic: X ← aX + (bA + cA²)X


def rel_diff(got, ref):
    "max |got − ref| / max |ref|, in fp32"
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def tflops(flops, ms):
    "TFLOP/s of `flops` done in `ms`"
    return flops / (ms * 1e-3) / 1e12


def bench_case(name, y, addend, alpha, beta, torch_fn, reps, deadline):
    "Correctness and timing of torch and of each config on one stack; configs left when `deadline` passes are skipped"
    device = y.device
    k, m, n = y.shape
    flops = 2 * k * m * m * n  # the full product's, as torch computes it
    ref = torch_fn()
    torch_ms = median_ms(torch_fn, reps, device, warmup=3)
    out = torch.empty_like(ref)
    rows = []
    for cfg in CONFIGS:
        row = dict(cfg, work=work_fraction(m, cfg['block']))
        if time.monotonic() > deadline:
            rows.append(dict(row, error='time budget spent'))
            continue
        launch = dict(cfg, programs=None if cfg['programs'] == 'per SM' else k * (triton.cdiv(m, cfg['block']) + 1) * triton.cdiv(m, cfg['block']) // 2)
        fn = lambda: symmetric_product(y, alpha, addend, beta, out=out, **launch)
        try:
            out.fill_(float('nan'))  # a tile left unwritten shows in the error
            fn()  # compiles
            torch.cuda.synchronize()
            err = rel_diff(out, ref)
            ms = median_ms(fn, reps, device, warmup=3)
        except Exception as e:  # out of shared memory, or a config the compiler refuses
            torch.cuda.synchronize()
            last = str(e).strip().splitlines()[-1:]  # a compile error's last line names it; out-of-resources has one line
            rows.append(dict(row, error=f"{type(e).__name__}: {''.join(last)[:200]}"))
            continue
        rows.append(dict(row, ms=ms, tflops_equiv=tflops(flops, ms), tflops_done=tflops(flops * row['work'], ms),
                         speedup=torch_ms / ms, rel_diff=err))
        print(f"  {name} {cfg}: {ms:.3f} ms, {tflops(flops, ms):.0f} TFLOP/s torch-equivalent, rel diff {err:.1e}", flush=True)
    return dict(name=name, shape=[k, m, n], torch_ms=torch_ms, torch_tflops=tflops(flops, torch_ms), flops=flops, configs=rows)


def gpu_bench(args):
    "Run the three cases and the bmm rate, write the markdown and json reports"
    start = time.monotonic()
    device = torch.device('cuda')
    torch.manual_seed(0)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now().isoformat(timespec='seconds'), command='python3 ' + ' '.join(sys.argv))
    results = dict(meta=meta, cases=[])

    x = torch.randn(64, 2048, 2048, device=device, dtype=torch.bfloat16)
    o = torch.empty_like(x)
    bmm_ms = median_ms(lambda: torch.bmm(x, x, out=o), args.reps, device, warmup=5)
    results['bmm_64x2048^3'] = dict(ms=bmm_ms, tflops=tflops(2 * 64 * 2048 ** 3, bmm_ms))
    print(f"bmm 64 × 2048³: {bmm_ms:.3f} ms, {results['bmm_64x2048^3']['tflops']:.0f} TFLOP/s", flush=True)
    del x, o

    def gram(k, m, n):
        "A random bf16 stack and torch's Gram product of it, into a buffer of its own"
        y = torch.randn(k, m, n, device=device, dtype=torch.bfloat16)
        t = torch.empty(k, m, m, device=device, dtype=torch.bfloat16)
        return y, lambda: torch.bmm(y, y.mT, out=t)

    def square():
        "A random symmetric bf16 stack (scaled like Muon's A) and torch's bA + cA²"
        a = torch.randn(112, 2048, 2048, device=device, dtype=torch.bfloat16).mul_(0.02)
        a = (a + a.mT) / 2
        t = torch.empty_like(a)
        return a, lambda: torch.baddbmm(a, a, a, beta=B_COEF, alpha=C_COEF, out=t)

    cases = [('Gram 64 × 2048×2048', lambda: (*gram(64, 2048, 2048), None, 1.0, 0.0)),
             ('Gram 48 × 2048×5504', lambda: (*gram(48, 2048, 5504), None, 1.0, 0.0)),
             ('bA + cA² 112 × 2048×2048', lambda: (*square(), 'self', C_COEF, B_COEF))]
    end = start + args.budget
    for idx, (name, make) in enumerate(cases):
        y, torch_fn, add, alpha, beta = make()
        deadline = time.monotonic() + (end - time.monotonic()) / (len(cases) - idx)  # the time left, shared by the cases left
        results['cases'].append(bench_case(name, y, y if add == 'self' else None, alpha, beta, torch_fn, args.reps, deadline))
        del y, torch_fn
        torch.cuda.empty_cache()
    results['library'] = library_launches(args.reps)
    results['seconds'] = time.monotonic() - start

    text = report(results)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'symmetric_gpu.md'), 'w') as f: f.write(text + '\n')
    with open(os.path.join(args.out, 'symmetric_gpu.json'), 'w') as f: json.dump(results, f, indent=1)
    print(text)


def library_launches(reps):
    "`gram` and `square_plus` as Muon calls them (their own launches), against torch, on each stack of the LLM-like set; the tall stack as its transposed view"
    device = torch.device('cuda')
    rows = []
    for name, shape, transposed in (('gram, 64 × 2048×2048', (64, 2048, 2048), False), ('gram, 16 × 2048×5504', (16, 2048, 5504), False),
                                    ('gram, 32 × 5504×2048 transposed (.mT)', (32, 5504, 2048), True)):
        x = torch.randn(*shape, device=device, dtype=torch.bfloat16)
        y = x.mT if transposed else x
        k, m, n = y.shape
        ref = torch.bmm(y, y.mT)
        err = rel_diff(gram(y), ref)
        ours, theirs = median_ms(lambda: gram(y), reps, device, warmup=3), median_ms(lambda: torch.bmm(y, y.mT), reps, device, warmup=3)
        before = median_ms(lambda: pointer_product(y, warps=8), reps, device, warmup=3)
        rows.append(dict(name=name, ms=ours, torch_ms=theirs, speedup=theirs / ours, rel_diff=err, tflops_equiv=tflops(2 * k * m * m * n, ours),
                         pointer_ms=before))
        del x, y, ref
    a = torch.randn(112, 2048, 2048, device=device, dtype=torch.bfloat16).mul_(0.02)
    a = (a + a.mT) / 2
    # as Muon calls it: aI + bA + cA²; torch's bA + cA² (its products cannot add aI before rounding)
    fn, torch_fn = lambda: square_plus(a, C_COEF, B_COEF, shift=A_COEF), lambda: torch.baddbmm(a, a, a, beta=B_COEF, alpha=C_COEF)
    err = rel_diff(fn(), torch_fn().float() + A_COEF * torch.eye(2048, device=device))
    ours, theirs = median_ms(fn, reps, device, warmup=3), median_ms(torch_fn, reps, device, warmup=3)
    before = median_ms(lambda: pointer_product(a, C_COEF, a, B_COEF, A_COEF, warps=4), reps, device, warmup=3)
    rows.append(dict(name='square_plus(shift=a), 112 × 2048×2048', ms=ours, torch_ms=theirs, speedup=theirs / ours, rel_diff=err,
                     tflops_equiv=tflops(2 * 112 * 2048 ** 3, ours), pointer_ms=before))
    for r in rows: print(f"  {r['name']}: {r['ms']:.3f} ms against torch {r['torch_ms']:.3f} ms ({r['speedup']:.2f}×) and pointer loads "
                         f"{r['pointer_ms']:.3f} ms, rel diff {r['rel_diff']:.1e}", flush=True)
    return rows


def report(results):
    "The markdown report: header, a summary per case, then each case's sweep, fastest first, failures last"
    meta = results['meta']
    bmm = results['bmm_64x2048^3']
    lines = ['# Symmetric products (upper tiles only) against torch, bf16', '',
             f"{meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date']}; "
             f"command: `{meta['command']}`; {results['seconds']:.0f} s in all", '',
             f"Plain bmm, 64 × 2048³: {bmm['ms']:.3f} ms, {bmm['tflops']:.0f} TFLOP/s.", '',
             "TFLOP/s torch-equivalent: the full product's 2·k·m²·n over the time; done: the flops of the tiles computed "
             "(the work fraction (T+1)/(2T) of those). Rel diff: max |ours − torch| / max |torch|, both bf16.", '',
             '| case | torch ms | torch TFLOP/s | best config (block/block_k/warps/stages/programs) | ms | TFLOP/s equiv | TFLOP/s done | work | speedup | rel diff |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for case in results['cases']:
        ok = [r for r in case['configs'] if 'ms' in r]
        if not ok:
            lines.append(f"| {case['name']} | {case['torch_ms']:.3f} | {case['torch_tflops']:.0f} | none ran | | | | | | |")
            continue
        r = min(ok, key=lambda r: r['ms'])
        lines.append(f"| {case['name']} | {case['torch_ms']:.3f} | {case['torch_tflops']:.0f} | "
                     f"{r['block']}/{r['block_k']}/{r['warps']}/{r['stages']}/{r['programs']} | {r['ms']:.3f} | {r['tflops_equiv']:.0f} | "
                     f"{r['tflops_done']:.0f} | {r['work']:.3f} | {r['speedup']:.2f}× | {r['rel_diff']:.1e} |")
    lines += ['', "The launches Muon uses (`gram`, `square_plus`), on each of the LLM-like set's stacks, against torch and against the "
              "pointer-load kernel of 060c721 at its launches:", '',
              '| call | ms | torch ms | speedup | TFLOP/s equiv | rel diff | pointer loads ms |', '|---|---|---|---|---|---|---|']
    lines += [f"| {r['name']} | {r['ms']:.3f} | {r['torch_ms']:.3f} | {r['speedup']:.2f}× | {r['tflops_equiv']:.0f} | {r['rel_diff']:.1e} | {r['pointer_ms']:.3f} |"
              for r in results['library']]
    for case in results['cases']:
        lines += ['', f"## {case['name']}: torch {case['torch_ms']:.3f} ms, {case['torch_tflops']:.0f} TFLOP/s", '',
                  '| block | block_k | warps | stages | programs | ms | TFLOP/s equiv | TFLOP/s done | work | speedup | rel diff |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        rows = sorted(case['configs'], key=lambda r: r.get('ms', float('inf')))
        for r in rows:
            head = f"| {r['block']} | {r['block_k']} | {r['warps']} | {r['stages']} | {r['programs']} |"
            if 'ms' in r:
                lines.append(f"{head} {r['ms']:.3f} | {r['tflops_equiv']:.0f} | {r['tflops_done']:.0f} | {r['work']:.3f} | "
                             f"{r['speedup']:.2f}× | {r['rel_diff']:.1e} |")
            else:
                lines.append(f"{head} skipped: {r['error'].replace('|', '/')} | | | {r['work']:.3f} | | |")
    return '\n'.join(lines)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', help='folder for symmetric_gpu.md and symmetric_gpu.json')
    parser.add_argument('--reps', type=int, default=20, help='timed calls per measurement (median)')
    parser.add_argument('--budget', type=float, default=170, help='seconds for the whole GPU run; configs past it are skipped')
    args = parser.parse_args()
    if not args.out: parser.error('--out DIR is needed')
    if not torch.cuda.is_available(): parser.error('the benchmark needs a CUDA GPU (the kernel\'s CPU tests are in nbs/08_symmetric.ipynb)')
    gpu_bench(args)
