"Parameter shapes for the benchmarks: an LLM-like set and a ResNet-50-like set, built without torchvision."

def llm_shapes(vocab=32000, dim=2048, layers=16, hidden=5504):
    "Embedding and head, `layers` blocks of 4 attention matrices, 3 MLP matrices and 2 norms, a final norm: 147 tensors"
    shapes = [(vocab, dim)]
    for _ in range(layers):
        shapes += [(dim, dim)] * 4 + [(hidden, dim), (hidden, dim), (dim, hidden)] + [(dim,)] * 2
    return shapes + [(dim,), (vocab, dim)]

def resnet50_shapes(num_classes=1000):
    "The 161 parameter tensors of torchvision's ResNet-50 (25.6M parameters)"
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out = width * 4
            shapes += [(width, inplanes, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if b == 0: shapes += [(out, inplanes, 1, 1), (out,), (out,)]
            inplanes = out
    return shapes + [(num_classes, 2048), (num_classes,)]

if __name__ == '__main__':
    import math
    for name, s in (('llm', llm_shapes()), ('resnet50', resnet50_shapes())):
        print(name, len(s), 'tensors', f'{sum(math.prod(x) for x in s) / 1e6:.2f}M params')
