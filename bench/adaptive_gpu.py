"""GPU check and timing of the algorithms with numbers kept on the device (58_prodigy, Kourkoutas-β in 00_algorithm):
Prodigy, DAdaptAdam, DAdaptLion and AdamW with kourkoutas=True, in every backend against the for-loop reference on CUDA (fp32,
bf16 with Kahan summation, bf16 with stochastic rounding); CUDA-graph replays against eager steps; then each
Triton step timed, eager and replayed, on the ResNet-50-like (fp32) and LLM-like (bf16 + Kahan) sets, against two byte bounds: one
pass (what a step must move), and the passes its plan takes (each pass's reads and writes), beside AdamW and StableAdamW
(a per-tensor sum, no number state) and the peers' implementations that are installed (prodigyopt, pytorch_optimizer,
adv_optm).

Run on the GPU machine from the repository root (wheels: ../shared/gpu/wheels.sh pytorch-optimizer==4.1.0
prodigyopt==1.1.2 adv_optm==2.5.16):
    python3 bench/adaptive_gpu.py --out $OUT
"""
import argparse, contextlib, datetime, io, json, os, sys, traceback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import torch
import triton
import fastoptim.all  # noqa: F401  (registers every backend and algorithm)
from fastoptim.core import algorithms
from fastoptim.testing import drive, rel_diff
from shapes import llm_shapes, resnet50_shapes
from timing import capture, check_lines, copy_bandwidth, median_ms, run_checks, write_report
from catalogue_gpu import make_params

dev = torch.device('cuda')
BACKENDS = ('foreach', 'jit', 'triton')
# label: (constructor name, lr, options)
CASES = {'Prodigy': ('Prodigy', 1., {}), 'DAdaptAdam': ('DAdaptAdam', 1., {}), 'DAdaptLion': ('DAdaptLion', 1., {}),
         'AdamW, kourkoutas': ('Adam', 1e-3, dict(kourkoutas=True, kourkoutas_warmup=2))}
REFERENCES = {'AdamW': ('Adam', 1e-3, {}), 'StableAdamW': ('StableAdamW', 1e-3, {})}


def make(case, backend, **kw):
    name, lr, options = {**CASES, **REFERENCES}[case]
    return lambda groups: algorithms[name](groups, lr=lr, wd=0.1, **{backend: True}, **options, **kw)


def correctness():
    rows = []
    roundings = (('fp32', torch.float32, {}, 1e-5), ('bf16 Kahan', torch.bfloat16, {}, 3e-2),
                 ('bf16 stochastic', torch.bfloat16, dict(stochastic_rounding=True, seed=3), 3e-2))
    for case in CASES:
        for label, dtype, rounding, tol in roundings:
            schedule = 'mom' in algorithms[CASES[case][0]].hypers  # `drive` schedules `mom` where there is one
            _, expected = drive(make(case, 'forloop', **rounding), device=dev, dtype=dtype, steps=24, frozen=(8, 16), lr=1.,
                                mom_schedule=schedule)
            for b in BACKENDS:
                _, actual = drive(make(case, b, **rounding), device=dev, dtype=dtype, steps=24, frozen=(8, 16), lr=1.,
                                  mom_schedule=schedule)
                d = rel_diff(actual, expected)
                rows.append(dict(check=f'{case} {label}', backend=b, value=d, ok=d < tol))
    return rows


def capture_replay():
    "Eager Triton steps, and the same steps replayed from a CUDA graph on a copy: the weights and number states must agree exactly"
    rows = []
    shapes = [(256, 64), (64,), (1000,)]
    for case in CASES:
        gen = torch.Generator(device=dev).manual_seed(0)
        def params(): return [torch.randn(s, device=dev, generator=torch.Generator(device=dev).manual_seed(i)).requires_grad_()
                              for i, s in enumerate(shapes)]
        a, b = params(), params()
        grads = [[torch.randn(s, device=dev, generator=gen) for s in shapes] for _ in range(8)]
        oa, ob = make(case, 'triton')(a), make(case, 'triton')(b)
        for p, q, g in zip(a, b, grads[0]): p.grad, q.grad = g.clone(), g.clone()
        oa.step(); ob.step()  # outside the graph: builds the tables
        graph = capture(ob.step)
        for gs in grads[1:]:
            for p, q, g in zip(a, b, gs): p.grad.copy_(g); q.grad.copy_(g)
            oa.step(); graph.replay()
        torch.cuda.synchronize()
        numbers = [k for k, v in oa.state[a[0]].items() if isinstance(v, torch.Tensor) and v.dim() == 0]
        d = max(rel_diff(b, a), *[rel_diff([ob.state[q][k] for q in b], [oa.state[p][k] for p in a]) for k in numbers])
        rows.append(dict(check=f'{case}: graph replay vs eager (weights, {", ".join(numbers)})', backend='triton', value=d, ok=d == 0.))
    return rows


def pass_bytes(opt):
    "(bytes of one pass: what the step must move; bytes of the passes its plan takes: each pass's reads and writes)"
    one, passes = 0, 0
    for p in opt.flat_params:
        s, plan = opt.state[p], opt.algorithm_of(p).plan()
        def size(name):
            t = p if name == 'p' else p.grad if name == 'g' else s[name]
            return t.numel() * t.element_size()
        kahan = size('kahan_comp') if 'kahan_comp' in s else 0
        one += sum(size(t) for t in plan.tensors) + sum(size(k) for k in plan.whole.stores) + size('p') + 2 * kahan
        for phase in plan.phases:
            writes = [*phase.stores, *(('p',) if phase.final is not None else ())]
            passes += sum(size(t) for t in phase.reads() if t in plan.tensors or t == 'p') + sum(map(size, writes))
            passes += 2 * kahan if phase.final is not None else 0
    return one, passes


