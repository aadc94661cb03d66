"""Triton's own launch (`kernel[grid](...)`) against `KernelLauncher`'s direct launch of the compiled kernel
(nbs/03_triton), on one GPU, ResNet-50-like set (161 tensors), Triton backend, the two launched alike in one process:

- the same steps both ways, bit for bit: weights and every state after eager steps, gradient-release calls and
  optimizer accumulation, in fp32 and in bf16 with Kahan summation and with stochastic rounding;
- host time per launch, the same kernel on the same tensors (a release group's update kernel, 8 tensors);
- host time per call as users make them, GPU idle before each: `step_params` over groups of 8 tensors (gradient
  release), the same with optimizer accumulation (four micro-batches a step), and `opt.step()` without the
  optimizer's CUDA graph (`step_graph=False`); rounds in rotated order, the median of each round, the fastest round.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/launch_host_gpu.py --out $OUT/launch_host.md
"""
import argparse, os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import fastoptim.triton_engine as te
from fastoptim.all import Adam
from shapes import resnet50_shapes

ap = argparse.ArgumentParser()
ap.add_argument('--out', default='launch_host.md')
ap.add_argument('--rounds', type=int, default=5)
ap.add_argument('--passes', type=int, default=10, help='passes over the parameters per round')
args = ap.parse_args()

through_triton = False  # launchers made while this is set launch every time through Triton, as before KernelLauncher
made_direct = te.KernelLauncher.__init__
def make(self, kernel, meta, direct=None, current_device=None):
    made_direct(self, kernel, meta, False if through_triton else direct, current_device)
te.KernelLauncher.__init__ = make

direct_launches = 0  # counted by the compiled kernels' launcher (`CompiledKernel.__getitem__`) while counting
launching = te.CompiledKernel.__getitem__
def counted(self, grid):
    global direct_launches
    direct_launches += 1
    return launching(self, grid)
te.CompiledKernel.__getitem__ = counted

shapes = resnet50_shapes()
groups = [list(range(i, min(i + 8, len(shapes)))) for i in range(0, len(shapes), 8)]
precisions = {'fp32': (torch.float32, {}), 'bf16 Kahan': (torch.bfloat16, dict(kahan_sum=True)),
              'bf16 stochastic': (torch.bfloat16, dict(kahan_sum=False, stochastic_rounding=True))}

def model(dtype, seed=0):
    g = torch.Generator(device='cuda').manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, device='cuda').mul_(0.02).to(dtype)) for s in shapes]
    grads = [[torch.randn(s, generator=g, device='cuda').to(dtype) for s in shapes] for _ in range(2)]
    return ps, grads

def optimizer(ps, options, direct, **kw):
    global through_triton
    through_triton = not direct
    return Adam(ps, 1e-3, wd=1e-2, triton=True, step_graph=False, **options, **kw)

def set_grads(ps, grads):
    for p, g in zip(ps, grads): p.grad = g

def release_pass(opt, ps, grads):
    set_grads(ps, grads)
    for ix in groups: opt.step_params([ps[i] for i in ix])

def accumulation_pass(opt, ps, grads, micro):
    set_grads(ps, grads)
    for ix in groups:
        opt.accumulate(0.25, micro == 3)
        opt.step_params([ps[i] for i in ix], whole=True)
    opt.stop_accumulation()

def trajectory(dtype, options, direct):
    "Weights and states after 3 eager steps, 3 release passes and 2 accumulated steps (4 micro-batches each)"
    ps, grads = model(dtype)
    opt = optimizer(ps, options, direct)
    for k in range(3): set_grads(ps, grads[k % 2]); opt.step()
    for k in range(3): release_pass(opt, ps, grads[k % 2])
    for k in range(8): accumulation_pass(opt, ps, grads[k % 2], k % 4)
    torch.cuda.synchronize()
    return [p.detach().clone() for p in ps], [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in ps]

lines = [f'# Direct launches of compiled Triton kernels: {torch.cuda.get_device_name()}', '',
         f'torch {torch.__version__}, triton {te.triton.__version__}; `python3 bench/launch_host_gpu.py {" ".join(sys.argv[1:])}`; '
         f'ResNet-50-like set ({len(shapes)} tensors, {len(groups)} release groups of up to 8), AdamW, Triton backend.', '',
         '## The same steps both ways', '',
         '| precision | weights equal | states equal | direct launches |', '|---|---|---|---|']
failed = 0
for name, (dtype, options) in precisions.items():
    direct_launches = 0
    w_direct, s_direct = trajectory(dtype, options, True)
    launched = direct_launches
    w_triton, s_triton = trajectory(dtype, options, False)
    weights = all(map(torch.equal, w_direct, w_triton))
    states = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(s_direct, s_triton))
    failed += (not weights) + (not states) + (launched == 0)
    lines.append(f'| {name} | {weights} | {states} | {launched} |')
    print(lines[-1], flush=True)

