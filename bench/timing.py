"""Timing helpers the benchmark scripts share: the copy bandwidth that every fraction is measured against, the median of
a call by CUDA events, and writing a report."""
import gc, os, time
import numpy as np
import torch


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


def write_report(text, path):
    "Print `text`, and write it to `path` (its folder created) when one is given"
    print(text)
    if path:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with open(path, 'w') as f: f.write(text + '\n')