def peers():
    "Other people's implementations, fp32, to time beside ours (those installed; why another could not be imported, under its name)"
    out = {}
    try: import pytorch_optimizer  # noqa: F401
    except Exception as e: out['DAdaptAdam'] = out['DAdaptLion'] = (f'pytorch_optimizer not imported: {type(e).__name__}: {str(e)[:120]}', None)
    with contextlib.suppress(ImportError):
        import prodigyopt
        out['Prodigy'] = ('prodigyopt 1.1.2 (per tensor, .item() per tensor)', lambda ps: prodigyopt.Prodigy(ps, lr=1., weight_decay=0.1))
    with contextlib.suppress(ImportError):
        import pytorch_optimizer as po
        out['DAdaptAdam'] = ('pytorch_optimizer foreach', lambda ps: po.DAdaptAdam(ps, lr=1., weight_decay=0.1, weight_decouple=True,
                                                                                   foreach=True))
        out['DAdaptLion'] = ('pytorch_optimizer foreach', lambda ps: po.DAdaptLion(ps, lr=1., weight_decay=0.1, weight_decouple=True,
                                                                                   foreach=True))
    with contextlib.suppress(ImportError):
        from adv_optm import AdamW_adv
        out['AdamW, kourkoutas'] = ('adv_optm AdamW_adv(kourkoutas_beta=True)', lambda ps: AdamW_adv(ps, lr=1e-3, weight_decay=0.1,
                                                                                                    kourkoutas_beta=True))
    return out


def timing(bandwidth, reps):
    rows = []
    others = peers()
    for set_name, shapes, dtype in (('ResNet-50-like', resnet50_shapes(), torch.float32), ('LLM-like', llm_shapes(), torch.bfloat16)):
        for case in (*REFERENCES, *CASES):
            ps = make_params(shapes, dtype)
            opt = make(case, 'triton')(ps)
            opt.step(); opt.step()
            eager = median_ms(opt.step, reps, dev, warmup=3)
            graph = capture(opt.step)
            replay = median_ms(graph.replay, reps, dev, warmup=3)
            del graph
            one, passes = pass_bytes(opt)
            row = dict(set=set_name, dtype=str(dtype)[6:], algorithm=case, passes=len(opt.algorithm_of(ps[0]).plan().phases),
                       eager_ms=eager, graph_ms=replay, one_pass_ms=one / bandwidth / 1e6, passes_ms=passes / bandwidth / 1e6)
            del opt
            if case in others and dtype == torch.float32:
                label, ctor = others[case]
                try:
                    if ctor is None: raise ImportError(label)
                    qs = make_params(shapes, dtype)
                    with contextlib.redirect_stdout(io.StringIO()): peer = ctor(qs)
                    peer.step()
                    row.update(peer=label, peer_ms=median_ms(peer.step, max(5, reps // 3), dev, warmup=2))
                    del peer, qs
                except Exception as e: row.update(peer=f'{label}: {type(e).__name__}: {str(e)[:100]}' if ctor else label)
            rows.append(row)
            del ps
            torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.environ.get('OUT', 'adaptive_gpu'))
    ap.add_argument('--reps', type=int, default=30)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    head = (f"# Number states on the GPU: Prodigy, DAdaptAdam, Kourkoutas-β\n\n{datetime.date.today()}, {torch.cuda.get_device_name()}, "
            f"torch {torch.__version__}, triton {triton.__version__}; command: `python3 bench/adaptive_gpu.py --out $OUT`\n")
    results = {}
    run_checks((('correctness', correctness), ('capture', capture_replay)), results, os.path.join(args.out, 'results.json'))
    bandwidth = copy_bandwidth(dev)
    try: results['timing'] = timing(bandwidth, args.reps)
    except Exception: results['timing'] = [dict(error=traceback.format_exc()[-2000:])]
    json.dump(results, open(os.path.join(args.out, 'results.json'), 'w'), indent=1, default=str)
    lines = [head, f"Copy bandwidth measured in this run: {bandwidth:.0f} GB/s.\n", '## Checks (every backend against the for-loop one, 24 steps)\n',
             *check_lines(results, ('correctness', 'capture'))]
    lines += ['', '## Triton step, eager and replayed from a CUDA graph (median of CUDA events); fraction = byte bound / time\n',
              '| set | dtype | algorithm | passes | eager ms | graph ms | one-pass bound ms (frac of eager) | its passes\' bound ms (frac of eager; of graph) | peer | peer ms |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in results['timing']:
        if 'error' in r: lines.append(f"\n```\n{r['error']}\n```\n"); continue
        head_cells = (f"| {r['set']} | {r['dtype']} | {r['algorithm']} | {r['passes']} | {r['eager_ms']:.3f} | {r['graph_ms']:.3f} | "
                      f"{r['one_pass_ms']:.3f} ({r['one_pass_ms'] / r['eager_ms']:.2f}) | {r['passes_ms']:.3f} "
                      f"({r['passes_ms'] / r['eager_ms']:.2f}; {r['passes_ms'] / r['graph_ms']:.2f}) | {r.get('peer', '')} | ")
        lines.append(head_cells + (f"{r['peer_ms']:.2f} |" if 'peer_ms' in r else '|'))
    bad = [r for part in ('correctness', 'capture') for r in results[part] if not r.get('ok')]
    lines.append(f"\n{len(bad)} failed checks.")
    write_report('\n'.join(lines), os.path.join(args.out, 'adaptive_gpu.md'))


if __name__ == '__main__':
    main()
