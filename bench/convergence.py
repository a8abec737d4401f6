"""Time to a validation loss: nanoGPT's plain 2000-step `baby` run vs `chatgot train --preset baby`.

python bench/convergence.py [--data builtin:histories] [--repeats 1] [--steps 2000] [--ours-args '{"lr": 2e-3}']
                            [--also '{"arch": "gpt2", "optimizer": "adamw"}' ...]  (more chatgot runs, in the same run)
    -> prints a table, writes bench/results/convergence.json
plain:   nanoGPT's CPU recipe ("baby": 4 layers, 4 heads, width 128, context 64, batch 12, char tokens, 2000 iters,
         AdamW lr 1e-3 with beta2 0.99, warmup 100, cosine to 1e-4, clip 1.0, weight decay 0.1), fp32 eager, foreach
         AdamW, an eval of 20 batches every 250 iters as nanoGPT does, on chatgot's data pipeline and split.
chatgot: `train(preset='baby', data=...)` with its defaults (and `--ours-args` overrides), every default callback on.
Both final models are scored with the same evaluation (every window of the validation split, up to 200 batches of
64 x 64), and the wall time is the whole training run (evals and checkpoints included, data preparation not).
"""
import argparse, json, math, statistics, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.data import BatchSampler, eval_batches, prepare_data
from chatgot.learner import lr_at
from chatgot.model import GPT, preset_config
from chatgot.train import train

@torch.no_grad()
def val_loss(model, data, batches=None, B=64, T=64):
    "Token-weighted mean loss over the validation windows (the same for every model scored here)"
    model.eval(); tot = n = 0
    for x, y in eval_batches(data.val, B, T, max_batches=batches):
        _, loss = model(x, y); tot += float(loss) * y.numel(); n += y.numel()
    model.train(); return tot / n

def plain(data, steps, seed=0):
    torch.manual_seed(seed)
    m = GPT(preset_config('baby', vocab_size=data.vocab_size, arch='gpt2'))  # nanoGPT's block
    ps = [p for p in m.parameters()]
    opt = torch.optim.AdamW([dict(params=[p for p in ps if p.dim() >= 2], weight_decay=0.1),
                             dict(params=[p for p in ps if p.dim() < 2], weight_decay=0.0)], lr=1e-3, betas=(0.9, 0.99), foreach=True)
    s = BatchSampler(data.train, 12, 64, seed=seed)
    t0 = time.perf_counter()
    for it in range(steps):
        for g in opt.param_groups: g['lr'] = lr_at(it, 1e-3, steps, 100, 0.1)
        if it % 250 == 0: val_loss(m, data, batches=20, B=12)          # nanoGPT's periodic estimate
        x, y = s.next_batch()
        _, loss = m(x, y); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    return m, time.perf_counter() - t0

def ours(src, seed=0, **kw):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        l = train(out=Path(d)/'run', quiet=True, data=src, preset='baby', seed=seed, **kw)
        return l.model, time.perf_counter() - t0, l.step

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='builtin:histories'); ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--steps', type=int, default=2000); ap.add_argument('--ours-args', default='{}')
    ap.add_argument('--skip-plain', action='store_true')
    ap.add_argument('--also', nargs='*', default=[], help='JSON flags of further chatgot runs, measured in the same run')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'convergence.json'))
    a = ap.parse_args(); kw = json.loads(a.ours_args)
    data = prepare_data(a.data, tokenizer='char', seq_len=64)
    res = dict(machine=describe(), data=a.data, ours_args=kw, runs=[])
    for r in range(a.repeats):
        row = dict(repeat=r)
        if not a.skip_plain:
            m, t = plain(data, a.steps); row.update(plain_s=t, plain_val=val_loss(m, data, batches=200))
        m, t, n = ours(a.data, **kw); row.update(chatgot_s=t, chatgot_steps=n, chatgot_val=val_loss(m, data, batches=200))
        for i, extra in enumerate(a.also):
            m, t, n = ours(a.data, **json.loads(extra))
            row[f'also{i}'] = dict(args=json.loads(extra), s=t, steps=n, val=val_loss(m, data, batches=200))
            if 'plain_s' in row: row[f'also{i}']['time_ratio'] = t / row['plain_s']
        res['runs'].append(row); print(row, flush=True)
    for k in ('plain_s', 'plain_val', 'chatgot_s', 'chatgot_val'):
        if k in res['runs'][0]: res[k] = statistics.median(r[k] for r in res['runs'])
    if 'plain_s' in res:
        res['time_ratio'] = res['chatgot_s'] / res['plain_s']
        print(f"plain {a.steps} steps: val {res['plain_val']:.4f} in {res['plain_s']:.0f}s | chatgot: val {res['chatgot_val']:.4f} "
              f"in {res['chatgot_s']:.0f}s ({res['time_ratio']:.2f}x the time)")
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
