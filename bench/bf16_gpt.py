"""Pure-bf16 training with Kahan summation against bf16 mixed precision on a byte-level GPT (issue 3, item 5).

Four configurations train the same model from the same initial weights, on the same batches, with the same
schedule (fastoptim AdamW, warm-up then cosine lr, decoupled wd), on the Python standard library's own .py files:
  a  fp32 weights under bf16 autocast (fastai's MixedPrecision(amp_mode=bf16)), fp32 optimizer state
  b  pure bf16, rounded to nearest (kahan_sum=False)
  c  pure bf16 with Kahan summation (kahan_sum=True, the Kahan compensation seeded from the fp32 initial weights)
  d  pure bf16 with stochastic rounding (stochastic_rounding=True, seed=0)
  e  pure bf16 with compressed state: an int8 master residual and 8-bit moments (master_weight_bits=24, state_bits=8)
     (issue 17; run with --configs a,e)
A short timed probe of every configuration first sets the steps per run so the four fit in --time-budget-s.

On the GPU machine, from the repository root (fastoptim imports fastai: wheels from ../shared/gpu/wheels.sh in .whl/):
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && \
    export PYTHONPATH=$PWD/.site:$PWD; python3 bench/bf16_gpt.py --out $OUT
CPU dry run: python bench/bf16_gpt.py --device cpu --tiny --backend foreach --out /tmp/gpt
"""
import argparse, datetime, gc, json, math, os, platform, shlex, sys, sysconfig, time, zlib
from pathlib import Path


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda', help='cuda (default) or cpu')
    ap.add_argument('--backend', default=None, choices=('forloop', 'foreach', 'jit', 'triton'),
                    help='fastoptim backend (default: triton on cuda, foreach on cpu)')
    ap.add_argument('--tiny', action='store_true', help='2 layers, d 64, context 64, 40 steps, 200 files: for dry runs')
    ap.add_argument('--layers', type=int, default=8)
    ap.add_argument('--d-model', type=int, default=512)
    ap.add_argument('--heads', type=int, default=8)
    ap.add_argument('--ctx', type=int, default=512, help='context length in bytes')
    ap.add_argument('--batch', type=int, default=16, help='sequences per step')
    ap.add_argument('--steps', type=int, default=None, help='steps per configuration (default: from the probe and the budget)')
    ap.add_argument('--time-budget-s', type=float, default=430., help='seconds for the training runs, evaluations included')
    ap.add_argument('--lr', type=float, default=1e-3, help='peak learning rate')
    ap.add_argument('--min-lr', type=float, default=1e-4, help='learning rate at the end of the cosine')
    ap.add_argument('--warmup-frac', type=float, default=0.02, help='fraction of the steps with linear lr warm-up')
    ap.add_argument('--wd', type=float, default=0.1, help='decoupled weight decay (not on biases, LayerNorms)')
    ap.add_argument('--clip', type=float, default=1.0, help='gradient-norm clipping, the same for all (0: none)')
    ap.add_argument('--evals', type=int, default=40, help='validation points per curve (besides step 0)')
    ap.add_argument('--val-batches', type=int, default=16, help='fixed validation batches averaged at each point')
    ap.add_argument('--max-files', type=int, default=None, help='use only the first N files (sorted by path)')
    ap.add_argument('--seed', type=int, default=0, help='seed of the initial weights and of the data order')
    ap.add_argument('--configs', default='a,b,c,d', help='configurations to train (see above), the first the reference')
    ap.add_argument('--out', default=os.environ.get('OUT', 'bf16_gpt_results'), help='folder for results.md, results.json, curves.png')
    args = ap.parse_args()
    if args.tiny:
        args.layers, args.d_model, args.heads, args.ctx, args.batch = 2, 64, 4, 64, 8
        args.steps, args.evals, args.val_batches = args.steps or 40, 8, 4
        args.max_files = args.max_files or 200
    args.backend = args.backend or ('triton' if args.device == 'cuda' else 'foreach')
    args.configs = args.configs.split(',')
    return args


# Parsed before torch and triton are imported: Triton runs CPU tensors only in its interpreter, which
# TRITON_INTERPRET=1 selects when triton is first imported (by fastoptim).
ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.device == 'cpu' and ARGS.backend == 'triton': os.environ['TRITON_INTERPRET'] = '1'
elif ARGS is not None and ARGS.device == 'cuda' and os.environ.get('TRITON_INTERPRET', '0') == '1':
    sys.exit('Unset TRITON_INTERPRET to run the Triton kernels on the GPU.')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import fastai
