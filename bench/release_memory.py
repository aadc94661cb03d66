"""Peak memory and step time of gradient release and optimizer accumulation on a ~1B-parameter decoder-only LLM.

Pure bf16 weights (`to_bf16(model, keep_fp32=())`) and fastoptim AdamW with Kahan summation (the default for bf16),
random token data (this measures memory and time, not learning). Four configurations, each with a fresh model and
optimizer:
  a  normal training: forward, backward, opt.step(), model.zero_grad(set_to_none=True) (--zero-grad fastai: opt.zero_grad())
  b  gradient release (prepare_for_gradient_release): each parameter stepped in its post-accumulate-grad hook
  c  gradient accumulation over --n-acc micro-batches (backward n times, one opt.step(), then zero_grad as in a)
  d  optimizer accumulation over --n-acc micro-batches with gradient release (opt.accumulate(1/n, last))
Savings: (b) vs (a) = (peak_a - peak_b) / gradient bytes; (d) vs (c) likewise; target >= 90%.
--offload keeps the checkpointed blocks' inputs in pinned host memory; --profile adds, per configuration, what is alive
on the GPU at its peak (from the allocator's recorded history), grouped by size and by where it was allocated.

On the GPU machine, from the repository root (fastoptim imports fastai: wheels from ../shared/gpu/wheels.sh in .whl/):
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && \
    export PYTHONPATH=$PWD/.site:$PWD; python3 bench/release_memory.py --out $OUT
CPU dry run: python bench/release_memory.py --device cpu --tiny --out /tmp/rm
"""
import argparse, datetime, gc, json, os, platform, re, shlex, statistics, sys, time, types
from pathlib import Path


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda', help='cuda (default) or cpu')
    ap.add_argument('--backend', default=None, choices=('forloop', 'foreach', 'jit', 'triton'),
                    help='fastoptim backend (default: triton on cuda, foreach on cpu)')
    ap.add_argument('--tiny', action='store_true', help='tiny model and batch, for CPU dry runs')
    ap.add_argument('--layers', type=int, default=16)
    ap.add_argument('--d-model', type=int, default=2048)
    ap.add_argument('--heads', type=int, default=16)
    ap.add_argument('--mlp', type=int, default=5504, help='SwiGLU hidden size')
    ap.add_argument('--vocab', type=int, default=32000)
    ap.add_argument('--ctx', type=int, default=1024, help='tokens per sequence')
    ap.add_argument('--batch', type=int, default=4, help='sequences per micro-batch')
    ap.add_argument('--n-acc', type=int, default=4, help='micro-batches per optimizer step in (c) and (d)')
    ap.add_argument('--warmup', type=int, default=2, help='untimed optimizer steps before the measured ones')
    ap.add_argument('--steps', type=int, default=10, help='measured optimizer steps per configuration')
    ap.add_argument('--no-ckpt', dest='ckpt', action='store_false',
                    help='no activation checkpointing (default: each block checkpointed, non-reentrant)')
    ap.add_argument('--offload', action='store_true',
                    help="keep the checkpointed blocks' inputs in pinned CPU memory (reentrant checkpoints under save_on_cpu)")
    ap.add_argument('--group-bytes', type=int, default=2**24,
                    help='gradient release steps the completed gradients in groups of this many bytes (0: each tensor alone)')
    ap.add_argument('--torch-fold', action='store_true',
                    help="fold micro-batches with the engine's PyTorch fold_moments instead of the Triton backend's fused kernel")
    ap.add_argument('--through-triton', action='store_true',
                    help="launch every Triton kernel through Triton's own launch (`kernel[grid](...)`), as before the engine's KernelLauncher")
    ap.add_argument('--profile', action='store_true',
                    help='record the allocations of the measured steps and report what is alive at each peak, by kind')
    ap.add_argument('--loss-chunks', type=int, default=8,
                    help='head + cross-entropy in this many checkpointed token chunks (default 8; 1: whole fp32 logits at once)')
    ap.add_argument('--zero-grad', default='none', choices=('none', 'fastai'),
                    help="none (default): model.zero_grad(set_to_none=True); fastai: opt.zero_grad(), which zeroes in place")
    ap.add_argument('--configs', default='abcd', help='which configurations to run (default abcd)')
    ap.add_argument('--out', default=os.environ.get('OUT', 'release_memory_results'), help='folder for results.md and results.json')
    args = ap.parse_args()
    if args.tiny:
        args.layers, args.d_model, args.heads, args.mlp, args.vocab, args.ctx, args.batch = 2, 64, 4, 176, 256, 32, 2
    args.backend = args.backend or ('triton' if args.device == 'cuda' else 'foreach')
    return args


