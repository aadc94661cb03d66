"Write README.md from nbs/index.ipynb without Quarto: markdown cells as they are, code cells as Python blocks."
import json, pathlib, re, sys

root = pathlib.Path(__file__).resolve().parent.parent

def render(nb_path):
    cells = json.loads(nb_path.read_text())['cells']
    out = ['<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n']
    for c in cells:
        src = ''.join(c['source']).strip()
        if not src or re.match(r'#\|\s*(hide|default_exp)', src): continue
        out.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    return '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    text = render(root / 'nbs' / 'index.ipynb')
    readme = root / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md differs from nbs/index.ipynb: run python tools/readme.py and commit.')
    else: readme.write_text(text)