import fastoptim
from fastoptim.all import Adam, to_bf16, seed_master_weights

VOCAB, SEP = 256, b'\x00'
CONFIGS = {  # name: (label, pure bf16?, rounding arguments of the optimizer)
    'a': ('fp32 + bf16 autocast', False, {}),
    'b': ('bf16, nearest', True, dict(kahan_sum=False)),
    'c': ('bf16, Kahan', True, dict(kahan_sum=True)),
    'd': ('bf16, stochastic', True, dict(stochastic_rounding=True, seed=0)),
    'e': ('bf16, int8 residual + 8-bit moments', True, dict(master_weight_bits=24, state_bits=8)),
}


# ---------------------------------------------------------------- data
def load_stdlib(max_files=None, val_mod=20):
    "Bytes of the standard library's .py files (sorted by path, NUL-separated): (train, val, stats); a file is held out when crc32(path) % `val_mod` == 0"
    root = Path(sysconfig.get_paths()['stdlib'])
    files = sorted(f for f in root.rglob('*.py') if not {'site-packages', 'dist-packages'} & set(f.relative_to(root).parts))
    files = files[:max_files] if max_files else files
    val = [zlib.crc32(f.relative_to(root).as_posix().encode()) % val_mod == 0 for f in files]
    parts = {True: [], False: []}
    for f, v in zip(files, val): parts[v].append(f.read_bytes())
    train, valid = (np.frombuffer(bytearray(SEP.join(parts[v])), dtype=np.uint8) for v in (False, True))
    if len(valid) < 4096 or len(train) < 4096: raise ValueError(f'Too little text under {root}: {len(train)} train, {len(valid)} val bytes.')
    return train, valid, dict(root=str(root), files=len(files), val_files=sum(val), train_bytes=len(train), val_bytes=len(valid))


def batch(data, starts, ctx):
    "Inputs and targets (int64, `len(starts)` × `ctx`) of the windows of `data` beginning at `starts`, gathered on data's device"
    seq = data[starts[:, None] + torch.arange(ctx + 1, device=data.device)].long()
    return seq[:, :-1], seq[:, 1:]


# ---------------------------------------------------------------- model
class Block(nn.Module):
    "Pre-LayerNorm transformer block: causal self-attention through SDPA, then a GELU MLP"
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    "Byte-level GPT-2-style model with learned positions and the output layer tied to the byte embedding"
    def __init__(self, layers, d, heads, ctx):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, d), nn.Parameter(torch.zeros(ctx, d))
        self.blocks, self.ln = nn.Sequential(*[Block(d, heads) for _ in range(layers)]), nn.LayerNorm(d)
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02), residual projections scaled by 1/√(2·layers)
            if p.ndim == 2: nn.init.normal_(p, std=0.02 / (math.sqrt(2 * layers) if name.endswith(('proj.weight', 'out.weight')) else 1))
            elif name.endswith('bias'): nn.init.zeros_(p)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:idx.shape[1]]
        return F.linear(self.ln(self.blocks(x)), self.tok.weight)


# ---------------------------------------------------------------- training
def lr_at(step, steps, args):
    "Linear warm-up to `args.lr`, then cosine decay to `args.min_lr` at the last step"
    warmup = max(1, round(args.warmup_frac * steps))
    if step < warmup: return args.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - 1 - warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))


def build(name, init, args, device):
    "Model and optimizer of configuration `name`, from the fp32 initial weights `init` (a state dict on the CPU)"
    _, pure_bf16, rounding = CONFIGS[name]
    model = GPT(args.layers, args.d_model, args.heads, args.ctx)
    model.load_state_dict(init)
    model.to(device)
    if pure_bf16: to_bf16(model, keep_fp32=())
    params = list(model.parameters())
    opt = Adam(params, lr=args.lr, mom=0.9, sqr_mom=0.95, eps=1e-8, wd=args.wd, **{args.backend: True}, **rounding)
    for p in params:
        if p.ndim < 2: opt.state[p]['do_wd'] = False  # fastai's flag: no weight decay on biases and LayerNorm gains
    if pure_bf16: seed_master_weights(opt, [init[n] for n, _ in model.named_parameters()])  # no-op unless Kahan
    return model, opt


def forward_loss(model, x, y, autocast):
    "Mean cross-entropy in fp32 of `model` on (x, y), under bf16 autocast if `autocast`"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, VOCAB), y.reshape(-1))


