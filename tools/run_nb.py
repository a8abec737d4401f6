"""Execute notebooks in place and keep their outputs (the docs show them).

Usage: python tools/run_nb.py nbs/00_data.ipynb [more.ipynb ...]
Runs every cell (slow ones too) with the project root on sys.path and `nbs/` as the
working directory, like `nbdev-test`; stops at the first error. Run `nbdev-clean` after.
"""
import os, sys, time
from pathlib import Path
from execnb.shell import CaptureShell

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
for p in sys.argv[1:]:
    p = Path(p).resolve()
    t0 = time.time()
    os.chdir(p.parent)
    sh = CaptureShell()
    sh.execute(p, p, exc_stop=True)
    print(f"{p.name}: ran in {time.time()-t0:.0f}s", flush=True)
