"""GPU check, timing and memory of Adafactor (59_adafactor), whose second moment the engine keeps factored: every backend
against the for-loop one on CUDA (fp32, bf16 with Kahan summation, bf16 with stochastic rounding) and against
torch.optim.Adafactor (fp32); CUDA-graph replays of the Triton step against eager steps; the Triton step timed, eager and
replayed, on the ResNet-50-like (fp32) and LLM-like (bf16 + Kahan) sets, against the byte bound of the work it does
(the factor update's two reads of each matrix's gradient, then two passes) and of one pass, beside torch.optim.Adafactor
(foreach and for-loop) and fastoptim's AdamW; the optimizer state each keeps (bytes per parameter, from
torch.cuda.memory_allocated) and the memory a step needs beyond it (peak over the state).

Run on the GPU machine from the repository root:
    python3 bench/adafactor_gpu.py --out $OUT
"""
import argparse, datetime, gc, json, os, sys, traceback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import torch
import triton
import fastoptim.all  # noqa: F401  (registers every backend and algorithm)
from fastoptim.all import Adafactor, Adam
from fastoptim.testing import drive, rel_diff, param_groups
from shapes import llm_shapes, resnet50_shapes
from timing import capture, check_lines, copy_bandwidth, median_ms, run_checks, write_report
from catalogue_gpu import make_params

dev = torch.device('cuda')
BACKENDS = ('foreach', 'jit', 'triton')


def correctness():
    rows = []
    for label, dtype, rounding, tol in (('fp32', torch.float32, {}, 1e-6), ('bf16 Kahan', torch.bfloat16, {}, 2e-2),
                                        ('bf16 stochastic', torch.bfloat16, dict(stochastic_rounding=True, seed=3), 2e-2)):
        run = lambda b: drive(lambda groups: Adafactor(groups, wd=0.1, **{b: True}, **rounding), device=dev, dtype=dtype,
                              steps=24, frozen=(8, 16), mom_schedule=False)[1]
        expected = run('forloop')
        for b in BACKENDS:
            d = rel_diff(run(b), expected)
            rows.append(dict(check=f'{label}, against the for-loop backend', backend=b, value=d, ok=d < tol))
    for b in ('forloop', *BACKENDS):  # against torch.optim.Adafactor, 40 steps
        ps = [p.to(dev).detach().requires_grad_() for grp in param_groups(0) for p in grp]
        qs = [p.detach().clone().requires_grad_() for p in ps]
        ours, theirs = Adafactor(ps, wd=0.1, **{b: True}), torch.optim.Adafactor(qs, weight_decay=0.1, foreach=False)
        gen = torch.Generator(device=dev).manual_seed(1)
        for _ in range(40):
            for p, q in zip(ps, qs):
                p.grad = torch.randn(p.shape, device=dev, generator=gen)
                q.grad = p.grad.clone()
            ours.step(); theirs.step()
        d = rel_diff(ps, qs)
        rows.append(dict(check='fp32, against torch.optim.Adafactor (40 steps)', backend=b, value=d, ok=d < 1e-5))
    # channels_last conv weights: with no backend flag the step takes foreach (the Triton kernels index factored states
    # in contiguous layouts), and matches contiguous weights stepped by Triton
    w = torch.randn(16, 8, 3, 3, device=dev).to(memory_format=torch.channels_last).requires_grad_()
    v = w.detach().contiguous().requires_grad_()
    default, contiguous = Adafactor([w]), Adafactor([v], triton=True)
    for i in range(3):
        w.grad = torch.randn(w.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(i)).to(memory_format=torch.channels_last)
        v.grad = w.grad.contiguous()
        default.step(); contiguous.step()
    d = rel_diff([w.detach()], [v.detach()])
    used = sorted(set(default.backends_used.values()))
    rows.append(dict(check=f'channels_last weights, no backend flag (took {used}), against contiguous ones on Triton', backend='default',
                     value=d, ok=d < 1e-6 and used == ['foreach']))
    return rows