def train_step(model, opt, x, y, autocast, clip):
    "Forward, backward, optional clipping and `opt.step()`; the gradients stay allocated (zeroed by the caller)"
    loss = forward_loss(model, x, y, autocast)
    loss.backward()
    if clip: torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, val, val_starts, ctx, autocast):
    "Validation loss averaged over the fixed batches `val_starts` (n_batches × batch window starts)"
    total = sum(forward_loss(model, *batch(val, s, ctx), autocast) for s in val_starts)
    return total.item() / len(val_starts)


class Stopwatch:
    "Accumulated wall time between start() and stop(), synchronising `device` at each"
    def __init__(self, device): self.device, self.total, self.t0 = device, 0., None
    def sync(self):
        if self.device.type == 'cuda': torch.cuda.synchronize(self.device)
    def start(self): self.sync(); self.t0 = time.perf_counter()
    def stop(self):
        if self.t0 is None: return
        self.sync(); self.total += time.perf_counter() - self.t0; self.t0 = None


def tensor_bytes(model, opt):
    "Bytes of the parameters, their gradients and their optimizer state tensors"
    ps = list(model.parameters())
    return (sum(p.nbytes + (p.grad.nbytes if p.grad is not None else 0) for p in ps)
            + sum(t.nbytes for p in ps for t in opt.state[p].values() if isinstance(t, torch.Tensor)))


def free(device):
    "Release the memory of deleted models and optimizers"
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache()


def probe(init, train, val_starts, val, args, device, warm=5, timed=15):
    "Seconds per training step and per evaluation of each configuration, after `warm` steps (which compile the kernels)"
    starts = torch.randint(0, len(train) - args.ctx - 1, (warm + timed, args.batch), generator=torch.Generator().manual_seed(1)).to(device)
    res = {}
    for name in args.configs:
        pure_bf16 = CONFIGS[name][1]
        model, opt = build(name, init, args, device)
        watch = Stopwatch(device)
        for i, s in enumerate(starts):
            if i == warm: watch.start()
            train_step(model, opt, *batch(train, s, args.ctx), not pure_bf16, args.clip)
            opt.zero_grad()
        watch.stop()
        step_s, watch.total = watch.total / timed, 0.
        watch.start(); evaluate(model, val, val_starts, args.ctx, not pure_bf16); watch.stop()
        res[name] = dict(step_s=step_s, eval_s=watch.total)
        del model, opt
        free(device)
    return res


def plan(timing, args):
    "Steps per configuration (from --steps, else the most that fit --time-budget-s) and the estimated seconds of the runs"
    eval_s = sum(t['eval_s'] for t in timing.values()) * (args.evals + 2)
    step_s = sum(t['step_s'] for t in timing.values())
    steps = args.steps or max(10, int((args.time_budget_s - eval_s) / step_s))
    return steps, steps * step_s + eval_s


