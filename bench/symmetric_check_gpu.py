"""GPU check of `fastoptim.symmetric` at the launches the interpreter does not compile: bf16, fp16 and fp32 (each at its
default stages), contiguous, transposed, rows apart by more than their length, a size-1 dimension with an odd
stride, with the addend and shift, against torch in fp64; `polynomial_product` against torch's form; and AOL's start
(`aol_rescale`) and the scaled matrices of the default start against torch's form; the whole iteration, both starts, by
the kernels against torch's products; the product of two commuting symmetric matrices (`commuting_product`) and the
iteration in its Gram form (`gram_form=True`, fp16), wide and tall, both starts, by the kernels against torch's products
and against the quintic's bf16 error. Prints one
line per case and the number of failures.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/symmetric_check_gpu.py
"""
import torch
from fastoptim.symmetric import symmetric_product, polynomial_product, commuting_product, symmetric_tiles, aol_rescale, aol_by_torch, scaled_matrices, frobenius_normalized

dev, g = torch.device('cuda'), torch.Generator(device='cuda').manual_seed(0)
failures = 0
def report(name, err, bound, measure='max diff / max'):
    global failures
    failures += not err <= bound
    print(f"{name}: {measure} {err:.2e} ({'ok' if err <= bound else 'FAILED'}, bound {bound:.0e})", flush=True)
def report_symmetric(name, t):
    global failures
    if not torch.equal(t, t.mT):
        failures += 1
        print(f"{name}: FAILED, not exactly symmetric", flush=True)

for dtype, bound in ((torch.bfloat16, 8e-3), (torch.float16, 1e-3), (torch.float32, 1e-5)):
    base = torch.randn(4, 264, 520, device=dev, generator=g)
    sym = torch.randn(4, 264, 264, device=dev, generator=g); sym = sym + sym.mT
    for name, y, kw in (('contiguous', base[:, :256, :512], {}),  # rows apart by 520: not contiguous, rows contiguous
                        ('transposed', torch.randn(3, 384, 256, device=dev, generator=g).mT, {}),
                        ('addend and shift', base[:, :256, :512].contiguous(), dict(alpha=2.0315, addend=sym[:, :256, :256].contiguous(), beta=-4.775, shift=3.4445)),
                        ('size-1 dimension', torch.randn(64, 32, 1, device=dev, generator=g).permute(2, 0, 1), {}),
                        ('m = 200, n = 72', base[:, :200, :72].contiguous(), {})):
        y = y.to(dtype)
        kw = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kw.items()}
        got = symmetric_product(y, **kw).double()
        yd = y.double()
        exact = kw.get('alpha', 1.) * yd @ yd.mT
        if 'addend' in kw: exact = exact + kw['beta'] * kw['addend'].double() + kw['shift'] * torch.eye(y.shape[1], device=dev, dtype=torch.float64)
        report(f"{str(dtype)[6:]} {name} {tuple(y.shape)}", ((got - exact).abs().max() / exact.abs().max()).item(), bound)
        report_symmetric(f"{str(dtype)[6:]} {name} {tuple(y.shape)}", got)

x = torch.randn(8, 2048, 4096, device=dev, generator=g).bfloat16() / 100
A = torch.bmm(x, x.mT)
assert symmetric_tiles(A)
exact = torch.baddbmm(x.double(), torch.baddbmm(A.double(), A.double(), A.double(), beta=-4.775, alpha=2.0315), x.double(), beta=3.4445)
got = polynomial_product(x, A, 3.4445, -4.775, 2.0315).double()
report('polynomial_product, bf16 (8, 2048, 4096), upper tiles', ((got - exact).abs().max() / exact.abs().max()).item(), 2e-2)
for dtype, ulps in ((torch.bfloat16, 2 ** -7), (torch.float32, 2 ** -20)):  # AOL's start: the kernels against torch's form
    for name, x in (('wide', torch.randn(8, 512, 1376, device=dev, generator=g)), ('tall, transposed', torch.randn(8, 1376, 512, device=dev, generator=g).mT)):
        x = x.to(dtype)
        A = torch.bmm(x, x.mT)
        ys, As = aol_by_torch(x, A)
        y = aol_rescale(x, A)
        for part, got, expected in (('diag(s)·X', y, ys), ('diag(s)·A·diag(s)', A, As)):
            err = ((got.double() - expected.double()).abs() / expected.double().abs().clamp(min=1e-30)).max().item()
            same = (got == expected).float().mean().item()
            report(f"aol_rescale {str(dtype)[6:]} {name} {part} against torch's form (same bits: {same:.4f})", err, ulps, 'max |diff| / |value|')
            if part != 'diag(s)·X': report_symmetric(f"aol_rescale {str(dtype)[6:]} {name} {part}", got)
            if dtype == torch.bfloat16 and same < 0.98:
                failures += 1
                print(f"aol_rescale {str(dtype)[6:]} {name} {part}: FAILED, {same:.4f} of the values the same bits (at least 0.98)", flush=True)
