"""A fastai `Learner` end to end: fastoptim's `adam()` against torch's fused AdamW through `OptimWrapper` and fastai's own
`Adam`, with each batch's time split into data, forward, backward, step and zero_grad (issue 14).

Two models, each trained by every optimizer from the same initial weights on the same batches, under bf16 autocast
(`Learner.to_bf16()`), with `Learner.fit` at a constant lr, no progress bar:
  resnet  a ResNet-50 (torchvision's architecture, written here: the GPU machine has no torchvision), 1000 classes,
          synthetic 128×128 images, batch 64
  gpt     the byte-level GPT of bench/bf16_gpt.py (8 layers, d 512, context 512), random bytes, batch 16
Every optimizer's `Learner` is built first and runs one warm-up epoch (compilation, cuDNN's choices); then --rounds
rounds, each one timed epoch of every `Learner`, in an order rotated from round to round, so that a drift of the
machine's speed (the host's above all: both models are bound by it at these sizes) falls on all of them alike. An
epoch's time is its training loop, synchronised at both ends; each round also gives each optimizer's ratio to the
first one's epoch in the same round. Per batch, CUDA events recorded at fastai's events split the GPU's
timeline: data (after_batch → the next before_batch: fetching and moving the batch), forward (before_batch →
after_loss), backward, step (before_step → after_step) and zero_grad (after_step → after_batch); the host's clock is
read at the same points.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh carried in .whl/):
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && \\
    export PYTHONPATH=$PWD/.site:$PWD; python3 bench/learner_e2e.py --out $OUT
CPU dry run: python bench/learner_e2e.py --device cpu --small --out /tmp/e2e
"""
import argparse, datetime, json, os, platform, shlex, sys, time
from functools import partial


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', default='resnet,gpt', help='resnet, gpt')
    ap.add_argument('--optimizers', default='torch-fused,fastoptim,fastoptim-none',
                    help='torch-fused, fastoptim, fastoptim-none (set_to_none=True), fastai; ratios are to the first')
    ap.add_argument('--rounds', type=int, default=6, help='timed epochs of each optimizer, one per round, after the warm-up one')
    ap.add_argument('--batches', type=int, default=60, help='training batches per epoch')
    ap.add_argument('--device', default='cuda', help='cuda (default) or cpu')
    ap.add_argument('--small', action='store_true', help='tiny models and batches: for dry runs')
    ap.add_argument('--out', default=os.environ.get('OUT', 'learner_e2e_results'))
    return ap.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
import fastai
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision  # noqa: F401 (adds Learner.to_bf16)
from fastai.optimizer import OptimWrapper, Adam as FastaiAdam
import fastoptim
from fastoptim.all import adam
from bf16_gpt import GPT, VOCAB
from timing import write_report

HP = dict(mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
LR = 1e-3
OPTIMIZERS = {  # name: (label, opt_func)
    'fastoptim': ('fastoptim `adam()` (no flag)', adam(**HP)),
    'fastoptim-none': ('fastoptim `adam(set_to_none=True)`', adam(**HP, set_to_none=True)),
    'torch-fused': ('torch `AdamW(fused=True)` via `OptimWrapper`',
                    partial(OptimWrapper, opt=torch.optim.AdamW, betas=(HP['mom'], HP['sqr_mom']), eps=HP['eps'],
                            weight_decay=HP['wd'], fused=True)),
    'fastai': ('fastai `Adam`', partial(FastaiAdam, **HP)),
}
SEGMENTS = ('data', 'forward', 'backward', 'step', 'zero_grad')


def conv_bn(ci, co, k, stride=1):
    return [nn.Conv2d(ci, co, k, stride, k // 2, bias=False), nn.BatchNorm2d(co)]

class Bottleneck(nn.Module):
    "torchvision's ResNet-50 block (v1.5: the stride on the 3×3 convolution)"
    def __init__(self, ci, width, stride):
        super().__init__()
        co = width * 4
        self.body = nn.Sequential(*conv_bn(ci, width, 1), nn.ReLU(inplace=True), *conv_bn(width, width, 3, stride),
                                  nn.ReLU(inplace=True), *conv_bn(width, co, 1))
        self.down = nn.Sequential(*conv_bn(ci, co, 1, stride)) if stride != 1 or ci != co else nn.Identity()
    def forward(self, x): return F.relu(self.body(x) + self.down(x))

def resnet50(num_classes=1000, widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3)):
    layers, ci = [], widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks)):
        for b in range(n): layers.append(Bottleneck(ci, width, 2 if i and not b else 1)); ci = width * 4
    return nn.Sequential(*conv_bn(3, widths[0], 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), *layers,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ci, num_classes))