def run(name, init, train, starts, val, val_starts, args, device):
    "Train configuration `name` for len(starts) steps: the validation curve, memory and throughput"
    _, pure_bf16, _ = CONFIGS[name]
    steps, cuda = len(starts), device.type == 'cuda'
    every, skip = max(1, steps // args.evals), min(10, steps // 4)  # evaluation interval; untimed warm-up steps
    free(device)
    if cuda: torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    model, opt = build(name, init, args, device)
    curve, watch, tail = [(0, evaluate(model, val, val_starts, args.ctx, not pure_bf16))], Stopwatch(device), []
    for step, s in enumerate(starts):
        if step >= skip and watch.t0 is None: watch.start()
        opt.set_hyper('lr', lr_at(step, steps, args))
        loss = train_step(model, opt, *batch(train, s, args.ctx), not pure_bf16, args.clip)
        if step >= steps - every: tail.append(loss)  # the last interval's training losses, kept on the device
        if step == steps - 1:  # after backward and step, before zero_grad: params, grads, optimizer state
            non_act = torch.cuda.memory_allocated(device) - base if cuda else None
            non_act_tensors = tensor_bytes(model, opt)
        opt.zero_grad()
        if (step + 1) % every == 0 or step + 1 == steps:
            watch.stop()
            curve.append((step + 1, evaluate(model, val, val_starts, args.ctx, not pure_bf16)))
    res = dict(label=CONFIGS[name][0], final_val_loss=curve[-1][1], curve=curve,
               final_train_loss=torch.stack(tail).mean().item(),
               peak_mib=(torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None,
               non_activation_mib=non_act / 2**20 if cuda else None, non_activation_tensors_mib=non_act_tensors / 2**20,
               tokens_per_s=(steps - skip) * args.batch * args.ctx / watch.total, timed_steps=steps - skip,
               untimed_steps=skip, train_s=watch.total, optimizer=repr(opt))
    del model, opt
    free(device)
    return res


# ---------------------------------------------------------------- report
def targets(r):
    "The issues' checks of the configurations trained, as (description, measured, passed): issue 3's of (c), issue 17's of (e)"
    checks, a = [], r.get('a')
    if a is None: return checks
    key = 'non_activation_mib' if a['non_activation_mib'] is not None else 'non_activation_tensors_mib'
    for n in ('c', 'e'):
        if n not in r: continue
        gap = (r[n]['final_val_loss'] - a['final_val_loss']) / a['final_val_loss']
        checks.append((f'({n}) final val loss within 1% of (a)', f'{gap:+.2%}', abs(gap) <= 0.01))
        if n == 'c' and 'b' in r:
            b, c = r['b'], r['c']
            checks.append(('(b) final val loss worse than (c)', f"{b['final_val_loss']:.4f} vs {c['final_val_loss']:.4f}", b['final_val_loss'] > c['final_val_loss']))
        saving = 1 - r[n][key] / a[key]
        checks.append((f'({n}) non-activation memory ≥35% below (a)', f'{saving:.1%} below', saving >= 0.35))
        ratio = r[n]['tokens_per_s'] / a['tokens_per_s']
        checks.append((f'({n}) tokens/s ≥ (a)', f'{ratio:.3f}×', ratio >= 1))
    return checks


def table(r):
    "The results as a markdown table"
    fmt = lambda v, f: '—' if v is None else format(v, f)
    rows = ['| config | final val loss | peak MiB | non-activation MiB (measured) | non-activation MiB (tensors) | tokens/s |',
            '|---|---|---|---|---|---|']
    rows += [f"| ({n}) {x['label']} | {x['final_val_loss']:.4f} | {fmt(x['peak_mib'], '.0f')} | {fmt(x['non_activation_mib'], '.1f')} "
             f"| {x['non_activation_tensors_mib']:.1f} | {x['tokens_per_s']:,.0f} |" for n, x in r.items()]
    return '\n'.join(rows)


def plot(r, path):
    "Validation loss against step for every configuration, and the same zoomed on the second half"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    half = max(s for s, _ in next(iter(r.values()))['curve']) / 2
    for n, x in r.items():
        s, l = zip(*x['curve'])
        axes[0].plot(s, l, label=f"({n}) {x['label']}")
        late = [(u, v) for u, v in x['curve'] if u >= half]
        axes[1].plot(*zip(*late), marker='.', label=f"({n}) {x['label']}")
    for ax, title in zip(axes, ('validation loss', 'second half (zoom)')):
        ax.set(xlabel='step', ylabel='val loss (nats/byte)', title=title); ax.grid(alpha=0.3); ax.legend()
    fig.tight_layout(); fig.savefig(path, dpi=120); plt.close(fig)


def versions():
    "Versions of Python and the libraries the figures depend on"
    v = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
             matplotlib=matplotlib.__version__, fastai=fastai.__version__, fastoptim=fastoptim.__version__)
    try:
        import triton; v['triton'] = triton.__version__
    except ImportError: v['triton'] = None
    return v


def main(args):
    t_start = time.perf_counter()
    if not set(args.configs) <= set(CONFIGS): sys.exit(f'--configs: choose from {sorted(CONFIGS)}, got {args.configs}')
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.tiny: torch.set_num_threads(1)  # tiny ops gain nothing from threads, and lose much when cores are shared
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    train_np, val_np, data = load_stdlib(args.max_files)
    train, val = torch.from_numpy(train_np).to(device), torch.from_numpy(val_np).to(device)
    n_val = args.val_batches * args.batch
    val_starts = torch.from_numpy(np.linspace(0, len(val_np) - args.ctx - 2, n_val).astype(np.int64)).view(args.val_batches, args.batch).to(device)
    torch.manual_seed(args.seed)
    init = GPT(args.layers, args.d_model, args.heads, args.ctx).state_dict()
    n_params = sum(t.numel() for t in init.values())
    print(f"data: {data['files']} files ({data['val_files']} held out), {data['train_bytes']/1e6:.1f} MB train, "
          f"{data['val_bytes']/1e6:.2f} MB val; model: {n_params/1e6:.2f}M parameters; loaded in {time.perf_counter()-t_start:.1f} s", flush=True)

    timing = probe(init, train, val_starts, val, args, device)
    steps, estimate = plan(timing, args)
    probe_txt = ', '.join(f"({n}) {t['step_s']*1e3:.1f}" for n, t in timing.items()) + ' ms/step'
    print(f'probe: {probe_txt}' + f"; eval {timing[args.configs[0]]['eval_s']:.2f} s → {steps} steps per config ({steps*args.batch*args.ctx/1e6:.1f}M tokens), "
          f"estimated {estimate:.0f} s for the {len(args.configs)} runs (budget {args.time_budget_s:.0f} s)", flush=True)

    rng = np.random.default_rng(args.seed)
    starts = torch.from_numpy(rng.integers(0, len(train_np) - args.ctx - 1, (steps, args.batch))).to(device)
    results, t_runs = {}, time.perf_counter()
    for name in args.configs:
        results[name] = run(name, init, train, starts, val, val_starts, args, device)
        x = results[name]
        print(f"({name}) {x['label']}: val {x['final_val_loss']:.4f}, {x['tokens_per_s']:,.0f} tokens/s, "
              f"{x['train_s']:.1f} s timed", flush=True)
    runs_s = time.perf_counter() - t_runs

    checks = targets(results)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or platform.machine()})'
    v = versions()
    md = ['# Pure bf16 vs bf16 mixed precision: byte-level GPT on the Python standard library', '',
          f"{dev_name}; {datetime.datetime.now().isoformat(timespec='seconds')}; " + ', '.join(f'{k} {x}' for k, x in v.items()), '',
          f'Command: `{command}`', '',
          f"Model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, context {args.ctx}, vocab {VOCAB}, "
          f"output tied to the byte embedding: **{n_params:,} parameters**.",
          f"Data: {data['files']} .py files under `{data['root']}` (site-/dist-packages excluded), sorted by path, "
          f"NUL-separated; {data['val_files']} files held out by crc32(path) % 20 == 0: {data['train_bytes']:,} train bytes, "
          f"{data['val_bytes']:,} val bytes. Validation: {args.val_batches} fixed batches of {args.batch} evenly spaced windows.",
          f"Training: {steps} steps × {args.batch} × {args.ctx} = **{steps*args.batch*args.ctx:,} tokens per configuration**, "
          f"same random windows for all; fastoptim AdamW ({args.backend} backend), mom 0.9, sqr_mom 0.95, eps 1e-8, lr warm-up "
          f"{args.warmup_frac:.0%} to {args.lr:g} then cosine to {args.min_lr:g}, decoupled wd {args.wd:g} (not on biases, LayerNorms), "
          f"grad clipping {args.clip:g}. Loss in fp32 (logits cast to float). (c) seeds the Kahan compensation with what the "
          f"bf16 cast rounds off the fp32 initial weights, as fastoptim's BF16 callback does.",
          f"Probe {probe_txt}: estimated {estimate:.0f} s for the "
          f"{len(args.configs)} runs, took {runs_s:.0f} s; whole script {time.perf_counter()-t_start:.0f} s.", '',
          'Peak MiB: torch.cuda.max_memory_allocated during the run (evaluations included). Non-activation MiB (measured): '
          'torch.cuda.memory_allocated after backward and `opt.step()` of the last step, before `zero_grad` (params, grads, '
          'optimizer state, plus the batch and a few scalars); (tensors): bytes of the parameters, gradients and optimizer state '
          'tensors. Both are net of the memory allocated before the model was built (the data). tokens/s: synchronize + '
          f"perf_counter over the training steps after the first {next(iter(results.values()))['untimed_steps']}, evaluations excluded.", '',
          table(results), '', '## Targets', '', '| target | measured | passed |', '|---|---|---|',
          *[f'| {d} | {m} | {"yes" if ok else "**no**"} |' for d, m, ok in checks], '', '![validation loss](curves.png)', '']
    (out / 'results.md').write_text('\n'.join(md))
    plot(results, out / 'curves.png')
    (out / 'results.json').write_text(json.dumps(dict(
        device=dev_name, versions=v, date=datetime.datetime.now().isoformat(timespec='seconds'), command=command,
        args=vars(args), parameters=n_params, data=data, steps=steps, tokens_per_config=steps * args.batch * args.ctx,
        probe=timing, estimated_s=estimate, runs_s=runs_s, results=results,
        targets=[dict(target=d, measured=m, passed=ok) for d, m, ok in checks]), indent=1))
    print('\n'.join(f"{'PASS' if ok else 'FAIL'}  {d}: {m}" for d, m, ok in checks))
    print(f'wrote {out}/results.md, results.json, curves.png\n')
    print(table(results))


if __name__ == '__main__':
    main(ARGS)
