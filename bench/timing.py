"""Timing helpers the benchmark scripts share: the copy bandwidth that every fraction is measured against, the median of
a call by CUDA events, the bytes a step moves, and writing a report."""
import gc, json, math, os, time, traceback
import numpy as np
import torch
from fastoptim.core import rounding_states


def median_ms(fn, reps, device, warmup=0):
    """Median time of `fn` in ms after `warmup` calls: CUDA events around each call, synchronised after it (host launch
    time counts where the GPU waits for it); perf_counter on the CPU"""
    for _ in range(warmup): fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        if device.type == 'cuda':
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def idle_ms(fn, reps=10):
    "Median host ms of `fn()` started with the GPU idle: the call alone, where `median_ms` counts the GPU's time too"
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return float(np.median(ts))


def bytes_per_step(opt):
    "Bytes a one-pass step of fastoptim optimizer `opt` moves at least, on average, and its passes: every tensor its plan reads, every state it writes, and the weights; a state gated by lookahead's sync number once every `lookahead_k` steps; what the rounding keeps (a Kahan compensation, a master residual) and an 8-bit state's scales, read and written"
    n, phases = 0., 1
    for p in opt.flat_params:
        s, plan = opt.state[p], opt.algorithm_of(p).plan()
        phases = max(phases, len(plan.phases))
        share = lambda k: 1 / opt.param_groups[0]['lookahead_k'] if k in plan.gates else 1.
        read = [(x, share(k)) for k in plan.tensors if k not in ('p', 'g')  # a factored state: its row and column factors, read and written
                for x in ((s[f'{k}_row'], s[f'{k}_col']) * 2 if k in plan.factored else (s[k],))]
        tensors = [(p, 1.), (p.grad, 1.), *read, *[(s[k], share(k)) for k in plan.whole.stores], (p, 1.)]
        tensors += [(s[k], 1.) for k in (*set(rounding_states.values()), *[f'{q}_scales' for q in plan.quantized]) if k in s] * 2
        n += sum(t.numel() * t.element_size() * f for t, f in tensors)
    return n, phases


def capture(fn):
    "`fn` captured in a CUDA graph, on a side stream as torch asks (its first call, which builds its tables, taken before)"
    side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph): fn()
    torch.cuda.current_stream().wait_stream(side)
    return graph


def copy_bandwidth(device, reps=20):
    "Copy bandwidth in GB/s counting bytes read and written: a 1 GiB buffer of random bytes on CUDA (256 MiB on the CPU)"
    n = 2 ** 30 if device.type == 'cuda' else 2 ** 28
    def time_copy():
        src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return median_ms(lambda: dst.copy_(src), reps, device, warmup=3)
    ms = time_copy()  # the buffers are freed on its return
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache()
    return 2 * n / (ms * 1e-3) / 1e9


def timed(owner, name, label, stages):
    "Wrap method `name` of `owner` (on the instance) so that each call adds its host µs to `stages[label]`"
    fn = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try: return fn(*a, **k)
        finally: stages.setdefault(label, []).append((time.perf_counter() - t) * 1e6)
    setattr(owner, name, wrapper)


def write_report(text, path):
    "Print `text`, and write it to `path` (its folder created) when one is given"
    print(text)
    if path:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with open(path, 'w') as f: f.write(text + '\n')


def run_checks(parts, results, path):
    "Run each (name, fn) of `parts` into `results[name]` (a crash becomes one failed check with its traceback), saving `results` as JSON at `path` after each"
    for part, fn in parts:
        try: results[part] = fn()
        except Exception: results[part] = [dict(check=f'{part} crashed', backend='', value=math.nan, ok=False, error=traceback.format_exc()[-2000:])]
        json.dump(results, open(path, 'w'), indent=1, default=str)


def check_lines(results, parts):
    "The report's table of checks (`| check | backend | value | ok |`) for the named parts of `results`, tracebacks after their rows"
    lines = ['| check | backend | value | ok |', '|---|---|---|---|']
    for part in parts:
        for r in results[part]:
            lines.append(f"| {r['check']} | {r['backend']} | {r['value']:.3g} | {'yes' if r.get('ok') else '**NO**'} |")
            if 'error' in r: lines.append(f"\n```\n{r['error']}\n```\n")
    return lines
