"""What each of `train()`'s callbacks costs per step: its own time in every event, summed.

python bench/callback_cost.py [--preset baby] [--steps 300] [--batch-size 12] [--seq-len 64]
    -> prints a table, writes bench/results/callback_cost.json
The Learner is built as `train()` builds it (`run_callbacks`, no progress bar, no evals or checkpoints inside the
run) on random tokens; `Learner.__call__` is wrapped to time each callback's handlers of the step's events
(not `before_fit`/`after_fit`, which run once). The step time is taken
between the ends of the first and last steps. Unlike `train_speed.py`'s bare-loop comparison this does not
depend on two runs meeting the same machine load, so it separates the callbacks' own cost from noise; it does not
see what the Learner itself adds (memory tracking, loss weighting), which `train_speed.py` does.
"""
import argparse, collections, json, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from bench.train_speed import StepEnds, fake_data
from chatgot.learner import Learner
from chatgot.model import GPT, preset_config
from chatgot.train import resolve_flags, run_callbacks

ONCE = ('before_fit', 'after_fit', 'finally_fit')  # not per step (the end-of-fit checkpoint would count)

def timed_call(spent):
    "A `Learner.__call__` that adds each handler's seconds to `spent[callback class name]`"
    def __call__(self, event):
        for cb in self.cbs:
            f = getattr(cb, event, None)
            if f is None: continue
            if event in ONCE: f(); continue
            t0 = time.perf_counter(); f(); spent[type(cb).__name__] += time.perf_counter() - t0
    return __call__

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='baby'); ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--batch-size', type=int, default=12); ap.add_argument('--seq-len', type=int, default=64)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'callback_cost.json'))
    a = ap.parse_args()
    V = 65 if a.preset == 'baby' else 8192
    spent = collections.Counter()
    Learner.__call__ = timed_call(spent)
    torch.manual_seed(0)
    m = GPT(preset_config(a.preset, vocab_size=V))
    with tempfile.TemporaryDirectory() as d:
        f = resolve_flags(dict(preset=a.preset, batch_size=a.batch_size, seq_len=a.seq_len, save_every=0, eval_every=0, steps=a.steps + 1))
        cbs = run_callbacks(f, Path(d), config={}, quiet=True)
        ends = StepEnds()
        l = Learner(m, fake_data(V), cbs=cbs + [ends], lr=1e-3, batch_size=a.batch_size, seq_len=a.seq_len,
                    eval_batches=1, warmup=10, out=d)
        l.fit(a.steps + 1)
    step_ms = 1000 * (ends.ends[-1] - ends.ends[0]) / a.steps
    rows = [dict(callback=k, ms_per_step=1000 * v / (a.steps + 1), pct_of_step=100 * 1000 * v / (a.steps + 1) / step_ms)
            for k, v in spent.most_common() if k != 'StepEnds']
    print(f"{a.preset} batch {a.batch_size} x {a.seq_len}, {a.steps} steps: {step_ms:.2f} ms per step")
    for r in rows: print(f"  {r['callback']:24s} {r['ms_per_step']:6.3f} ms  {r['pct_of_step']:5.2f} %")
    total = sum(r['pct_of_step'] for r in rows)
    print(f"  {'all callbacks':24s} {sum(r['ms_per_step'] for r in rows):6.3f} ms  {total:5.2f} %")
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=describe(), preset=a.preset, batch_size=a.batch_size, seq_len=a.seq_len,
                                   steps=a.steps, step_ms=step_ms, rows=rows, total_pct=total), indent=1))
    print('wrote', out)
