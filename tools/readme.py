"""README.md from nbs/index.ipynb without Quarto (see NOTEBOOKS.md).

`python tools/readme.py` rewrites README.md; `python tools/readme.py --check` fails if it drifted.
"""
import re, subprocess, sys
from pathlib import Path
import nbformat, yaml
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parents[1]

def render():
    subprocess.run(['nbdev-proc-nbs', '--file-glob', 'index.ipynb', '--n-workers', '0', '--force'],
                   check=True, cwd=root, capture_output=True)
    nb = nbformat.read(root/'_proc'/'index.ipynb', as_version=4)
    md, _ = MarkdownExporter().from_notebook_node(nb)
    fm = re.match(r'\A\s*---\n(.*?)\n---\n', md, flags=re.S)         # quarto front matter
    if fm:
        meta = yaml.safe_load(fm.group(1))
        head = f"# {meta.get('title', '')}\n\n> {meta.get('description', '')}\n"
        md = head + md[fm.end():]
    md = re.sub(r'\n{3,}', '\n\n', md).strip() + '\n'
    return md

if __name__ == '__main__':
    md, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != md:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `python tools/readme.py`')
    else: readme.write_text(md)
