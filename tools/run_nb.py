"""Execute notebooks and keep their outputs (the docs and the repo show them).

Usage: python tools/run_nb.py nbs/00_data.ipynb [more.ipynb ...]
Runs like `nbdev-test` (cells flagged `#| eval: false` and `#| cuda` are skipped) but also
runs `#| slow` cells (it sets CHATGOT_SLOW=1), and saves the outputs into the notebook. Run `nbdev-clean` after.
"""
import os, sys, time
from pathlib import Path
from nbdev.test import test_nb

os.environ['CHATGOT_SLOW'] = '1'  # skip_slow_cells() in a notebook lets them run
root = Path(__file__).resolve().parents[1]
for p in sys.argv[1:]:
    t0 = time.time()
    ok, _ = test_nb(Path(p).resolve(), skip_flags=["notest", "cuda"], basepath=root, save=True, cell_timeout=3 * 3600)  # a validation run takes as long as it takes
    print(f"{Path(p).name}: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f}s", flush=True)
    if not ok: sys.exit(1)