def capture_replay():
    "Eager Triton steps, and the same steps replayed from a CUDA graph on a copy: weights and factors must agree exactly"
    shapes = [(256, 64), (8, 16, 3, 3), (64,)]
    gen = torch.Generator(device=dev).manual_seed(0)
    def params(): return [torch.randn(s, device=dev, generator=torch.Generator(device=dev).manual_seed(i)).requires_grad_()
                          for i, s in enumerate(shapes)]
    a, b = params(), params()
    grads = [[torch.randn(s, device=dev, generator=gen) for s in shapes] for _ in range(8)]
    oa, ob = Adafactor(a, wd=0.1, triton=True), Adafactor(b, wd=0.1, triton=True)
    for p, q, g in zip(a, b, grads[0]): p.grad, q.grad = g.clone(), g.clone()
    oa.step(); ob.step()
    graph = capture(ob.step)
    for i, gs in enumerate(grads[1:]):
        if i == 3:  # a new lr, uploaded for the replays
            for o in (oa, ob): o.set_hyper('lr', 3e-3)
            ob.upload_hypers()
        for p, q, g in zip(a, b, gs): p.grad.copy_(g); q.grad.copy_(g)
        oa.step(); graph.replay()
    torch.cuda.synchronize()
    d = max(rel_diff(b, a), rel_diff([ob.state[q]['sqr_avg_col'] for q in b[:2]], [oa.state[p]['sqr_avg_col'] for p in a[:2]]))
    return [dict(check='graph replay vs eager (weights, column factors; lr changed between replays)', backend='triton', value=d, ok=d == 0.)]


def work_bytes(opt):
    "(bytes of one pass: read p and g, write p, the Kahan compensation read and written; bytes of the work the step does)"
    one, work = 0, 0
    for p in opt.flat_params:
        s = opt.state[p]
        size = lambda t: t.numel() * t.element_size()
        kahan = 2 * size(s['kahan_comp']) if 'kahan_comp' in s else 0
        one += 2 * size(p) + size(p.grad) + kahan
        if p.dim() >= 2:  # the factor update reads g twice (a norm over each of its last two dimensions); a pass reads p and g,
            work += 2 * size(p.grad) + (size(p) + size(p.grad)) + (2 * size(p) + size(p.grad) + kahan)  # then p, g, writes p
        else:  # the whole second moment: read and written by the first pass, read by the second
            v = size(s['sqr_avg'])
            work += (size(p) + size(p.grad) + 2 * v) + (2 * size(p) + size(p.grad) + v + kahan)
    return one, work


def state_bytes(make, shapes, dtype):
    "(optimizer state in bytes per parameter after one step, the step's peak memory beyond the state in bytes per parameter)"
    ps = make_params(shapes, dtype)
    n = sum(p.numel() for p in ps)
    gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()  # what the last case left, freed before the count starts
    before = torch.cuda.memory_allocated()
    opt = make(ps)
    opt.step(); torch.cuda.synchronize()
    state = torch.cuda.memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    opt.step(); torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del opt, ps
    torch.cuda.empty_cache()
    return state / n, peak / n


