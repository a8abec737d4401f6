"""Memory: gradient checkpointing on/off (peak memory, step time) and the cost of an OOM-and-retry step.

python bench/memory.py [--repeats 5] [--batch-size 8]   -> prints two tables, writes bench/results/memory.json
Targets (issue 4): checkpointing saves at least 50 % of the activation memory for at most 35 % more step
time, for `14m` at T=128 and T=256; one OOM-and-retry step costs at most twice a normal step.

1. `bench/step_memory.measure_step` runs each configuration in a fresh process: peak memory of a forward/backward
   above the model's own (CUDA allocator peak, or the CPU's VmHWM with large blocks given back to the system,
   `MALLOC_MMAP_THRESHOLD_`, which also makes its CPU times slower than real training's). The time that is
   compared with the target is the median optimizer step of a Learner with the normal allocator, over
   `--repeats` steps after an untimed one; measure_step's forward/backward times are kept in the JSON too.
2. A `14m` Learner with the `MicroBatchController` times each optimizer step. In chosen steps `InjectOOM`
   fails the full micro-batch, either at the end of the forward pass (last block) or late in backward (the
   first block's gradient, nearly a whole forward and backward wasted); the controller halves and the
   learner redoes the step, freeing memory in between (`gc.collect`, cache release). The step is compared
   with the median full-batch step, the median step at half the micro-batch, and a bare `gc.collect()`.
"""
import argparse, gc, json, statistics, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.batch_size import MicroBatchController
from chatgot.test_utils import InjectOOM
from chatgot.data import TokenData, token_bytes, train_tokenizer
from chatgot.grad_ckpt import set_gradient_checkpointing
from bench.step_memory import measure_step
from chatgot.learner import Callback, Learner
from chatgot.model import GPT, preset_config
from chatgot.train import resolve_flags

def learner_step_s(preset, batch_size, seq_len, grad_checkpoint, repeats, device):
    "Median time of a whole optimizer step (forward, backward, clip, `train()`'s optimizer) of a Learner"
    torch.manual_seed(0)
    vocab = preset_config(preset, vocab_size=8192).vocab_size
    m = GPT(preset_config(preset, vocab_size=vocab)); set_gradient_checkpointing(m, grad_checkpoint)
    l = Learner(m, fake_data(vocab), cbs=[StepTimer()], batch_size=batch_size, seq_len=seq_len, eval_batches=1, device=device,
                optimizer=resolve_flags(dict(preset=preset))['optimizer'])  # `train()`'s optimizer
    l.fit(1); l.step_timer.rows.clear()  # warm-up, not timed
    l.fit(1 + repeats)
    return statistics.median(dt for _, _, dt in l.step_timer.rows)

def grad_ckpt_rows(preset, batch_size, seq_lens, repeats, device):
    rows = []
    for T in seq_lens:
        off, on = (measure_step(preset, T, batch_size, grad_checkpoint=g, steps=repeats + 1, device=device) for g in (False, True))
        row = dict(seq_len=T, batch_size=batch_size, peak_off=off['peak_bytes'], peak_on=on['peak_bytes'],
                   act_off=off['act_bytes'], act_on=on['act_bytes'], fwd_bwd_off_s=off['step_s'], fwd_bwd_on_s=on['step_s'],
                   step_off_s=learner_step_s(preset, batch_size, T, False, repeats, device),
                   step_on_s=learner_step_s(preset, batch_size, T, True, repeats, device))
        row['act_saving_pct'] = 100 * (1 - row['act_on'] / row['act_off'])
        row['time_cost_pct'] = 100 * (row['step_on_s'] / row['step_off_s'] - 1)
        rows.append(row)
        print(f"T={T:3d} B={batch_size}  peak {row['peak_off']/2**20:7.0f} -> {row['peak_on']/2**20:7.0f} MiB   activations "
              f"{row['act_off']/2**20:7.0f} -> {row['act_on']/2**20:7.0f} MiB ({row['act_saving_pct']:+.0f}% saved, target >= 50%)   "
              f"step {row['step_off_s']:.3f} -> {row['step_on_s']:.3f} s ({row['time_cost_pct']:+.0f}%, target <= 35%)", flush=True)
    return rows

