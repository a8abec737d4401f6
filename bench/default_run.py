"""The default `chatgot train` (preset 14m on builtin:shakespeare): val bits/byte of recipes at their own step counts.

python bench/default_run.py [--runs '[{"name": "new", "steps": 300}, {"name": "old", "steps": 600, "arch": "gpt2", "optimizer": "adamw"}]']
                            [--keep DIR]   (keep each run folder under DIR, for the notebook's samples)
    -> prints a table, writes bench/results/default_run.json
Each run is `train(**flags)` with the defaults plus its overrides; it records every eval row (step, val loss, val
bits/byte), the summed optimizer-step time (`step_time_s` of metrics.jsonl, evals and checkpoints excluded), the
whole wall time, and 3 samples of the best checkpoint at temperature 0.8 from one fixed prompt. Runs go one after
another: on a loaded machine their wall times are not comparable, their losses per step are (the step time of each
recipe is measured apart, on an idle machine: `--time-only`).
python bench/default_run.py --time-only [--steps 20]  -> the median step time of each run's recipe, runs interleaved
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.train import train

PROMPT = "ROMEO:\n"

def rows(run):
    return [json.loads(l) for l in (Path(run)/'metrics.jsonl').read_text().splitlines() if l.strip()]

def samples(run, n=3):
    from chatgot.checkpoint import load_for_inference
    from chatgot.generate import generate_text
    model, tok, meta = load_for_inference(run)
    return meta['path'], generate_text(model, tok, [PROMPT] * n, max_new_tokens=120, temperature=0.8, seed=0)

def one(spec, root):
    spec = dict(spec); name = spec.pop('name')
    out = Path(root)/name
    t0 = time.perf_counter()
    learn = train(out=str(out), **spec)
    wall = time.perf_counter() - t0
    rs = rows(out)
    steps = [r for r in rs if r.get('kind') == 'step']
    evals = [dict(step=r['step'], val_loss=r['val_loss'], val_bpb=r['val_bpb']) for r in rs if r.get('kind') == 'eval']
    ck, ss = samples(out)
    return dict(name=name, flags=spec, steps=learn.step, wall_s=wall,
                step_time_s=sum(r['step_time_s'] for r in steps) * (steps[-1]['step'] / len(steps) if steps else 0),
                evals=evals, final_bpb=evals[-1]['val_bpb'] if evals else None, best_checkpoint=ck, samples=ss)

def time_only(runs, steps, root):
    "Median seconds per optimizer step of each run's recipe: short runs, interleaved 3 times"
    times = {r['name']: [] for r in runs}
    for rep in range(3):
        for r in runs:
            spec = {k: v for k, v in r.items() if k != 'name'}
            out = Path(root)/f"{r['name']}-t{rep}"
            train(out=str(out), quiet=True, **{**spec, 'steps': steps, 'eval_every': 0, 'save_every': 0})
            st = [x['step_time_s'] for x in rows(out) if x.get('kind') == 'step'][1:]  # the first row holds the warm-up step
            times[r['name']].append(statistics.median(st))
    return {k: statistics.median(v) for k, v in times.items()}

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', default='[{"name": "new", "steps": 300}, {"name": "old", "steps": 600, "arch": "gpt2", "optimizer": "adamw"}]')
    ap.add_argument('--keep', default=None)
    ap.add_argument('--time-only', action='store_true')
    ap.add_argument('--steps', type=int, default=20)
    a = ap.parse_args()
    runs = json.loads(a.runs)
    root = a.keep or tempfile.mkdtemp()
    res_path = Path(__file__).parent/'results'/('default_run_time.json' if a.time_only else 'default_run.json')
    cmd = 'python bench/default_run.py ' + ' '.join(sys.argv[1:])
    if a.time_only:
        res = dict(command=cmd, machine=describe(), seconds_per_step=time_only(runs, a.steps, root))
        print(res['seconds_per_step'])
    else:
        done = []
        for spec in runs:
            done.append(one(spec, root))
            res = dict(command=cmd, machine=describe(), runs=done)
            res_path.write_text(json.dumps(res, indent=1))  # after each run: a stopped benchmark keeps what it measured
            r = done[-1]
            print(f"{r['name']}: {r['steps']} steps, val bpb " + ', '.join(f"{e['step']}: {e['val_bpb']:.3f}" for e in r['evals']) +
                  f"; steps {r['step_time_s']:.0f} s, wall {r['wall_s']:.0f} s", flush=True)
    res_path.write_text(json.dumps(res, indent=1))