# Parsed before torch and triton are imported: Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1).
ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.device == 'cpu' and ARGS.backend == 'triton': os.environ['TRITON_INTERPRET'] = '1'

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
import fastai
import fastoptim
from fastoptim.all import Adam, to_bf16
from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release

CONFIGS = {  # name: (label, gradient release?, micro-batches per optimizer step: 1 or n_acc)
    'a': ('normal training', False, False),
    'b': ('gradient release', True, False),
    'c': ('gradient accumulation', False, True),
    'd': ('optimizer accumulation + release', True, True),
}


# ---------------------------------------------------------------- model
class Block(nn.Module):
    "Pre-RMSNorm LLaMA-style block without biases: causal SDPA attention, then a SwiGLU MLP"
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.n1, self.qkv, self.o = nn.RMSNorm(d), nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.n2, self.up = nn.RMSNorm(d), nn.Linear(d, 2 * hidden, bias=False)  # gate and up in one matmul
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, C))
        gate, up = self.up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LM(nn.Module):
    "Decoder-only LM: token embedding, blocks, final RMSNorm and an untied output head (no positional encoding: random data)"
    def __init__(self, layers, d, heads, hidden, vocab, ckpt, offload=False):
        super().__init__()
        self.ckpt, self.offload = ckpt, offload
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d), nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.ndim == 2: nn.init.normal_(p, std=0.02)

    def hidden(self, idx):
        x = self.emb(idx)
        if not (self.ckpt and self.training): return self.blocks_forward(x)
        if not self.offload: return self.blocks_forward(x, lambda b, x: checkpoint(b, x, use_reentrant=False))
        # a reentrant checkpoint saves its input with save_for_backward, which save_on_cpu moves to pinned host memory
        with torch.autograd.graph.save_on_cpu(pin_memory=True):
            return self.blocks_forward(x, lambda b, x: checkpoint(b, x, use_reentrant=True))

    def blocks_forward(self, x, call=lambda b, x: b(x)):
        for b in self.blocks: x = call(b, x)
        return x

    def forward(self, idx): return self.head(self.norm(self.hidden(idx)))


def chunk_loss(model, h, y):
    "Summed cross-entropy of the hidden states `h` (tokens × d) against `y`, logits in fp32"
    return F.cross_entropy(model.head(model.norm(h)).float(), y, reduction='sum')


def lm_loss(model, x, y, chunks):
    "Mean cross-entropy; with `chunks` > 1 the head and loss run on token chunks, each checkpointed, so the full fp32 logits never exist"
    if chunks <= 1: return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
    h, y = model.hidden(x).flatten(0, 1), y.flatten()
    total = sum(checkpoint(chunk_loss, model, hc, yc, use_reentrant=False) for hc, yc in zip(h.chunk(chunks), y.chunk(chunks)))
    return total / y.numel()


# ---------------------------------------------------------------- measurement
def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache()


def build(args, device):
    "A fresh bf16 model (built on `device`) and its Kahan AdamW"
    torch.manual_seed(0)
    with torch.device(device):
        model = LM(args.layers, args.d_model, args.heads, args.mlp, args.vocab, args.ckpt, args.offload)
    to_bf16(model, keep_fp32=())
    opt = Adam(list(model.parameters()), lr=1e-4, mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, **{args.backend: True})
    return model, opt


def micro_batch(model, x, y, chunks):
    lm_loss(model, x, y, chunks).backward()