def gpt_loss(logits, y): return F.cross_entropy(logits.float().view(-1, VOCAB), y.reshape(-1))

def setup(name, args, device):
    "(model factory, train items, valid items, loss, batch size) of model `name`; items are (x, y) pairs on `device`"
    g = torch.Generator().manual_seed(0)
    if name == 'resnet':
        bs, size, classes = (8, 32, 10) if args.small else (64, 128, 1000)
        make = (lambda: resnet50(classes, (8, 16, 32, 64), (1, 1, 1, 1))) if args.small else (lambda: resnet50(classes))
        n = bs * (args.batches + 2)
        xs, ys = torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
        loss = nn.CrossEntropyLoss()
    else:
        bs, layers, d, ctx = (4, 2, 64, 64) if args.small else (16, 8, 512, 512)
        make = lambda: GPT(layers, d, 8, ctx)
        n = bs * (args.batches + 2)
        seq = torch.randint(0, VOCAB, (n, ctx + 1), generator=g)
        xs, ys, loss = seq[:, :-1], seq[:, 1:], gpt_loss
    items = list(zip(xs.to(device), ys.to(device)))
    return make, items[:bs * args.batches], items[bs * args.batches:], loss, bs


class BatchTimes(Callback):
    "CUDA events and host clocks at fastai's batch events: the marks of each training batch, by epoch"
    order = -100  # before every other callback at each event
    def __init__(self, cuda): self.cuda, self.batches, self.epochs = cuda, [], []  # batches: a list of marks per epoch
    def mark(self):
        event = None
        if self.cuda: event = torch.cuda.Event(enable_timing=True); event.record()
        self.current.append((event, time.perf_counter()))
    def sync(self):
        if self.cuda: torch.cuda.synchronize()
    def before_train(self): self.sync(); self.batches.append([]); self.t0 = time.perf_counter()
    def after_train(self): self.sync(); self.epochs.append(time.perf_counter() - self.t0)
    def before_batch(self):
        if not self.training: return
        self.current = []; self.batches[-1].append(self.current); self.mark()
    def after_loss(self):
        if self.training: self.mark()
    def after_backward(self): self.mark()
    def before_step(self): self.mark()
    def after_step(self): self.mark()
    def after_batch(self):
        if self.training: self.mark()

    def split(self, skip):
        "Milliseconds per batch in each segment (GPU timeline, host clock), medians over the batches of the epochs after the first `skip`"
        gpu, host = {k: [] for k in SEGMENTS}, {k: [] for k in SEGMENTS}
        pairs_of = [(prev, cur) for marks in self.batches[skip:] for prev, cur in zip(marks, marks[1:])]  # within an epoch
        for prev, cur in pairs_of:  # a batch's data segment ends its predecessor's
            pairs = dict(data=(prev[-1], cur[0]), forward=(cur[0], cur[1]), backward=(cur[1], cur[2]), step=(cur[3], cur[4]),
                         zero_grad=(cur[4], cur[5]))
            for k, ((e0, t0), (e1, t1)) in pairs.items():
                host[k].append((t1 - t0) * 1e3)
                if self.cuda: gpu[k].append(e0.elapsed_time(e1))
        med = lambda d: {k: float(np.median(v)) if v else None for k, v in d.items()}
        return med(gpu), med(host)


def build(opt_name, device, init, setup_out):
    "A `Learner` for `opt_name` from the weights `init`, and its `BatchTimes`"
    make, train, valid, loss, bs = setup_out
    model = make().to(device)
    model.load_state_dict(init)
    dls = DataLoaders(DataLoader(train, bs=bs, shuffle=False), DataLoader(valid, bs=bs), device=device)
    times = BatchTimes(device.type == 'cuda')
    learn = Learner(dls, model, loss_func=loss, opt_func=OPTIMIZERS[opt_name][1], cbs=[times])
    if device.type == 'cuda': learn.to_bf16()
    return learn, times

def epoch(learn):
    "One epoch of training (the optimizer made at the first call is kept: `fit` makes one only when there is none)"
    with learn.no_bar(), learn.no_logging(): learn.fit(1, LR)

