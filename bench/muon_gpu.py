"""Muon on the GPU: fastoptim's batched Newton–Schulz against torch.optim.Muon, on the 112 hidden matrices of the
LLM-like set (810M parameters), in one process or divided over two.

One process (`python bench/muon_gpu.py --out $OUT`):
1. the bf16 matmul rate of this GPU (a batched 2048×2048 product, the iteration's commonest);
2. correctness: fastoptim's iteration in fp32 against an fp64 one, and a Muon step against torch.optim.Muon's;
3. the iteration alone on each shape's stack, its symmetric products by torch (in full) and by `fastoptim.symmetric` (the
   upper tiles only; the default on CUDA in bf16) (ms, TFLOP/s counted as torch's iteration does: 4m²n + 2m³ per matrix
   and step of the iteration, m ≤ n);
4. `opt.step()` (CUDA events, median): torch.optim.Muon and fastoptim's Muon (each backend), bf16 and fp32 weights;
   then torch.optim.Muon, fastoptim's default (`gram_form=True`), `aol=True`, and each with `gram_form=False` (the quintic
   throughout) again in interleaved rounds, each round's ratio.

Two processes (`torchrun --nproc_per_node=2 bench/muon_gpu.py --out $OUT`): every process has the same
gradients (as under DDP); the step of torch.optim.Muon (all of the work on every process), fastoptim's with the
work repeated (`data_parallel=False`) and divided (the default).
"""
import argparse, contextlib, datetime, json, math, os, platform, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import torch.distributed as dist
from timing import median_ms, write_report
from shapes import llm_shapes, resnet50_shapes


def hidden_matrices():
    "The LLM-like set's 2-D tensors but the embedding and the head: 112 matrices"
    shapes = llm_shapes()
    return [s for s in shapes[1:-1] if len(s) == 2]

def conv_matrices():
    "The ResNet-50-like set's conv weights as the matrices Muon orthogonalises (out × in·kh·kw): 53 of them, 23.5M parameters"
    return [(s[0], s[1] * s[2] * s[3]) for s in resnet50_shapes() if len(s) == 4]

def ns_flops(shape, steps=5):
    "FLOPs of torch's iteration on one matrix: 4m²n + 2m³ per step, m ≤ n"
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m ** 3)