def size_kinds(model, args):
    "Byte size -> names of what has that size: each parameter's gradient, and the hidden-state activations of a micro-batch"
    kinds = {}
    for n, p in model.named_parameters():
        kinds.setdefault(2 * p.numel(), set()).add('grad ' + re.sub(r'blocks\.\d+\.', 'blocks.*.', n))
    tokens = args.batch * args.ctx
    kinds.setdefault(2 * tokens * args.d_model, set()).add('hidden states (a block input: checkpoint)')
    chunk = -(-tokens // args.loss_chunks)
    kinds.setdefault(4 * chunk * args.vocab, set()).add('fp32 logits of a loss chunk')
    kinds.setdefault(2 * chunk * args.vocab, set()).add('bf16 logits of a loss chunk')
    return kinds


def frame_label(frames):
    "Where an allocation was made: the innermost frame in this script and the innermost torch frame, if any"
    here = next((f for f in frames if f['filename'].endswith('release_memory.py')), None)
    lib = next((f for f in frames if '/torch/' in f['filename']), None)
    parts = [f"{f['name']} ({Path(f['filename']).name}:{f['line']})" for f in (lib, here) if f is not None]
    return ' < '.join(parts) or 'no Python frame (autograd engine)'


def peak_composition(snapshot, kinds, top=14):
    "Replay the recorded allocations; at the highest point, what is alive that was allocated while recording, grouped"
    events = [e for e in snapshot['device_traces'][0] if e['action'] in ('alloc', 'free_requested')]
    live, total, peak, peak_at = {}, 0, 0, 0
    for i, e in enumerate(events):
        if e['action'] == 'alloc': live[e['addr']] = e; total += e['size']
        elif e['addr'] in live: total -= live.pop(e['addr'])['size']
        if total > peak: peak, peak_at = total, i
    live = {}
    for e in events[:peak_at + 1]:
        if e['action'] == 'alloc': live[e['addr']] = e
        else: live.pop(e['addr'], None)
    groups = {}
    for e in live.values():
        key = (e['size'], ' / '.join(sorted(kinds.get(e['size'], ()))) or '?', frame_label(e.get('frames', [])))
        groups[key] = groups.get(key, 0) + 1
    rows = sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[1])
    return dict(peak_bytes=peak, events=len(events), groups=[dict(size=k[0], count=c, kinds=k[1], where=k[2]) for k, c in rows[:top]],
                other_bytes=sum(k[0] * c for k, c in rows[top:]))


def run(name, args, device, data):
    "Peak memory and median seconds per optimizer step of configuration `name`"
    _, release, acc = CONFIGS[name]
    n = args.n_acc if acc else 1
    cuda = device.type == 'cuda'
    free(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0  # the token data
    model, opt = build(args, device)
    if release: prepare_for_gradient_release(model, opt, args.group_bytes)
    times, it = [], iter(data)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:  # after warm-up: states allocated, kernels compiled
            sync(device)
            if cuda: torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device) - base if cuda else None
            if cuda and args.profile: torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks='python', context='alloc')  # context 'all' breaks recomputed checkpoints (torch 2.11)
        sync(device); t0 = time.perf_counter()
        for i in range(n):
            x, y = next(it)
            if name == 'd': opt.accumulate(1 / n, i == n - 1)
            micro_batch(model, x, y, args.loss_chunks)
        opt.step()       # a no-op with release (d: the hooks folded and, on the last micro-batch, wrote the weights)
        if args.zero_grad == 'none': model.zero_grad(set_to_none=True)  # FastOptimizer.zero_grad (fastai's) zeroes in place
        else: opt.zero_grad()  # fastai's: p.grad.zero_(), the gradients stay allocated; a no-op with release
        sync(device)
        if step >= args.warmup: times.append(time.perf_counter() - t0)
    if release: assert all(p.grad is None for p in model.parameters()), 'release left gradients'
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    profile = None
    if cuda and args.profile:
        profile = peak_composition(torch.cuda.memory._snapshot(), size_kinds(model, args))
        torch.cuda.memory._record_memory_history(enabled=None)
    res = dict(label=CONFIGS[name][0], release=release, micro_batches=n, peak_bytes=peak, resident_bytes=resident,
               step_s=statistics.median(times), step_times_s=times,
               tokens_per_s=n * args.batch * args.ctx / statistics.median(times),
               profile=profile, state_bytes=sum(t.nbytes for p in model.parameters() for t in opt.state[p].values() if isinstance(t, torch.Tensor)))
    opt.stop_accumulation()
    if release: remove_gradient_release(model)
    del model, opt
    free(device)
    return res