def fake_data(vocab, n=200_000):
    tok = train_tokenizer(''.join(chr(33 + i % 90) for i in range(2000)), kind='char')
    ids = np.random.default_rng(0).integers(0, min(vocab, tok.get_vocab_size()), n).astype(np.uint16)
    return TokenData(train=ids, val=ids[:20000], train_bytes=n, val_bytes=20000, tokenizer=tok, source='random')

class StepTimer(Callback):
    "Wall time of each step (after a device sync), with the micro-batch it started at"
    order = -100
    def __init__(self): self.rows = []
    def before_step(self): self.t0, self.mb0 = time.perf_counter(), self.micro_batch_size
    def after_step(self):
        if self.device.type == 'cuda': torch.cuda.synchronize(self.device)
        self.rows.append((self.step, self.mb0, time.perf_counter() - self.t0))

class BackToFull(Callback):
    "Before each OOM step, put the controller back at the full batch and forget the failure (no back-off here)"
    def __init__(self, at): self.at = at
    def before_step(self):
        c = self.learn.micro_batch_controller
        if self.step + 1 in self.at: c.failed.clear(); c.current = self.learn.micro_batch_size = self.batch_size

def oom_cost(preset, batch_size, seq_len, repeats, where, block, device):
    "Median step times: full batch, half micro-batch, and OOM at full then redone at half"
    k = 3  # normal steps at each size between OOM steps
    period = 2 * k + 1
    at = {k + 1 + i * period for i in range(repeats)}  # steps (from 1) that get an OOM
    torch.manual_seed(0)
    vocab = preset_config(preset, vocab_size=8192).vocab_size
    l = Learner(GPT(preset_config(preset, vocab_size=vocab)), fake_data(vocab), batch_size=batch_size, seq_len=seq_len,
                eval_batches=1, device=device, optimizer=resolve_flags(dict(preset=preset))['optimizer'],
                cbs=[StepTimer(), BackToFull(at), InjectOOM(batch_size // 2, steps=at, where=where, block=block),
                     MicroBatchController(stable_steps=k, verbose=False)])
    l.fit(1)  # warm-up, not timed
    l.step_timer.rows.clear()
    l.fit(1 + repeats * period)
    rows = [r for r in l.step_timer.rows if r[0] > 2]  # skip the step right after the warm-up
    oom = [dt for s, _, dt in rows if s in at]
    full = [dt for s, mb, dt in rows if s not in at and mb == batch_size]
    half = [dt for s, mb, dt in rows if s not in at and mb == batch_size // 2]
    t = time.perf_counter(); gc.collect(); gc_s = time.perf_counter() - t
    assert l.micro_batch_controller.n_oom == repeats and l.step == 1 + repeats * period
    return dict(where=where, block=block, seq_len=seq_len, batch_size=batch_size, n_oom=len(oom),
                full_s=statistics.median(full), half_s=statistics.median(half), oom_s=statistics.median(oom), gc_collect_s=gc_s,
                oom_over_full=statistics.median(oom) / statistics.median(full))

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--seq-lens', default='128,256'); ap.add_argument('--preset', default='14m')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'memory.json'))
    a = ap.parse_args()
    seq_lens = [int(t) for t in a.seq_lens.split(',')]
    res = dict(machine=describe(), preset=a.preset, device=a.device)
    print(f"== gradient checkpointing, {a.preset}, {a.device}", flush=True)
    res['grad_ckpt'] = grad_ckpt_rows(a.preset, a.batch_size, seq_lens, a.repeats, a.device)
    print(f"== one OOM-and-retry step vs a normal step, {a.preset} B={a.batch_size} T={seq_lens[0]}, {a.device}", flush=True)
    res['oom_retry'] = []
    for where, block in (('forward', -1), ('backward', 0)):
        r = oom_cost(a.preset, a.batch_size, seq_lens[0], a.repeats, where, block, a.device)
        res['oom_retry'].append(r)
        print(f"OOM in {where:8s} (block {block:2d}): full-batch step {r['full_s']:.3f} s, at half micro-batch {r['half_s']:.3f} s, "
              f"OOM + redo {r['oom_s']:.3f} s = {r['oom_over_full']:.2f}x a normal step (target <= 2x); gc.collect {r['gc_collect_s']*1e3:.0f} ms", flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