def per_call_us(fn, calls):
    "Median host µs of `fn(i)` for i in range(calls), the GPU idle before each"
    ts = []
    for i in range(calls):
        torch.cuda.synchronize()
        t = time.perf_counter(); fn(i); ts.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)

# one launch: a release group's update kernel on its own tensors, launched 200 times each way per round
ps, grads = model(torch.float32)
opt = optimizer(ps, {}, True)
release_pass(opt, ps, grads[0])
cache = next(iter(next(iter(opt.layout.one_off.values()))[3].values()))  # (kinds, addresses, buckets, caches) of the first group
phase = next(k for k in cache['launchers'] if isinstance(k, str))
launcher, kernel = cache['launchers'][phase], cache['launchers'][phase].kernel
launch_args = (cache['table'], cache['block_tensors'], cache['scalars'], cache['sums'], cache['sums'])
for _ in range(3): launcher(cache['n_blocks'], *launch_args)  # the second call onwards: direct
ways = {'Triton `kernel[grid](...)`': lambda i: kernel[(cache['n_blocks'],)](*launch_args, **launcher.meta),
        '`KernelLauncher` (direct)': lambda i: launcher(cache['n_blocks'], *launch_args)}
best = {w: float('inf') for w in ways}
for r in range(args.rounds):
    for w in list(ways)[r % 2:] + list(ways)[:r % 2]: best[w] = min(best[w], per_call_us(ways[w], 200))
# where a direct launch's time goes: the launcher's key, the compiled kernel's runner, and Triton's launcher called as
# its own `run` is called (3.6's signature, as `JITFunction.run` calls it), with the function and stream looked up once
compiled = next(iter(launcher.compiled.values()))
grid, stream = (cache['n_blocks'], 1, 1), torch.cuda.current_stream().cuda_stream
values = (*launch_args, *launcher.constants)
pieces = {'the key (device and argument specialisations)': lambda i: (launcher.current_device(), *map(te.specialisation, launch_args)),
          "the compiled kernel's runner (`compiled[grid](...)`)": lambda i: launching(compiled, grid)(*values),
          "Triton's launcher alone (`compiled.run(...)`)": lambda i: compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *values)}
for w in pieces: ways[w], best[w] = pieces[w], float('inf')
for r in range(args.rounds):
    for w in pieces: best[w] = min(best[w], per_call_us(ways[w], 200))
lines += ['', f'## One launch ({len(cache["params"])} tensors, {cache["n_blocks"]} programs): host µs, fastest of {args.rounds} rounds of medians', '',
          '| launch | µs |', '|---|---|'] + [f'| {w} | {v:.1f} |' for w, v in best.items()]
print('\n'.join(lines[-6:]), flush=True)

# calls as users make them
cases = {}
for dtype_name, (dtype, options) in list(precisions.items())[:2]:
    for direct in (False, True):
        ps, grads = model(dtype)
        for case in ('release', 'accumulation', 'eager step'):
            opt = optimizer(ps, options, direct)
            if case == 'release': fn = lambda i, opt=opt, ps=ps: opt.step_params([ps[j] for j in groups[i % len(groups)]])
            elif case == 'accumulation':
                def fn(i, opt=opt, ps=ps):
                    micro = i // len(groups) % 4
                    opt.accumulate(0.25, micro == 3)
                    opt.step_params([ps[j] for j in groups[i % len(groups)]], whole=True)
            else: fn = lambda i, opt=opt: opt.step()
            set_grads(ps, grads[0])
            calls = len(groups) * 4 if case != 'eager step' else 4
            for i in range(calls): fn(i)  # compiled, tables built
            cases[(dtype_name, case, direct)] = (fn, args.passes * (len(groups) * 4 if case != 'eager step' else 4))
best = {k: float('inf') for k in cases}
keys = list(cases)
for r in range(args.rounds):
    for k in keys[r % len(keys):] + keys[:r % len(keys)]: best[k] = min(best[k], per_call_us(*cases[k]))
lines += ['', f'## Host µs per call, GPU idle before each (fastest of {args.rounds} rounds of medians)', '',
          '| precision | call | through Triton | direct | saved |', '|---|---|---|---|---|']
for dtype_name in list(precisions)[:2]:
    for case in ('release', 'accumulation', 'eager step'):
        a, b = best[(dtype_name, case, False)], best[(dtype_name, case, True)]
        lines.append(f'| {dtype_name} | {case} | {a:.1f} | {b:.1f} | {a - b:.1f} ({(a - b) / a:.0%}) |')
lines += ['', '"release": `step_params` of a group of up to 8 tensors (two launches: the derive kernel and the update); '
          '"accumulation": the same with `opt.accumulate` (a fold launch per call, and the step\'s two on the fourth '
          'micro-batch); "eager step": `opt.step()` over all 161 tensors with `step_graph=False`.', '',
          f'failed checks: {failed}']
open(args.out, 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines[-12:]))
sys.exit(1 if failed else 0)
