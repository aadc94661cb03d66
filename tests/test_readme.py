"""README.md's Python blocks, run as written and in order in one fresh Python process (no TRITON_INTERPRET, as a
reader would paste them). Blocks that begin `# On a CUDA GPU` run only where CUDA is available."""
import os, re, subprocess, sys
from pathlib import Path
import torch

REPO = Path(__file__).resolve().parents[1]


def python_blocks(text):
    return re.findall(r'^```python\n(.*?)^```', text, flags=re.M | re.S)


def test_readme_blocks_run(tmp_path):
    blocks = python_blocks((REPO / 'README.md').read_text())
    assert len(blocks) >= 3, "the README's Quick start and plain-loop examples are missing"
    runnable = [b for b in blocks if torch.cuda.is_available() or not b.startswith('# On a CUDA GPU')]
    check = "\nprint('README accuracy', float(learn.recorder.values[-1][-1]))\n"
    script = tmp_path / 'readme.py'
    script.write_text('\n'.join(runnable) + check)
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    accuracy = float(re.search(r'README accuracy ([0-9.]+)', run.stdout).group(1))
    assert accuracy > 0.9, run.stdout[-2000:]  # the quick start learns its toy problem