def make(shapes, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    ps = [torch.randn(s, device=device, dtype=torch.float32, generator=g).mul_(0.02).to(dtype).requires_grad_() for s in shapes]
    grads = [[torch.randn(s, device=device, dtype=torch.float32, generator=g).to(dtype) for s in shapes] for _ in range(2)]
    return ps, grads

def step_ms(opt, ps, grads, device, reps):
    "Median `opt.step()` with gradients at fixed addresses, as backward leaves them between steps"
    for p, g in zip(ps, grads[0]): p.grad = g
    return median_ms(opt.step, reps, device, warmup=3)

@contextlib.contextmanager
def replaced(module, name, value):
    "Within: `module.name` is `value`"
    before = getattr(module, name)
    setattr(module, name, value)
    try: yield
    finally: setattr(module, name, before)

def tiled_from(work):
    "Within: `fastoptim.symmetric.min_tiled_work` at `work` (inf: Muon's symmetric products computed in full by torch, as on the CPU; 0: every bf16 CUDA stack in upper tiles, however small)"
    import fastoptim.symmetric as symmetric
    return replaced(symmetric, 'min_tiled_work', work)

def interleaved(opts, grads, device, reps, rounds):
    "Each optimizer of `opts` (name -> (optimizer, its parameters)) timed once a round (`step_ms`), in an order rotated each round, so that the GPU's clock drifting over a run (its power and temperature) weighs on all alike: name -> ms per round"
    times, names = {name: [] for name in opts}, list(opts)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            opt, params = opts[name]
            times[name].append(step_ms(opt, params, grads, device, reps))
    return times

class Within:
    "`opt` whose steps each run within a fresh `context()`"
    def __init__(self, opt, context): self.opt, self.context = opt, context
    def step(self):
        with self.context(): self.opt.step()

def unfolded():
    "Within: the iteration's update as it was before the folded form, aX + (bA + cA²)X by `torch.baddbmm` after the upper tiles' bA + cA²"
    import fastoptim.muon as muon
    from fastoptim.symmetric import square_plus
    return replaced(muon, 'polynomial_product', lambda x, A, a, b, c, out=None: torch.baddbmm(x, square_plus(A, c, b), x, beta=a, out=out))

def matmul_rate(device, m=2048, k=64):
    a = torch.randn(k, m, m, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    ms = median_ms(lambda: torch.bmm(a, a, out=out), 20, device, warmup=5)
    return 2 * k * m ** 3 / (ms * 1e-3) / 1e12

def single(args, device, lines, record):
    from fastoptim.all import Muon
    from fastoptim.muon import newton_schulz, gram_newton_schulz
    from timing import copy_bandwidth
    args.bandwidth = copy_bandwidth(device)
    record['copy_bandwidth_GBps'] = args.bandwidth
    lines.append(f"device-to-device copy bandwidth: {args.bandwidth:.0f} GB/s")
    rate = matmul_rate(device)
    record['matmul_tflops'] = rate
    lines.append(f"bf16 batched matmul (64 × 2048³): {rate:.0f} TFLOP/s")

    # correctness: the iteration in fp32 against fp64; in bf16 with the upper tiles against torch's full products (a tall
    # stack too, which arrives transposed), each against fp64; a step against torch.optim.Muon's
    torch.manual_seed(0)
    x = torch.randn(3, 256, 640, device=device)
    exact = newton_schulz(x.double().clone())
    err = ((newton_schulz(x.clone()).double() - exact).abs().max() / exact.abs().max()).item()
    record['ns_fp32_vs_fp64'] = err
    lines.append(f"iteration in fp32 against fp64: max rel diff {err:.1e}")
    assert err < 1e-4, err
    for shape in ((8, 2048, 4096), (8, 4096, 2048)):  # both symmetric products above `min_tiled_work`: in upper tiles
        x = torch.randn(*shape, device=device)
        exact = newton_schulz(x.double().clone())
        with tiled_from(math.inf): full = newton_schulz(x.bfloat16())
        with unfolded(): before = newton_schulz(x.bfloat16())
        tiles = newton_schulz(x.bfloat16())
        errs = [((o.double() - exact).abs().max() / exact.abs().max()).item() for o in (full, before, tiles)]
        record[f'ns_bf16_vs_fp64_{shape}'] = errs
        lines.append(f"iteration in bf16 on {shape}, against fp64 (max abs diff / max abs): torch's products {errs[0]:.2e}, "
                     f"upper tiles with aX + BX by baddbmm {errs[1]:.2e}, upper tiles with (aI + B)X {errs[2]:.2e}")
        assert errs[2] < 1.5 * errs[0] + 1e-3, errs
    shapes = [(512, 512), (512, 512), (1376, 512), (512, 1376)]
    for dtype in (torch.float32, torch.bfloat16):
        ps, grads = make(shapes, dtype, device, seed=1)
        qs = [p.detach().clone().requires_grad_() for p in ps]
        ours = Muon(ps, lr=0.02, wd=0.1, rms_match=0., triton=True, kahan_sum=False)
        theirs = torch.optim.Muon(qs, lr=0.02, weight_decay=0.1)
        for i in range(4):
            for p, q, g in zip(ps, qs, grads[i % 2]): p.grad, q.grad = g, g.clone()
            ours.step(); theirs.step()
        d = max(((p.float() - q.float()).abs().max() / q.float().abs().max()).item() for p, q in zip(ps, qs))
        record[f'step_vs_torch_{dtype}'] = d
        lines.append(f"4 Muon steps, {str(dtype)[6:]} weights, triton: max rel diff from torch.optim.Muon {d:.1e}")

    # what the iteration's products run at: the plain product, the Gram product (x·xᵀ), and the two with an addend
    k, m = 64, 2048
    xs = torch.randn(k, m, m, device=device, dtype=torch.bfloat16)
    lines += ['', f'| product on {k} × {m}×{m} | TFLOP/s |', '|---|---|']
    for name, fn in (('bmm(x, y)', lambda: torch.bmm(xs, xs)), ('bmm(x, x.mT)', lambda: torch.bmm(xs, xs.mT)),
                     ('baddbmm(A, A, A, beta=b, alpha=c)', lambda: torch.baddbmm(xs, xs, xs, beta=-4.775, alpha=2.0315)),
                     ('baddbmm(x, B, x, beta=a)', lambda: torch.baddbmm(xs, xs, xs, beta=3.4445))):
        ms = median_ms(fn, 10, device, warmup=3)
        record[f'product_{name}'] = 2 * k * m ** 3 / (ms * 1e-3) / 1e12
        lines.append(f"| {name} | {record[f'product_{name}']:.0f} |")
    del xs

    # quality: each iteration's distance from the exact orthogonal factor U·Vᵀ (fp64 SVD), on spectra like gradients'
    lines += ['', '| matrix | spectrum | iteration | ‖O − UVᵀ‖/‖UVᵀ‖ | singular values of O | ‖O − O_quintic5‖/‖O_quintic5‖ |', '|---|---|---|---|---|---|']
    for shape in ((2048, 2048), (2048, 5504)):
        u, _, v = torch.linalg.svd(torch.randn(shape, device=device, dtype=torch.float64), full_matrices=False)
        r = torch.arange(1, min(shape) + 1, device=device, dtype=torch.float64)
        for spectrum, sv in (('Gaussian', None), ('σᵢ ∝ i^-0.5', r ** -0.5), ('σᵢ ∝ i^-1', r ** -1.)):
            g = torch.randn(shape, device=device, dtype=torch.float64) if sv is None else (u * sv) @ v
            uu, _, vv = torch.linalg.svd(g, full_matrices=False)
            polar = uu @ vv
            outs = {}
            for name, aol, steps in (('quintic, 5 steps', False, 5), ('quintic, 5 steps, aX + BX by baddbmm', False, 5),
                                     ("quintic, 5 steps, torch's products", False, 5), ('AOL + quintic, 4 steps', True, 4),
                                     ('quintic, 4 steps', False, 4), ('Gram form, 5 steps', False, 5), ('AOL + Gram form, 4 steps', True, 4)):
                if 'Gram' in name and shape[0] == shape[1]: continue  # newton_schulz takes the Gram form only for long matrices
                with unfolded() if 'baddbmm' in name else tiled_from(math.inf) if 'torch' in name else contextlib.nullcontext():
                    one = g[None].to(torch.bfloat16)  # a single matrix: the Gram form called directly (newton_schulz takes it for larger stacks)
                    o = (gram_newton_schulz if 'Gram' in name else newton_schulz)(one, steps=steps, aol=aol)[0].double()
                outs[name] = o
                sv_o = torch.linalg.svdvals(o)
                err = ((o - polar).norm() / polar.norm()).item()
                vs5 = ((o - outs['quintic, 5 steps']).norm() / outs['quintic, 5 steps'].norm()).item()
                record[f'quality_{shape}_{spectrum}_{name}'] = (err, sv_o.min().item(), sv_o.max().item(), vs5)
                lines.append(f"| {shape[0]}×{shape[1]} | {spectrum} | {name} | {err:.3f} | {sv_o.min().item():.2f} … {sv_o.max().item():.2f} | {vs5:.3f} |")

    # the iteration alone, per shape's stack: symmetric products by torch in full, and by the upper tiles
    mats = hidden_matrices()
    by_shape = {}
    for s in mats: by_shape[s] = by_shape.get(s, 0) + 1
    lines += ['', '| stack | symmetric products | ms | TFLOP/s (torch-equivalent) |', '|---|---|---|---|']
    totals = dict(full=0., unfolded=0., tiles=0., aol=0., gram=0., aol_gram=0.)
    for shape, k in by_shape.items():
        stack = torch.randn(k, *shape, device=device, dtype=torch.bfloat16)
        work = stack.clone()
        for name, steps, aol in (('full', 5, False), ('unfolded', 5, False), ('tiles', 5, False), ('aol', 4, True), ('gram', 5, False),
                                 ('aol_gram', 4, True)):
            with tiled_from(math.inf) if name == 'full' else unfolded() if name == 'unfolded' else contextlib.nullcontext():
                ms = median_ms(lambda: newton_schulz(work.copy_(stack), steps=steps, aol=aol, gram_form='gram' in name), args.reps, device, warmup=2)
            totals[name] += ms
            record[f'ns_{k}x{shape[0]}x{shape[1]}_{name}_ms'] = ms
            label = dict(full="torch's, in full", unfolded='upper tiles, aX + BX by baddbmm', tiles='upper tiles, (aI + B)X (default)',
                         aol='upper tiles, (aI + B)X, AOL + 4 steps', gram='gram_form=True (the Gram form where 2× longer than wide)',
                         aol_gram='gram_form=True, AOL + 4 steps')[name]
            lines.append(f"| {k} × {shape[0]}×{shape[1]} | {label} | {ms:.2f} | {k * ns_flops(shape) / (ms * 1e-3) / 1e12:.0f} |")
    flops = sum(ns_flops(s) for s in mats)
    record['ns_tflop_torch_equivalent'] = flops / 1e12
    record.update({f'ns_total_{k}_ms': v for k, v in totals.items()})
    lines.append(f"\nIteration, 112 matrices: {flops / 1e12:.1f} TFLOP as torch computes it; torch's products {totals['full']:.1f} ms, "
                 f"upper tiles {totals['tiles']:.1f} ms ({flops / (totals['tiles'] * 1e-3) / 1e12:.0f} TFLOP/s torch-equivalent), "
                 f"with AOL {totals['aol']:.1f} ms; upper tiles with aX + BX by baddbmm {totals['unfolded']:.1f} ms; "
                 f"gram_form=True {totals['gram']:.1f} ms, with AOL {totals['aol_gram']:.1f} ms")

    # the optimizer steps
    lines += ['', '| weights | optimizer | step ms | ratio to torch.optim.Muon | TFLOP/s (torch-equivalent) |', '|---|---|---|---|---|']
    for dtype in (torch.bfloat16, torch.float32):
        ps, grads = make(mats, dtype, device)
        torch_opt = torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw')
        base = step_ms(torch_opt, ps, grads, device, args.reps)
        del torch_opt
        rows = [('torch.optim.Muon', base)]
        quintic = dict(gram_form=False)
        for backend, options, variant in (('triton', {}, None), ('triton', quintic, None), ('triton', quintic, 'full'), ('triton', quintic, 'unfolded'),
                                          ('foreach', {}, None), ('jit', {}, None), ('triton', dict(aol=True), None),
                                          ('triton', dict(aol=True, **quintic), None)):
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            opt = Muon(ps2, lr=1e-3, wd=0.1, **{backend: True}, **options)
            label = {None: '', 'full': ', torch products in full', 'unfolded': ', aX + BX by baddbmm'}[variant]
            with tiled_from(math.inf) if variant == 'full' else unfolded() if variant == 'unfolded' else contextlib.nullcontext():
                rows.append((f"fastoptim Muon ({''.join([backend] + [f', {k}={v}' for k, v in options.items()])}{label})",
                             step_ms(opt, ps2, grads, device, args.reps)))
            del opt, ps2
            torch.cuda.empty_cache()
        # the elementwise passes alone: the same step with the iteration skipped, against their byte bound
        from fastoptim.muon import newton_schulz_bf16
        ps2 = [p.detach().clone().requires_grad_() for p in ps]
        opt = Muon(ps2, lr=1e-3, wd=0.1, triton=True)
        object.__setattr__(newton_schulz_bf16, 'apply', lambda stack, **kw: stack)
        try: rows.append(('fastoptim Muon (triton), iteration skipped', step_ms(opt, ps2, grads, device, args.reps)))
        finally: object.__setattr__(newton_schulz_bf16, 'apply', newton_schulz)
        del opt, ps2
        size = dtype.itemsize
        # first pass: g, momentum read, momentum and bf16 workspace written; second: p, workspace (and Kahan's
        # compensation for bf16 weights) read, p (and the compensation) written
        per_param = 3 * size + 2 + (2 + 2 * size + (2 * size if dtype == torch.bfloat16 else 0))
        record[f'elementwise_bound_ms_{str(dtype)[6:]}'] = sum(a * b for a, b in mats) * per_param / (args.bandwidth * 1e9) * 1e3
        for name, ms in rows:
            record[f'step_{str(dtype)[6:]}_{name}'] = ms
            lines.append(f"| {str(dtype)[6:]} | {name} | {ms:.1f} | {base / ms:.2f}× | {flops / (ms * 1e-3) / 1e12:.0f} |")
        lines.append(f"| {str(dtype)[6:]} | byte bound of the elementwise passes ({per_param} B/parameter) | "
                     f"{record[f'elementwise_bound_ms_{str(dtype)[6:]}']:.1f} | | |")
        del ps, grads
        torch.cuda.empty_cache()

    # the same steps in interleaved rounds: each round times every optimizer once (in a rotated order), so that a GPU's
    # clock drifting over the run (its power and temperature) weighs on all of them alike; the ratios are per round
    rounds = 5
    lines += ['', f'Interleaved: {rounds} rounds, each timing every optimizer ({args.reps} steps, median) in a rotated order; '
              'ratio to torch.optim.Muon in the same round', '',
              '| weights | optimizer | median ms | median ratio | lowest ratio | highest ratio |', '|---|---|---|---|---|---|']
    for dtype in (torch.bfloat16, torch.float32):
        ps, grads = make(mats, dtype, device)
        opts = {'torch.optim.Muon': (torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw'), ps)}
        for label, options in (('fastoptim Muon (triton)', {}), ('fastoptim Muon (triton, aol=True)', dict(aol=True)),
                               ('fastoptim Muon (triton, gram_form=False)', dict(gram_form=False)),
                               ('fastoptim Muon (triton, aol=True, gram_form=False)', dict(aol=True, gram_form=False))):
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            opts[label] = (Muon(ps2, lr=1e-3, wd=0.1, triton=True, **options), ps2)
        times = interleaved(opts, grads, device, args.reps, rounds)
        for name in opts:
            ratios = sorted(t / m for t, m in zip(times['torch.optim.Muon'], times[name]))
            record[f'interleaved_{str(dtype)[6:]}_{name}'] = dict(ms=times[name], ratios=ratios)
            lines.append(f"| {str(dtype)[6:]} | {name} | {sorted(times[name])[rounds // 2]:.1f} | {ratios[rounds // 2]:.2f}× | "
                         f"{ratios[0]:.2f}× | {ratios[-1]:.2f}× |")
        del opts, ps, grads
        torch.cuda.empty_cache()

    # many small matrices: the ResNet-50-like set's conv weights, where a loop over matrices is bound by launches
    convs = conv_matrices()
    cflops = sum(ns_flops(s) for s in convs)
    lines += ['', f'ResNet-50-like conv weights ({len(convs)} matrices, {sum(a * b for a, b in convs) / 1e6:.1f}M parameters, '
              f'{cflops / 1e12:.2f} TFLOP per iteration run), fp32 weights', '',
              '| optimizer | step ms | ratio to torch.optim.Muon |', '|---|---|---|']
    ps, grads = make(convs, torch.float32, device)
    base = step_ms(torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw'), ps, grads, device, args.reps)
    rows = [('torch.optim.Muon', base)]
    for options, tiled in (({}, False), (dict(aol=True), False), (dict(gram_form=False), True)):
        ps2 = [p.detach().clone().requires_grad_() for p in ps]
        with tiled_from(0) if tiled else contextlib.nullcontext():
            rows.append((f"fastoptim Muon ({''.join(['triton'] + [f', {k}={v}' for k, v in options.items()])}{', every stack in upper tiles' if tiled else ''})",
                         step_ms(Muon(ps2, lr=1e-3, wd=0.1, triton=True, **options), ps2, grads, device, args.reps)))
    for name, ms in rows:
        record[f'resnet_step_{name}'] = ms
        lines.append(f"| {name} | {ms:.2f} | {base / ms:.2f}× |")

def divided(args, device, rank, world, lines, record):
    from fastoptim.all import Muon
    mats = hidden_matrices()
    flops = sum(ns_flops(s) for s in mats)
    ps, grads = make(mats, torch.bfloat16, device)  # the same seed: every process has the same gradients
    rows = []
    torch_opt = torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw')
    rows.append(('torch.optim.Muon (all work on each GPU)', step_ms(torch_opt, ps, grads, device, args.reps)))
    del torch_opt
    for name, data_parallel, aol in (('fastoptim Muon, work repeated', False, False), ('fastoptim Muon, work divided', True, False),
                                     ('fastoptim Muon (aol=True), work divided', True, True),
                                     ('fastoptim Muon, work divided, aX + BX by baddbmm', True, False)):
        ps2 = [p.detach().clone().requires_grad_() for p in ps]
        opt = Muon(ps2, lr=1e-3, wd=0.1, triton=True, data_parallel=data_parallel, aol=aol)
        dist.barrier()
        with unfolded() if 'baddbmm' in name else contextlib.nullcontext():
            rows.append((name, step_ms(opt, ps2, grads, device, args.reps)))
        if name == 'fastoptim Muon, work divided':  # every process ends with the same weights
            w = torch.cat([p.detach().float().flatten()[:4096] for p in ps2])
            other = w.clone(); dist.broadcast(other, 0)
            record['divided_identical_across_ranks'] = bool(torch.equal(w, other))
        del opt, ps2
        torch.cuda.empty_cache()
    base = rows[0][1]
    lines += [f'{world} processes, bf16 weights, the same gradients on each', '',
              '| optimizer | step ms | ratio to torch.optim.Muon | TFLOP/s per GPU (torch-equivalent, whole set) |', '|---|---|---|---|']
    for name, ms in rows:
        record[f'dist_step_{name}'] = ms
        lines.append(f"| {name} | {ms:.1f} | {base / ms:.2f}× | {flops / (ms * 1e-3) / 1e12:.0f} |")
    lines.append(f"\nweights identical on every process after the divided steps: {record['divided_identical_across_ranks']}")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.environ.get('OUT', 'muon_results'))
    ap.add_argument('--reps', type=int, default=10)
    args = ap.parse_args()
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    if world > 1:
        dist.init_process_group('nccl')
        torch.cuda.set_device(rank)
    device = torch.device('cuda', rank)
    import triton
    lines = [f"# Muon, {torch.cuda.get_device_name(device)}, {'one process' if world == 1 else f'{world} processes'}",
             f"{datetime.date.today()}, torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}",
             f"command: {'torchrun --nproc_per_node=2 ' if world > 1 else 'python '}bench/muon_gpu.py --out $OUT", '']
    record = {}
    if world == 1: single(args, device, lines, record)
    else: divided(args, device, rank, world, lines, record)
    if rank == 0:
        tag = 'single' if world == 1 else f'x{world}'
        write_report('\n'.join(lines), os.path.join(args.out, f'muon_{tag}.md'))
        with open(os.path.join(args.out, f'muon_{tag}.json'), 'w') as f: json.dump(record, f, indent=1)
    if world > 1: dist.destroy_process_group()

if __name__ == '__main__':
    main()