# ---------------------------------------------------------------- report
def checkpointing(args):
    if not args.ckpt: return 'off'
    if args.offload: return 'on (every block, reentrant), block inputs offloaded to pinned CPU memory (save_on_cpu)'
    return 'on (every block, non-reentrant)'


def profile_md(results):
    "What is alive at the peak of each configuration, from the recorded allocations (--profile)"
    out = []
    for n, x in results.items():
        pr = x.get('profile')
        if not pr: continue
        out += [f"## ({n}) {x['label']}: alive at the peak, allocated during the measured steps", '',
                f"Replayed from `torch.cuda.memory._record_memory_history` ({pr['events']:,} allocations and frees): "
                f"{pr['peak_bytes'] / 2**20:,.0f} MiB above what was allocated before the measured steps.", '',
                '| MiB each | count | MiB | same size as | allocated in |', '|---|---|---|---|---|',
                *[f"| {g['size'] / 2**20:,.1f} | {g['count']} | {g['size'] * g['count'] / 2**20:,.1f} | {g['kinds']} | {g['where']} |"
                  for g in pr['groups']],
                f"| | | {pr['other_bytes'] / 2**20:,.1f} | everything else | |", '']
    return out


def gib(b): return '—' if b is None else f'{b / 2**30:.2f}'


def savings(r, grad_bytes):
    "(description, saving fraction or None, passed or None) for (b) vs (a) and (d) vs (c)"
    out = []
    for new, ref in (('b', 'a'), ('d', 'c')):
        if new not in r or ref not in r: continue
        pn, pr = r[new]['peak_bytes'], r[ref]['peak_bytes']
        s = None if pn is None or pr is None else (pr - pn) / grad_bytes
        out.append((f'({new}) vs ({ref}): (peak_{ref} − peak_{new}) / gradient bytes', s, None if s is None else s >= 0.9))
    return out


def table(r, grad_bytes):
    rows = ['| config | micro-batches / step | peak GiB | resident GiB (after warm-up) | peak − resident GiB | gradient GiB (reference) | median s / step | tokens/s |',
            '|---|---|---|---|---|---|---|---|']
    rows += [f"| ({n}) {x['label']} | {x['micro_batches']} | {gib(x['peak_bytes'])} | {gib(x['resident_bytes'])} "
             f"| {gib(None if x['peak_bytes'] is None else x['peak_bytes'] - x['resident_bytes'])} | {gib(grad_bytes)} "
             f"| {x['step_s']:.3f} | {x['tokens_per_s']:,.0f} |" for n, x in r.items()]
    return '\n'.join(rows)


def versions():
    v = dict(python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__, fastoptim=fastoptim.__version__)
    try:
        import triton; v['triton'] = triton.__version__
    except ImportError: v['triton'] = None
    return v


