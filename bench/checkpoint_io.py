"""Checkpoint save and load time for the 14m model (and baby), as `CheckpointCallback` writes them.

python bench/checkpoint_io.py [--repeats 5] [--presets 14m,baby]   -> prints a table, writes bench/results/checkpoint_io.json
save: `save_checkpoint` of a Learner with `train()`'s optimizer after one training step (weights, optimizer state, RNG, sampler, callback states,
      sha256 of every file, fsync, atomic rename); load: `find_checkpoint` + `load_checkpoint` (hash verification
      included) into a fresh Learner. Medians over repeats; the folder size is reported too.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from bench.train_speed import fake_data
from chatgot.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from chatgot.learner import Learner
from chatgot.model import GPT, preset_config
from chatgot.train import resolve_flags

VOCAB = {'14m': 8192, 'baby': 65}

def learner(preset, data):
    torch.manual_seed(0)
    opt = resolve_flags(dict(preset=preset))['optimizer']  # what `train()` uses (Muon: one buffer per hidden matrix)
    return Learner(GPT(preset_config(preset, vocab_size=VOCAB[preset])), data, batch_size=4, seq_len=32, eval_batches=1, optimizer=opt)

def once(preset, data):
    l = learner(preset, data); l.fit(1)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); p = save_checkpoint(l, Path(d)/'checkpoints'); save = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in p.iterdir())
        l2 = learner(preset, data)
        t0 = time.perf_counter(); ck, _ = find_checkpoint(Path(d)/'checkpoints'); load_checkpoint(l2, ck); load = time.perf_counter() - t0
    return save, load, size

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--presets', default='14m,baby')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'checkpoint_io.json'))
    a = ap.parse_args()
    res = dict(machine=describe(), rows=[])
    for preset in a.presets.split(','):
        data = fake_data(VOCAB[preset])
        runs = [once(preset, data) for _ in range(a.repeats)]
        row = dict(preset=preset, save_s=statistics.median(r[0] for r in runs), load_s=statistics.median(r[1] for r in runs),
                   size_mb=runs[0][2] / 2**20, repeats=a.repeats)
        res['rows'].append(row)
        print(f"{preset:5s} checkpoint {row['size_mb']:6.1f} MiB: save {row['save_s']*1000:7.0f} ms, load {row['load_s']*1000:7.0f} ms", flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
