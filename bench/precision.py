"""Mixed precision on the 14m model: step time per precision, and what the safety checks cost.

python bench/precision.py [--repeats 5] [--steps 4] [--batch-size 16] [--seq-len 128] [--device cpu] [--threads N]
    -> prints a table, writes bench/results/precision.json
For each precision the device's autocast supports, two Learners train the same model on the same batches:
  plain: the torch.amp recipe as a small callback: `torch.autocast`, and in fp16 a `torch.amp.GradScaler`
         (scale, `unscale_` before clipping, `scaler.step`, `scaler.update`), nothing else;
  safe:  `MixedPrecision` (SafeGradScaler: loss and gradient checks kept on the device, hysteresis, the
         fallback rule, events read at log intervals), as `train()` runs it.
Each run builds its Learner afresh, trains one warm-up step, then `--steps` timed steps (no evaluation inside the
timed window; on CUDA one synchronize at each end of it). The two variants alternate within each repeat so
drifting machine load hits both alike. Figures are medians over repeats; overhead = safe / plain - 1 (target: at
most 3%). First every precision trains one probe step; one whose probe takes over 5x fp32's (fp16 on a CPU without
native fp16) is timed with one step, at most 3 repeats and the safe variant only: its step time is what matters
there, not a 3% overhead.
"""
import argparse, json, statistics, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from bench.train_speed import fake_data
from chatgot.learner import Callback, CancelStepException, Learner
from chatgot.model import GPT, preset_config
from chatgot.train import resolve_flags
from chatgot.optim import cpu_bf16
from chatgot.precision import MixedPrecision, autocast_for, autocast_works

class PlainAmp(Callback):
    "The torch.amp recipe: autocast, and in fp16 a GradScaler that scales, unscales before clipping, steps and updates"
    order = -5
    def __init__(self, precision): self.p = precision
    def before_fit(self):
        self.learn.precision, self.learn.autocast = self.p, autocast_for(self.p, self.device)
        if not hasattr(self, 'scaler'): self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.p == 'fp16')
        for o in getattr(self.opt, 'opts', (self.opt,)):  # as `MixedPrecision` does: fp32 means fp32 in Muon's step too
            if hasattr(o, 'fp32_on_cpu'): o.fp32_on_cpu = self.p == 'fp32' or not cpu_bf16()
    def before_backward(self): self.learn.loss_grad = self.scaler.scale(self.loss_grad)
    def before_clip(self): self.scaler.unscale_(self.opt)
    def before_opt_step(self):
        if not self.scaler.is_enabled(): return  # the Learner's own opt.step() runs
        self.scaler.step(self.opt); self.scaler.update()
        raise CancelStepException()  # the update is done: skip the Learner's opt.step()

class StepTimer(Callback):
    "Wall clock at the end of the warm-up step and of the last step"
    order = 1000
    def __init__(self): self.t = {}
    def after_step(self):
        if self.step == 1 or self.step == self.n_steps:
            if self.device.type == 'cuda': torch.cuda.synchronize(self.device)
            self.t[self.step] = time.perf_counter()

def run(variant, precision, data, B, T, steps, device):
    "Seconds per step over `steps` steps after a warm-up step, and the warm-up step's seconds"
    torch.manual_seed(0)
    m = GPT(preset_config('14m', vocab_size=8192))
    cb = MixedPrecision(precision, verbose=False) if variant == 'safe' else PlainAmp(precision)
    l = Learner(m, data, cbs=[cb, StepTimer()], batch_size=B, seq_len=T, eval_batches=1, total_steps=1 + steps, device=device,
                optimizer=resolve_flags(dict(preset='14m'))['optimizer'])  # `train()`'s optimizer (Muon for the hidden matrices)
    t0 = time.perf_counter(); l.fit(1); warm = l.step_timer.t[1] - t0
    if not steps: return None, warm
    l.fit(1 + steps)
    return (l.step_timer.t[1 + steps] - l.step_timer.t[1]) / steps, warm

def main(a):
    if a.threads: torch.set_num_threads(a.threads)
    data = fake_data(8192)
    precs = [p for p in ('fp32', 'bf16', 'fp16') if autocast_works(a.device, p)]
    res = dict(machine=describe(), batch_size=a.batch_size, seq_len=a.seq_len, device=a.device, repeats=a.repeats,
               steps=a.steps, rows=[])
    probe = {p: run('safe', p, data, a.batch_size, a.seq_len, 0, a.device)[1] for p in precs}  # one step each, untimed below
    for p in precs:
        reduced = probe[p] > 5 * probe['fp32']
        reps, steps, variants = (min(a.repeats, 3), 1, ('safe',)) if reduced else (a.repeats, a.steps, ('plain', 'safe'))
        t = {'plain': [], 'safe': []}
        for r in range(reps):
            for v in (variants if r % 2 == 0 else variants[::-1]): t[v].append(run(v, p, data, a.batch_size, a.seq_len, steps, a.device)[0])
        row = dict(precision=p, safe_s=statistics.median(t['safe']), safe_runs=t['safe'], plain_runs=t['plain'],
                   first_step_s=probe[p], reduced=reduced)
        row['tok_per_s'] = a.batch_size * a.seq_len / row['safe_s']
        if t['plain']:
            row['plain_s'] = statistics.median(t['plain'])
            row['overhead_pct'] = 100 * (row['safe_s'] / row['plain_s'] - 1)
        res['rows'].append(row)
    base = next(r['safe_s'] for r in res['rows'] if r['precision'] == 'fp32')
    print(f"14m, batch {a.batch_size} x {a.seq_len} tokens, {a.device}, {torch.get_num_threads()} threads, medians of {a.repeats} repeats "
          f"x {a.steps} steps (load average {res['machine'].get('load_avg_1m', float('nan')):.1f})")
    print(f"{'precision':9s} {'s/step':>8s} {'tok/s':>8s} {'vs fp32':>8s} {'plain s':>8s} {'overhead':>9s}")
    for r in res['rows']:
        r['vs_fp32'] = r['safe_s'] / base
        plain = f"{r['plain_s']:8.3f} {r['overhead_pct']:+8.1f}%" if 'plain_s' in r else f"{'-':>8s} {'-':>9s}"
        print(f"{r['precision']:9s} {r['safe_s']:8.3f} {r['tok_per_s']:8.0f} {r['vs_fp32']:7.2f}x {plain}"
              + ('   (slow here: 1 step, safe only)' if r['reduced'] else ''), flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--batch-size', type=int, default=16); ap.add_argument('--seq-len', type=int, default=128)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'precision.json'))
    main(ap.parse_args())
