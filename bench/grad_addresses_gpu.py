"""Where backward puts the gradients from step to step when `zero_grad` sets them to None: a training loop on one
GPU (torchvision's ResNet-50 from scratch, bf16 autocast, batch 64 of 128×128 images, as `learner_e2e.py`'s; and
a stack of transformer blocks), fastoptim's `adam()` with `set_to_none=True`. Each step's gradient addresses are
numbered as a set (the same addresses as an earlier step: the same number); the sequence shows whether they stay,
alternate between a few sets, or move every step.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/grad_addresses_gpu.py --out $OUT/grad_addresses.md
"""
import argparse, sys
import torch
from fastoptim.all import Adam

ap = argparse.ArgumentParser()
ap.add_argument('--out', default='grad_addresses.md')
ap.add_argument('--steps', type=int, default=40)
args = ap.parse_args()

def resnet():
    import torchvision
    model = torchvision.models.resnet50(num_classes=10).cuda()
    x, y = torch.randn(64, 3, 128, 128, device='cuda'), torch.randint(0, 10, (64,), device='cuda')
    return model, lambda: torch.nn.functional.cross_entropy(model(x), y)

def transformer():
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 512), torch.nn.TransformerEncoder(layer, 6), torch.nn.Linear(512, 256)).cuda()
    x = torch.randint(0, 256, (32, 256), device='cuda')
    return model, lambda: torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())

lines = [f'# Gradient addresses from step to step with `set_to_none=True`: {torch.cuda.get_device_name()}', '',
         f'torch {torch.__version__}; `python3 bench/grad_addresses_gpu.py {" ".join(sys.argv[1:])}`; bf16 autocast, '
         f'fastoptim `Adam(..., triton=True, set_to_none=True)`, {args.steps} steps; each step\'s addresses numbered as a set '
         '(0 the first step\'s; a number seen before: the same addresses as that step).', '',
         '| model | tensors | address sets, step by step | distinct sets | steps replayed from the optimizer\'s graph |', '|---|---|---|---|---|']
for name, build in (('ResNet-50', resnet), ('transformer, 6 layers of 512', transformer)):
    torch.manual_seed(0)
    try: model, loss_of = build()
    except ImportError as e:
        lines.append(f'| {name} | not run: {e} | | | |')
        continue
    params = [p for p in model.parameters() if p.requires_grad]
    opt = Adam(params, lr=1e-3, triton=True, set_to_none=True)
    seen, sequence = {}, []
    for _ in range(args.steps):
        with torch.autocast('cuda', dtype=torch.bfloat16): loss = loss_of()
        loss.backward()
        addresses = tuple(p.grad.data_ptr() for p in params)
        sequence.append(seen.setdefault(addresses, len(seen)))
        opt.step()
        opt.zero_grad()
    torch.cuda.synchronize()
    lines.append(f'| {name} | {len(params)} | {" ".join(map(str, sequence))} | {len(seen)} | {opt.graph.replays} |')
    print(lines[-1], flush=True)
    del model, opt
open(args.out, 'w').write('\n'.join(lines) + '\n')