def timing(bandwidth, reps):
    rows = []
    for set_name, shapes, dtype in (('ResNet-50-like', resnet50_shapes(), torch.float32), ('LLM-like', llm_shapes(), torch.bfloat16)):
        cases = {'fastoptim Adafactor, triton': lambda ps: Adafactor(ps, triton=True),
                 'fastoptim Adafactor, foreach': lambda ps: Adafactor(ps, foreach=True),
                 'torch.optim.Adafactor, foreach': lambda ps: torch.optim.Adafactor(ps, foreach=True),
                 'torch.optim.Adafactor, for-loop': lambda ps: torch.optim.Adafactor(ps, foreach=False),
                 'fastoptim AdamW, triton': lambda ps: Adam(ps, wd=0.1, triton=True)}
        for case, make in cases.items():
            row = dict(set=set_name, dtype=str(dtype)[6:], implementation=case)
            try:
                row['state_bytes_per_param'], row['step_peak_bytes_per_param'] = state_bytes(make, shapes, dtype)
                ps = make_params(shapes, dtype)
                opt = make(ps)
                opt.step(); opt.step()
                row['eager_ms'] = median_ms(opt.step, reps if 'triton' in case else max(5, reps // 3), dev, warmup=3)
                if 'triton' in case:
                    graph = capture(opt.step)
                    row['graph_ms'] = median_ms(graph.replay, reps, dev, warmup=3)
                    del graph
                    if 'Adafactor' in case:
                        one, work = work_bytes(opt)
                        row.update(one_pass_ms=one / bandwidth / 1e6, work_ms=work / bandwidth / 1e6)
                del opt, ps
            except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
            torch.cuda.empty_cache()
            rows.append(row)
    return rows


def kernel_times(reps=3):
    "Where the Triton step's time goes on the LLM-like set: CUDA time per kernel name over `reps` eager steps (torch.profiler), per step"
    from torch.profiler import profile, ProfilerActivity
    ps = make_params(llm_shapes(), torch.bfloat16)
    opt = Adafactor(ps, triton=True)
    opt.step(); opt.step(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps): opt.step()
        torch.cuda.synchronize()
    rows = [dict(kernel=e.key[:90], ms_per_step=e.device_time_total / 1e3 / reps, calls_per_step=e.count / reps)
            for e in prof.key_averages() if e.device_time_total > 0]
    del opt, ps
    torch.cuda.empty_cache()
    return sorted(rows, key=lambda r: -r['ms_per_step'])[:12]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.environ.get('OUT', 'adafactor_gpu'))
    ap.add_argument('--reps', type=int, default=30)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    head = (f"# Adafactor on the GPU\n\n{datetime.date.today()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"triton {triton.__version__}; command: `python3 bench/adafactor_gpu.py --out $OUT`\n")
    results = {}
    run_checks((('correctness', correctness), ('capture', capture_replay)), results, os.path.join(args.out, 'results.json'))
    bandwidth = copy_bandwidth(dev)
    try: results['timing'] = timing(bandwidth, args.reps)
    except Exception: results['timing'] = [dict(error=traceback.format_exc()[-2000:])]
    results['bandwidth_GBps'] = bandwidth
    try: results['kernels'] = kernel_times()
    except Exception: results['kernels'] = [dict(error=traceback.format_exc()[-2000:])]
    json.dump(results, open(os.path.join(args.out, 'results.json'), 'w'), indent=1, default=str)
    lines = [head, f"Copy bandwidth measured in this run: {bandwidth:.0f} GB/s.\n", '## Checks\n',
             *check_lines(results, ('correctness', 'capture'))]
    lines += ['', '## Step time (median of CUDA events) and memory; fraction = byte bound / time\n',
              '| set | dtype | implementation | eager ms | graph ms | one-pass bound ms (frac of graph) | its work\'s bound ms (frac of eager; of graph) | state B/param | step peak beyond state, B/param |',
              '|---|---|---|---|---|---|---|---|---|']
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else ''
    for r in results['timing']:
        if 'implementation' not in r: lines.append(f"\n```\n{r.get('error')}\n```\n"); continue
        if 'error' in r: lines.append(f"| {r['set']} | {r['dtype']} | {r['implementation']} | {r['error']} | | | | | |"); continue
        one = f"{r['one_pass_ms']:.3f} ({r['one_pass_ms'] / r['graph_ms']:.2f})" if 'one_pass_ms' in r else ''
        work = f"{r['work_ms']:.3f} ({r['work_ms'] / r['eager_ms']:.2f}; {r['work_ms'] / r['graph_ms']:.2f})" if 'work_ms' in r else ''
        lines.append(f"| {r['set']} | {r['dtype']} | {r['implementation']} | {fmt(r, 'eager_ms')} | {fmt(r, 'graph_ms')} | {one} | {work} | "
                     f"{r['state_bytes_per_param']:.3f} | {r['step_peak_bytes_per_param']:.3f} |")
    lines += ['', '## Where the eager Triton step\'s time goes, LLM-like set (torch.profiler, CUDA time per step)\n',
              '| kernel | ms per step | calls per step |', '|---|---|---|']
    for r in results['kernels']:
        lines.append(f"| {r['kernel']} | {r['ms_per_step']:.3f} | {r['calls_per_step']:.0f} |" if 'kernel' in r else f"\n```\n{r['error']}\n```\n")
    bad = [r for part in ('correctness', 'capture') for r in results[part] if not r.get('ok')]
    lines.append(f"\n{len(bad)} failed checks.")
    write_report('\n'.join(lines), os.path.join(args.out, 'adafactor_gpu.md'))


if __name__ == '__main__':
    main()
