"""Run every benchmark in bench/ one after another (they share the CPU badly) and list the results.

python bench/run.py [names...]  or  python -m bench [names...]   e.g. python -m bench train_speed memory precision
Each bench/<name>.py prints its own table and writes bench/results/<name>.json.
"""
import subprocess, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent

def main(names=None):
    names = names or sorted(p.stem for p in here.glob('*.py') if p.stem not in ('run', 'machine', '__init__', '__main__'))
    for n in names:
        print(f"== {n}", flush=True); t0 = time.time()
        r = subprocess.run([sys.executable, str(here/f'{n}.py')], cwd=here.parent)
        print(f"   ({n}: exit {r.returncode}, {time.time() - t0:.0f}s)", flush=True)

if __name__ == '__main__': main(sys.argv[1:])