def run(model_name, args, device, init, setup_out):
    "Every optimizer's `Learner` on `model_name`: a warm-up epoch each, then `args.rounds` rounds of one epoch each, in rotated orders"
    names = args.optimizers.split(',')
    learners = {n: build(n, device, init, setup_out) for n in names}
    for n in names: epoch(learners[n][0])  # warm-up
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]: epoch(learners[n][0])
    rows = []
    for n in names:
        learn, times = learners[n]
        gpu, host = times.split(1)
        epochs = times.epochs[1:]  # the timed epochs' training loops, one per round
        rows.append(dict(model=model_name, optimizer=n, label=OPTIMIZERS[n][0], epoch_s=epochs,
                         epoch_median_s=float(np.median(epochs)), gpu_ms=gpu, host_ms=host,
                         last_losses=[float(x) for x in learn.recorder.losses[-3:]],
                         backend=sorted(set(getattr(learn.opt, 'backends_used', {}).values())) or None))
    for row in rows:  # each round's epoch against the first optimizer's in the same round
        ratios = [a / b for a, b in zip(row['epoch_s'], rows[0]['epoch_s'])]
        row.update(ratio_median=float(np.median(ratios)), ratio_min=min(ratios), ratio_max=max(ratios),
                   faster_rounds=sum(x < 1 for x in ratios))
    del learners
    if device.type == 'cuda': torch.cuda.empty_cache()
    return rows


def report(rows, meta, args):
    lines = [f"# fastai `Learner` end to end: {meta['device']}", '',
             f"{meta['date']}; torch {meta['torch']}, fastai {meta['fastai']}, fastoptim {meta['fastoptim']}; "
             f"command: `{meta['command']}`", '',
             f"{args.batches} training batches per epoch; s/epoch: median of {args.rounds} timed epochs (training loop, "
             "synchronised at both ends), one per round, after one warm-up epoch; × first: each round's epoch against the "
             "first optimizer's in the same round, median (min–max), and in how many rounds it was the shorter. Per-batch "
             "ms: medians over the timed batches, on the GPU's timeline (CUDA events at fastai's events) and, in brackets, "
             "on the host's clock.", '']
    for model in dict.fromkeys(r['model'] for r in rows):
        lines += [f"## {model}", '', '| optimizer | backend | s/epoch | × first | shorter in | ' + ' | '.join(SEGMENTS) + ' | sum | last losses |',
                  '|---|---|---|---|---|' + '---|' * len(SEGMENTS) + '---|---|']
        for r in (r for r in rows if r['model'] == model):
            cells = [f"{r['gpu_ms'][k]:.2f} ({r['host_ms'][k]:.2f})" if r['gpu_ms'][k] is not None else f"({r['host_ms'][k]:.2f})"
                     for k in SEGMENTS]
            total = sum(r['gpu_ms'][k] or r['host_ms'][k] for k in SEGMENTS)
            lines.append(f"| {r['label']} | {', '.join(r['backend'] or ['-'])} | {r['epoch_median_s']:.3f} | "
                         f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {r['faster_rounds']} of {len(r['epoch_s'])} | "
                         + ' | '.join(cells) + f" | {total:.2f} | {', '.join(f'{x:.3f}' for x in r['last_losses'])} |")
        lines.append('')
    return '\n'.join(lines)


def main(args):
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == 'cuda'
    meta = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), torch=torch.__version__, fastai=fastai.__version__,
                fastoptim=fastoptim.__version__, command=' '.join(map(shlex.quote, ['python3', *sys.argv])),
                device=torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu')
    rows = []
    for model_name in args.models.split(','):
        out = setup(model_name, args, device)
        torch.manual_seed(0)
        init = {k: v.clone() for k, v in out[0]().state_dict().items()}
        rows += run(model_name, args, device, init, out)
        for r in rows[-len(args.optimizers.split(',')):]:
            print(model_name, r['optimizer'], f"{r['epoch_median_s']:.3f} s/epoch, × first {r['ratio_median']:.3f}", r['gpu_ms'], flush=True)
    os.makedirs(args.out, exist_ok=True)
    json.dump(dict(meta=meta, rows=rows), open(os.path.join(args.out, 'learner_e2e.json'), 'w'), indent=1)
    write_report(report(rows, meta, args), os.path.join(args.out, 'learner_e2e.md'))


if __name__ == '__main__':
    main(ARGS)
