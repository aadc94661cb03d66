"""Where the time goes in optimizer accumulation with gradient release ((d) of `release_memory.py`) against gradient
accumulation ((c)) and release alone ((b)), on its 0.94B LM (pure bf16, Kahan AdamW, Triton, 4 micro-batches a step):
per optimizer step, the host's time to issue the step's work (before the closing synchronisation) and the synchronised
step time; per `step_params` call (a gradient-release group), its host time, apart for calls whose gradients moved
(the Triton backend pointing its kept tables at new addresses, `move_grads`, timed too); (b)'s calls of one step made
again outside backward, on a plain backward's gradients with the GPU idle before each, each twice (the second call
finds the gradients the first did); then a cProfile of two steps of
each configuration in `--profile` ((d) by default), by own time and fastoptim's functions by cumulative time; and small
calls (Python, numpy, torch, a Triton launch) timed before the model exists and again with (b)'s model alive.

    python3 bench/accumulation_host_gpu.py [--steps 6] [--out accumulation_host.md]
"""
import argparse, cProfile, io, os, pstats, statistics, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=6, help='timed optimizer steps per configuration, after two of warm-up')
ap.add_argument('--out', default='accumulation_host.md')
ap.add_argument('--profile', default='d', help='the configurations (of b, c, d) to profile two steps of')
ap.add_argument('--tiny', action='store_true', help="release_memory's tiny model on the CPU (foreach backend): a dry run")
mine = ap.parse_args()
sys.argv = sys.argv[:1] + (['--tiny', '--device', 'cpu'] if mine.tiny else [])
import release_memory as rm  # its model, data and configurations; its own arguments at their defaults
import torch
from fastoptim.core import backends
from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release

args = rm.parse_args()
device = torch.device(args.device)
g = torch.Generator().manual_seed(0)
toks = torch.randint(0, args.vocab, (args.n_acc, args.batch, args.ctx + 1), generator=g).to(device)
data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in toks]

def one_step(name, model, opt):
    "One optimizer step of configuration `name` (as `release_memory.run`): seconds until all is issued, and until done"
    n = args.n_acc if name in 'cd' else 1
    rm.sync(device); t0 = time.perf_counter()
    for i in range(n):
        if name == 'd': opt.accumulate(1 / n, i == n - 1)
        rm.micro_batch(model, *data[i], args.loss_chunks)
    opt.step()
    model.zero_grad(set_to_none=True)
    issued = time.perf_counter() - t0
    rm.sync(device)
    return issued, time.perf_counter() - t0

moving = getattr(type(backends['triton']), 'move_grads', None) if 'triton' in backends else None

def probes():
    "Mean host µs of small calls, 1000 each after the GPU is idle: whether this process's host is slow at everything or at some things"
    x, a = torch.zeros(8, device=device), np.arange(8)
    items = {'Python: sum(range(100))': lambda: sum(range(100)), 'numpy: an 8-element add': lambda: a + 1,
             'torch: an 8-element add_ on the device': lambda: x.add_(1)}
    if device.type == 'cuda':
        items['torch.cuda.is_current_stream_capturing()'] = torch.cuda.is_current_stream_capturing
        touch = KernelLauncher(touch_kernel, dict(BLOCK=8))
        items["Triton: a one-program kernel, `KernelLauncher`"] = lambda: touch(1, x)
    out = {}
    for name, fn in items.items():
        fn(); rm.sync(device)
        t = time.perf_counter()
        for _ in range(1000): fn()
        out[name] = (time.perf_counter() - t) * 1e3
        rm.sync(device)
    return out