for dtype in (torch.bfloat16, torch.float32):  # the iteration's start: each matrix times its scale, against torch's form, bit for bit
    for name, x in (('wide', torch.randn(8, 512, 1376, device=dev, generator=g)), ('tall, transposed', torch.randn(8, 1376, 512, device=dev, generator=g).mT)):
        x = x.to(dtype)
        s = torch.linalg.vector_norm(x, dim=(-2, -1), dtype=torch.float32).reciprocal_()
        same = torch.equal(scaled_matrices(x, s), (x * s[:, None, None]).to(dtype))
        failures += not same
        print(f"scaled_matrices {str(dtype)[6:]} {name}: {'the same bits as torch' if same else 'FAILED: not the bits of torch'}", flush=True)
x = torch.randn(16, 2048, 4096, device=dev, generator=g).bfloat16()
assert symmetric_tiles(x)
report('frobenius_normalized, bf16 (16, 2048, 4096), against x / ‖x‖ in fp64', ((frobenius_normalized(x).double() - x.double() / torch.linalg.vector_norm(x.double(), dim=(-2, -1), keepdim=True)).abs().max()
                                                    / (x.double() / torch.linalg.vector_norm(x.double(), dim=(-2, -1), keepdim=True)).abs().max()).item(), 2 ** -8)
import math, fastoptim.symmetric as symmetric  # the iteration by the kernels against the same iteration by torch's products and operations
from fastoptim.muon import newton_schulz, gram_newton_schulz
for aol, steps in ((False, 5), (True, 4)):
    for name, x in (('wide', torch.randn(8, 2048, 4096, device=dev, generator=g)), ('tall', torch.randn(8, 4096, 2048, device=dev, generator=g))):
        x = x.bfloat16()
        least, symmetric.min_tiled_work = symmetric.min_tiled_work, math.inf
        try: by_torch = newton_schulz(x.clone(), steps=steps, aol=aol).double()
        finally: symmetric.min_tiled_work = least
        by_kernels = newton_schulz(x.clone(), steps=steps, aol=aol).double()
        exact = newton_schulz(x.double(), steps=steps, aol=aol)  # fp64: torch's products and operations
        error = lambda got: ((got - exact).abs().max() / exact.abs().max()).item()
        report(f"newton_schulz(aol={aol}), bf16 {name} {tuple(x.shape)}, by the kernels against fp64 (by torch's products: {error(by_torch):.2e})",
               error(by_kernels), 1.5 * error(by_torch) + 1e-3)
for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):  # two commuting symmetric matrices: polynomials of one
    a = torch.randn(16, 2048, 2048, device=dev, generator=g, dtype=torch.float64)
    a = (a + a.mT) / 200
    p, q = 3.4445 * torch.eye(2048, device=dev, dtype=torch.float64) - 4.775 * a + 2.0315 * a @ a, a - 0.5 * a @ a
    p16, q16 = p.to(dtype), q.to(dtype)
    assert symmetric_tiles(p16)
    got = commuting_product(p16, q16)
    exact = p16.double() @ q16.double()
    report(f"commuting_product {str(dtype)[6:]} {tuple(p16.shape)} against fp64 (torch's bmm: "
           f"{((torch.bmm(p16, q16).double() - exact).abs().max() / exact.abs().max()).item():.2e})", ((got.double() - exact).abs().max() / exact.abs().max()).item(), bound)
    report_symmetric(f"commuting_product {str(dtype)[6:]}", got)
for aol, steps in ((False, 5), (True, 4)):  # the Gram form: by the kernels against torch's products, and against the quintic in bf16
    for name, x in (('wide', torch.randn(8, 2048, 5504, device=dev, generator=g)), ('tall', torch.randn(8, 5504, 2048, device=dev, generator=g))):
        x = x.bfloat16()
        least, symmetric.min_tiled_work = symmetric.min_tiled_work, math.inf  # torch's products: called directly, as newton_schulz
        try: by_torch = gram_newton_schulz(x.clone(), steps=steps, aol=aol).double()  # would take the quintic for them
        finally: symmetric.min_tiled_work = least
        by_kernels = newton_schulz(x.clone(), steps=steps, aol=aol, gram_form=True).double()
        quintic = newton_schulz(x.clone(), steps=steps, aol=aol).double()
        exact = newton_schulz(x.double(), steps=steps, aol=aol)
        error = lambda got: ((got - exact).norm() / exact.norm()).item()
        report(f"newton_schulz(aol={aol}, gram_form=True), bf16 {name} {tuple(x.shape)}, by the kernels against fp64 (by torch's products: "
               f"{error(by_torch):.2e}; the quintic in bf16 by the kernels: {error(quintic):.2e})", error(by_kernels), min(1.5 * error(by_torch), error(quintic)), '‖diff‖ / ‖fp64‖')
print(f"{failures} failed", flush=True)
