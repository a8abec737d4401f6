"""Training throughput: a plain fp32 eager loop vs the Learner with its default callbacks.

python bench/train_speed.py [--repeats 5] [--steps 8]   -> prints a table, writes bench/results/train_speed.json
The plain loop is nanoGPT's: forward, backward, clip, AdamW step. The Learner adds micro-batch
accounting, the schedule, the Recorder (device-side metrics flushed every 10 steps) and the
checkpoint callback (not saving inside the timed window). Each figure is the median over repeats.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.data import TokenData, train_tokenizer, token_bytes
from chatgot.learner import Learner
from chatgot.checkpoint import CheckpointCallback
from chatgot.model import GPT, preset_config

SHAPES = {'baby': dict(batch_size=12, seq_len=64, vocab=65), '14m': dict(batch_size=64, seq_len=256, vocab=8192)}

def fake_data(vocab, n=200_000):
    tok = train_tokenizer(''.join(chr(33 + i % 90) for i in range(2000)), kind='char')
    ids = np.random.default_rng(0).integers(0, min(vocab, tok.get_vocab_size()), n).astype(np.uint16)
    return TokenData(train=ids, val=ids[:20000], train_bytes=n, val_bytes=20000, tokenizer=tok, source='random')

def plain(preset, B, T, vocab, steps):
    torch.manual_seed(0)
    m = GPT(preset_config(preset, vocab_size=vocab)); opt = m.configure_optimizer(1e-3)
    x = torch.randint(0, vocab, (B, T + 1))
    def step():
        _, loss = m(x[:, :-1], x[:, 1:]); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return B * T * steps / (time.perf_counter() - t0)

def learner(preset, B, T, vocab, steps):
    torch.manual_seed(0)
    data = fake_data(vocab)
    m = GPT(preset_config(preset, vocab_size=vocab))
    with tempfile.TemporaryDirectory() as d:
        l = Learner(m, data, cbs=[CheckpointCallback(Path(d)/'ck', save_every=0, handle_signals=False)],
                    batch_size=B, seq_len=T, eval_batches=1, out=d)
        l.fit(1)  # warm-up
        t0 = time.perf_counter(); l.fit(1 + steps); dt = time.perf_counter() - t0
    return B * T * steps / dt

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--steps', type=int, default=8)
    ap.add_argument('--shapes', default='baby,14m'); a = ap.parse_args()
    res = dict(machine=describe(), rows=[])
    for name in a.shapes.split(','):
        s = SHAPES[name]; B, T, V = s['batch_size'], s['seq_len'], s['vocab']
        steps = a.steps if name == '14m' else a.steps * 20
        p = [plain(name, B, T, V, steps) for _ in range(a.repeats)]
        l = [learner(name, B, T, V, steps) for _ in range(a.repeats)]
        row = dict(shape=name, batch_size=B, seq_len=T, plain_tok_s=statistics.median(p), learner_tok_s=statistics.median(l))
        row['overhead_pct'] = 100 * (row['plain_tok_s'] / row['learner_tok_s'] - 1)
        res['rows'].append(row)
        print(f"{name:5s} B={B:3d} T={T:3d}  plain {row['plain_tok_s']:8.0f} tok/s   learner {row['learner_tok_s']:8.0f} tok/s   overhead {row['overhead_pct']:+.1f}%", flush=True)
    out = Path(__file__).parent/'results'/'train_speed.json'
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