if device.type == 'cuda':
    import triton, triton.language as tl
    from fastoptim.triton_engine import KernelLauncher
    @triton.jit
    def touch_kernel(x, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        tl.store(x + offsets, tl.load(x + offsets) + 1)
probed = {'before the model': probes()}

def measure(name, profile=False):
    rm.free(device)
    model, opt = rm.build(args, device)
    if name in 'bd': prepare_for_gradient_release(model, opt, args.group_bytes)
    calls, moves, groups, stepping = [], [], [], opt.step_params
    def timed(*a, **k):
        t, n = time.perf_counter(), len(moves)
        try: return stepping(*a, **k)
        finally: calls.append((time.perf_counter() - t, len(moves) > n)); groups.append(a[0])
    opt.step_params = timed  # the release hooks call it through the optimizer
    if moving is not None:  # the Triton backend's: the tables pointed at gradients that moved since the last call
        def timed_move(self, *a, **k):
            t = time.perf_counter()
            try: return moving(self, *a, **k)
            finally: moves.append(time.perf_counter() - t)
        type(backends['triton']).move_grads = timed_move
    for _ in range(2): one_step(name, model, opt)
    calls.clear(); moves.clear()
    rows = [one_step(name, model, opt) for _ in range(mine.steps)]
    per_step, moved = len(calls) / mine.steps, [c for c, m in calls if m]
    kept = [c for c, m in calls if not m]
    report = None
    if profile:
        pr = cProfile.Profile(); pr.enable()
        for _ in range(2): one_step(name, model, opt)
        pr.disable()
        s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(30)
        pstats.Stats(pr, stream=s).sort_stats('cumtime').print_stats('fastoptim', 30); report = s.getvalue()
    opt.stop_accumulation()
    if moving is not None: type(backends['triton']).move_grads = moving
    if name in 'bd': remove_gradient_release(model)
    outside = None
    if name == 'b':  # the last step's calls again, outside backward, on gradients a plain backward left, the GPU idle before each
        last = groups[-int(per_step):]
        rm.micro_batch(model, *data[0], args.loss_chunks)
        times = []  # each group twice: the first call finds new gradients, the second the same ones
        for params in last:
            for _ in range(2): rm.sync(device); t = time.perf_counter(); stepping(params); times.append(time.perf_counter() - t)
        outside = statistics.median(times[::2]) * 1e6, statistics.median(times[1::2]) * 1e6
        probed["with (b)'s model and optimizer alive"] = probes()
        model.zero_grad(set_to_none=True)
    del model, opt
    return dict(issued=statistics.median(r[0] for r in rows), step=statistics.median(r[1] for r in rows),
                calls=per_step, call_us=statistics.median(c for c, _ in calls) * 1e6 if calls else 0., profile=report,
                moved=len(moved) / mine.steps, moved_us=statistics.median(moved) * 1e6 if moved else 0.,
                kept_us=statistics.median(kept) * 1e6 if kept else 0., move_us=statistics.median(moves) * 1e6 if moves else 0., outside=outside)

results = {name: measure(name, profile=name in mine.profile) for name in 'bcd'}
lines = [f'# Optimizer accumulation with release: host time ({torch.cuda.get_device_name() if device.type == "cuda" else "CPU"})', '',
         f'torch {torch.__version__}; `{" ".join(["python3", *sys.argv[:1], *[f"--{k} {v}" for k, v in vars(mine).items()]])}`; '
         f'{args.n_acc} micro-batches a step in (c) and (d); medians of {mine.steps} steps after 2 of warm-up', '',
         '| config | s/step | host s/step (all issued) | step_params calls/step | host µs/call (median) | calls/step that moved gradients | µs/call, moved / kept | µs per `move_grads` |',
         '|---|---|---|---|---|---|---|---|']
for name, r in results.items():
    lines.append(f"| ({name}) {rm.CONFIGS[name][0]} | {r['step']:.3f} | {r['issued']:.3f} | {r['calls']:.0f} | {r['call_us']:.0f} | "
                 f"{r['moved']:.0f} | {r['moved_us']:.0f} / {r['kept_us']:.0f} | {r['move_us']:.0f} |")
first, again = results['b']['outside']
lines += [f"| (b), the same calls outside backward (GPU idle before each), then each again on the same gradients | | | {results['b']['calls']:.0f} | {first:.0f}, again {again:.0f} | | | |"]
lines += ['', '| small call, mean host µs of 1000 | ' + ' | '.join(probed) + ' |', '|---|' + '---|' * len(probed)]
lines += [f'| {k} | ' + ' | '.join(f'{v[k]:.2f}' for v in probed.values()) + ' |' for k in probed['before the model']]
lines += ['', "A call moved gradients where the Triton backend pointed a kept table at new gradient addresses (`move_grads`, "
          "which also runs for a fold's tables)."]
for name, r in results.items():
    if r['profile']: lines += ['', f'## cProfile of two steps of ({name}), by own time, then fastoptim by cumulative time', '', '```', r['profile'].strip(), '```']
open(mine.out, 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines[:18 + len(results)]))
