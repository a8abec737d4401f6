"""Training throughput: a plain fp32 eager loop vs chatgot's pipeline, and what the safety callbacks cost.

python bench/train_speed.py [--repeats 3] [--steps 3] [--shapes 14m,baby] [--no-compile] [--no-old]
    -> prints a table, writes bench/results/train_speed.json
Per shape (14m: batch 64 x 256, vocab 8192; baby: batch 12 x 64, vocab 65), on the same random batches:
  plain:    nanoGPT's loop in fp32 eager: its GPT-2 block, `F.cross_entropy`, backward, clip, AdamW (foreach, not
            fused), zero_grad;
  bare:     the same loop with what `train()` runs by default (the preset's block, Muon for the hidden matrices and
            fused AdamW for the rest, `--precision auto`) and no callbacks;
  chatgot:  the Learner with every default callback of `train()` (`run_callbacks`: precision checks, micro-batch
            controller, loss trend, ETA, recorder, checkpoints; no progress bar);
  chatgot-old: chatgot with the previous recipe (`--arch gpt2 --optimizer adamw`);
  +compile: chatgot with `--compile` (CompileCallback: the training step through torch.compile), compile time
            excluded (reported apart).
Times are taken between the ends of consecutive optimizer steps (after a warm-up step), so evals and the
end-of-fit checkpoint are outside them. Variants alternate within a repeat; figures are medians over repeats.
speedup = tok/s / plain's; overhead = bare / chatgot - 1 (target at most 3 %).
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.data import TokenData, train_tokenizer
from chatgot.learner import Callback, Learner
from chatgot.model import GPT, preset_config
from chatgot.optim import make_optimizer
from chatgot.precision import autocast_for, resolve_precision
from chatgot.train import resolve_flags, run_callbacks

SHAPES = {'14m': dict(batch_size=64, seq_len=256, vocab=8192), 'baby': dict(batch_size=12, seq_len=64, vocab=65)}

def fake_data(vocab, n=400_000):
    "Random token ids under a char tokenizer big enough for `vocab` (speed does not depend on the text)"
    tok = train_tokenizer(''.join(chr(33 + i % 90) for i in range(2000)), kind='char')
    ids = np.random.default_rng(0).integers(0, min(vocab, tok.get_vocab_size()), n).astype(np.uint16)
    return TokenData(train=ids, val=ids[:40_000], train_bytes=n, val_bytes=40_000, tokenizer=tok, source='random')

def _rate(ends, B, T):
    "tok/s between the first and last step end"
    return B * T * (len(ends) - 1) / (ends[-1] - ends[0])

def loop(preset, B, T, V, steps, fast:bool):
    "plain (nanoGPT's GPT-2 block, fp32, foreach AdamW) or bare (train()'s block, optimizer and precision), no callbacks"
    torch.manual_seed(0)
    m = GPT(preset_config(preset, vocab_size=V, arch=None if fast else 'gpt2'))
    opt = (make_optimizer(m, resolve_flags(dict(preset=preset))['optimizer'], lr=1e-3) if fast
           else torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), foreach=True))
    ac = autocast_for(resolve_precision('auto', 'cpu') if fast else 'fp32', 'cpu')
    g = torch.Generator().manual_seed(0)
    ends = []
    for _ in range(steps + 1):
        x = torch.randint(0, V, (B, T + 1), generator=g)
        with ac:
            if fast: _, loss = m(x[:, :-1], x[:, 1:])
            else: loss = F.cross_entropy(m(x[:, :-1])[0].reshape(-1, V), x[:, 1:].reshape(-1))  # nanoGPT's loss, not ours
        loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return _rate(ends, B, T)

class StepEnds(Callback):
    order = 100
    def __init__(self): self.ends = []
    def after_step(self): self.ends.append(time.perf_counter())

def pipeline(preset, B, T, V, steps, compile:bool, **recipe):
    "The Learner as `train()` builds it (`recipe`: arch/optimizer flags); returns (tok/s, compile+warm-up seconds)"
    torch.manual_seed(0)
    data = fake_data(V)
    with tempfile.TemporaryDirectory() as d:
        f = resolve_flags(dict(preset=preset, batch_size=B, seq_len=T, save_every=0, eval_every=0, steps=steps + 1, compile=compile, **recipe))
        m = GPT(preset_config(preset, vocab_size=V, arch=f['arch']))
        cbs = run_callbacks(f, Path(d), config={}, quiet=True)
        for c in cbs:
            if type(c).__name__ == 'CheckpointCallback': c.handle_signals = False
        t = StepEnds()
        l = Learner(m, data, cbs=cbs + [t], lr=1e-3, optimizer=f['optimizer'], batch_size=B, seq_len=T, eval_batches=1, warmup=10, out=d)
        l.fit(steps + 1)
    return _rate(t.ends, B, T), t.ends[0] - t.ends[0]

def warm_compile(preset, B, T, V):
    "Seconds to compile and run one step (caches are warm for the timed runs after it)"
    t0 = time.perf_counter(); pipeline(preset, B, T, V, 1, True); return time.perf_counter() - t0

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=3); ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--shapes', default='14m,baby'); ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--no-old', action='store_true', help='leave out the previous recipe (chatgot-old)')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'train_speed.json'))
    a = ap.parse_args()
    res = dict(machine=describe(), precision=resolve_precision('auto', 'cpu'), rows=[])
    for name in a.shapes.split(','):
        s = SHAPES[name]; B, T, V = s['batch_size'], s['seq_len'], s['vocab']
        steps = a.steps if name == '14m' else a.steps * 40
        variants = {'plain': lambda: loop(name, B, T, V, steps, False), 'bare': lambda: loop(name, B, T, V, steps, True),
                    'chatgot': lambda: pipeline(name, B, T, V, steps, False)[0]}
        if not a.no_old: variants['chatgot-old'] = lambda: pipeline(name, B, T, V, steps, False, arch='gpt2', optimizer='adamw')[0]
        row = dict(shape=name, batch_size=B, seq_len=T, steps=steps, repeats=a.repeats)
        if not a.no_compile:
            row['compile_s'] = warm_compile(name, B, T, V)
            variants['chatgot+compile'] = lambda: pipeline(name, B, T, V, steps, True)[0]
        runs = {k: [] for k in variants}
        for _ in range(a.repeats):
            for k, f in variants.items(): runs[k].append(f())
        for k, v in runs.items(): row[f'{k}_tok_s'] = statistics.median(v)
        for k in variants:
            if k != 'plain': row[f'{k}_speedup'] = row[f'{k}_tok_s'] / row['plain_tok_s']
        row['callback_overhead_pct'] = 100 * (row['bare_tok_s'] / row['chatgot_tok_s'] - 1)
        res['rows'].append(row)
        print(f"{name:5s} B={B:3d} T={T:3d} | " + ' | '.join(f"{k} {row[f'{k}_tok_s']:7.0f} tok/s" +
              (f" ({row[f'{k}_speedup']:.2f}x)" if k != 'plain' else '') for k in variants) +
              f" | callbacks {row['callback_overhead_pct']:+.1f}%" + (f" | compile {row['compile_s']:.0f}s" if 'compile_s' in row else ''), flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