def main(args):
    t_start = time.perf_counter()
    if args.torch_fold:  # the PyTorch backends' fold (`fold_moments`), bound to this backend
        backend = fastoptim.core.backends[args.backend]
        backend.fold = types.MethodType(fastoptim.core.Stepper.fold, backend)
    if args.through_triton:  # launchers made from now on go through Triton at every call
        import fastoptim.triton_engine as te
        made = te.KernelLauncher.__init__
        te.KernelLauncher.__init__ = lambda self, kernel, meta, direct=None, current_device=None: made(self, kernel, meta, False, current_device)
    device = torch.device(args.device)
    if args.tiny: torch.set_num_threads(1)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    with torch.device('meta'):
        n_params = sum(p.numel() for p in LM(args.layers, args.d_model, args.heads, args.mlp, args.vocab, False).parameters())
    grad_bytes = 2 * n_params  # bf16 gradients
    n_micro = args.n_acc * (args.warmup + args.steps)  # enough micro-batches for (c) and (d), reused by (a) and (b)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, args.vocab, (n_micro, args.batch, args.ctx + 1), generator=g).to(device)
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in toks]
    print(f'model: {n_params:,} parameters ({n_params/1e9:.3f}B), gradients {grad_bytes/2**30:.2f} GiB in bf16; '
          f'micro-batch {args.batch} x {args.ctx} tokens; activation checkpointing {"on" if args.ckpt else "off"}; loss chunks {args.loss_chunks}; '
          f'{args.backend} backend; zero_grad {args.zero_grad}; {args.warmup} warm-up + {args.steps} measured optimizer steps', flush=True)

    results = {}
    for name in args.configs:
        t0 = time.perf_counter()
        results[name] = x = run(name, args, device, data)
        print(f"({name}) {x['label']}: peak {gib(x['peak_bytes'])} GiB, resident {gib(x['resident_bytes'])} GiB, "
              f"{x['step_s']:.3f} s/step ({time.perf_counter() - t0:.1f} s)", flush=True)

    checks = savings(results, grad_bytes)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or platform.machine()})'
    v, date = versions(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    fmt = lambda s, ok: 'n/a (no CUDA memory statistics on CPU)' if s is None else f"{s:.1%} — **{'PASS' if ok else 'FAIL'}** (target ≥ 90%)"
    total_s = time.perf_counter() - t_start
    md = ['# Gradient release and optimizer accumulation: peak memory on a decoder-only LM', '',
          f"{dev_name}; {date}; " + ', '.join(f'{k} {x}' for k, x in v.items()), '',
          f'Command: `{command}`', '',
          f"Model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, SwiGLU MLP {args.mlp}, vocab {args.vocab}, "
          f"untied embedding and head, RMSNorm, no biases, no positional encoding: **{n_params:,} parameters**; pure bf16 "
          f"(`to_bf16(model, keep_fp32=())`). Activation checkpointing: **{checkpointing(args)}**.",
          f"Optimizer: fastoptim AdamW, {args.backend} backend, Kahan summation (bf16 default), lr 1e-4, mom 0.9, sqr_mom 0.95, "
          f"eps 1e-8, wd 0.1. Loss: cross-entropy on the logits cast to fp32, "
          f"{'all at once' if args.loss_chunks <= 1 else f'head + loss in {args.loss_chunks} checkpointed token chunks (the full fp32 logits never exist)'}.",
          f"Gradient release steps completed gradients in groups of {args.group_bytes:,} bytes. "
          f"{'Micro-batches folded by the PyTorch fold_moments (--torch-fold). ' if args.torch_fold else ''}"
          f"{'Every Triton kernel launched through Triton (--through-triton). ' if args.through_triton else ''}"
          f"Batch: {args.batch} sequences × {args.ctx} tokens per micro-batch of random tokens (torch.randint); (c) and (d) "
          f"accumulate {args.n_acc} micro-batches per optimizer step.", '',
          f"Peak: torch.cuda.max_memory_allocated over {args.steps} optimizer steps after {args.warmup} warm-up steps (peak stats "
          f"reset after warm-up), net of the token data. Resident: memory_allocated after warm-up (weights, optimizer state, "
          f"leftovers). Gradient bytes: parameters × 2 (bf16). Time: median of synchronize + perf_counter per optimizer step. "
          f"Gradients cleared after each optimizer step by "
          f"{'`model.zero_grad(set_to_none=True)` (fastoptim/fastai `opt.zero_grad()` only zeroes in place)' if args.zero_grad == 'none' else '`opt.zero_grad()` (fastai: zeroed in place, kept allocated)'}. "
          f"Each configuration builds a fresh model and optimizer; gc + empty_cache between them. Whole script {total_s:.0f} s.", '',
          table(results, grad_bytes), '', '## Savings of the gradient bytes', '',
          *[f'- {d}: {fmt(s, ok)}' for d, s, ok in checks], '', *profile_md(results)]
    (out / 'results.md').write_text('\n'.join(md))
    (out / 'results.json').write_text(json.dumps(dict(
        device=dev_name, versions=v, date=date, command=command, args=vars(args), parameters=n_params,
        gradient_bytes=grad_bytes, tokens_per_micro_batch=args.batch * args.ctx, total_s=total_s, results=results,
        savings=[dict(what=d, saving=s, passed=ok) for d, s, ok in checks]), indent=1))
    for d, s, ok in checks: print(f"{d}: {fmt(s, ok)}")
    print(f'wrote {out}/results.md, results.json ({total_s:.0f} s)\n')
    print(table(results, grad_bytes))


if __name__ == '__main__':
    main(ARGS)
