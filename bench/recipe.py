"""The recipe ablation: which optimizer and architecture changes buy validation loss per minute on a CPU.

python bench/recipe.py [--data builtin:histories] [--preset baby] [--steps 1000] [--seeds 0 1] [--variants base muon ...]
    -> prints a table, writes bench/results/recipe.json (read by nbs/01c_recipe.ipynb)

Every variant trains in the same plain loop (warmup + cosine LR, clip 1.0, fp32, the preset's batch and context) on
the same batches (same seed, same sampler). The variants are run interleaved, one step of each in turn, so a machine
that slows down (other jobs, thermal limits) slows every variant alike: the training seconds of each are comparable.
Eval seconds are not counted. Val loss is the token-weighted mean over the first `--eval-batches` validation windows.
"""
import argparse, json, math, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.data import BatchSampler, eval_batches, prepare_data
from chatgot.learner import lr_at
from chatgot.model import GPT, preset_config
from chatgot.optim import make_optimizer

LLAMA = dict(pos='rope', norm='rmsnorm', mlp='swiglu', split_qkv=True, zero_init=True)
VARIANTS = {  # name: (optimizer, GPTConfig changes, extra optimizer args)
    'base':      ('adamw', {}, {}),                                   # today's recipe: GPT-2 block, AdamW
    'muon':      ('muon', dict(split_qkv=True), {}),                  # + Muon for the hidden matrices
    '+rope':     ('muon', dict(split_qkv=True, pos='rope'), {}),
    '+rmsnorm':  ('muon', dict(split_qkv=True, norm='rmsnorm'), {}),
    '+swiglu':   ('muon', dict(split_qkv=True, mlp='swiglu'), {}),
    '+relu2':    ('muon', dict(split_qkv=True, mlp='relu2'), {}),
    '+qknorm':   ('muon', dict(split_qkv=True, qk_norm=True), {}),
    '+zeroinit': ('muon', dict(split_qkv=True, zero_init=True), {}),
    '+softcap':  ('muon', dict(split_qkv=True, softcap=15.0), {}),
    'llama':     ('muon', LLAMA, {}),                                 # the Llama block, Muon
    'qwen3':     ('muon', dict(LLAMA, qk_norm=True), {}),             # + QK-norm: the Qwen3 block
    'llama-adamw': ('adamw', LLAMA, {}),                              # the Llama block, AdamW
    'qwen3-x2':  ('muon', dict(LLAMA, qk_norm=True), dict(muon_lr_scale=2.0)),
    'qwen3-x4':  ('muon', dict(LLAMA, qk_norm=True), dict(muon_lr_scale=4.0)),
    'qwen3-relu2': ('muon', dict(LLAMA, qk_norm=True, mlp='relu2'), {}),
}
TRAIN = dict(baby=dict(batch_size=16, seq_len=64, lr=8e-3, warmup=50), tiny=dict(batch_size=8, seq_len=64, lr=3e-3, warmup=5),
             **{'14m': dict(batch_size=16, seq_len=128, lr=1e-3, warmup=30)})

@torch.no_grad()
def val_loss(model, data, batches, B, T):
    model.eval(); tot = n = 0
    for x, y in eval_batches(data.val, B, T, max_batches=batches):
        _, loss = model(x, y); tot += float(loss) * y.numel(); n += y.numel()
    model.train(); return tot / n

class Run:
    "One variant's model, optimizer and sampler, stepped one step at a time"
    def __init__(self, name, data, preset, seed, steps, tr, lr_scale=1.0):
        kind, cfg, okw = VARIANTS[name]
        torch.manual_seed(seed)
        self.name, self.seed, self.steps, self.tr = name, seed, steps, tr
        self.model = GPT(preset_config(preset, vocab_size=data.vocab_size, **cfg))
        self.opt = make_optimizer(self.model, kind, lr=tr['lr'] * lr_scale, **okw)
        self.sampler = BatchSampler(data.train, tr['batch_size'], tr['seq_len'], seed=seed)
        self.params, self.secs, self.it, self.evals = list(self.model.parameters()), 0.0, 0, []
        self.lr = tr['lr'] * lr_scale

    def step(self):
        t0 = time.perf_counter()
        lr = lr_at(self.it, self.lr, self.steps, self.tr['warmup'], 0.1)
        for g in self.opt.param_groups: g['lr'] = lr * g.get('lr_scale', 1.0)
        x, y = self.sampler.next_batch()
        _, loss = self.model(x, y); loss.backward()
        loss = loss.detach()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0); self.opt.step(); self.opt.zero_grad(set_to_none=True)
        self.secs += time.perf_counter() - t0; self.it += 1
        return float(loss)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='builtin:histories'); ap.add_argument('--preset', default='baby')
    ap.add_argument('--steps', type=int, default=1000); ap.add_argument('--seeds', type=int, nargs='+', default=[0])
    ap.add_argument('--variants', nargs='+', default=list(VARIANTS)); ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--eval-batches', type=int, default=40); ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'recipe.json'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    tr = TRAIN[a.preset]
    data = prepare_data(a.data, tokenizer='char' if a.preset != '14m' else 'bpe', seq_len=tr['seq_len'])
    bpt = float(data.val_bytes) / len(data.val) if hasattr(data, 'val_bytes') else None
    runs = [Run(v, data, a.preset, s, a.steps, tr) for s in a.seeds for v in a.variants]
    t0 = time.time()
    for it in range(a.steps + 1):
        for r in runs:
            if it % a.eval_every == 0 or it == a.steps:
                r.evals.append(dict(step=it, train_s=round(r.secs, 2), val_loss=round(val_loss(r.model, data, a.eval_batches, 64, tr['seq_len']), 4)))
            if it < a.steps: r.step()
        if it % a.eval_every == 0:
            print(f"step {it}/{a.steps} ({time.time() - t0:.0f} s): " + '  '.join(f"{r.name}/{r.seed} {r.evals[-1]['val_loss']:.3f}" for r in runs), flush=True)
    res = dict(machine=describe(), data=a.data, preset=a.preset, steps=a.steps, train=tr, eval_batches=a.eval_batches,
               command=' '.join(['python'] + sys.argv), wall_s=round(time.time() - t0),
               runs=[dict(variant=r.name, seed=r.seed, params=r.model.num_params(), evals=r.evals) for r in runs])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"\n{'variant':<14}{'seed':>5}{'val':>8}{'train s':>9}")
    for r in runs: print(f"{r.name:<14}{r.seed:>5}{r.evals[-1]['val_loss']:>8.4f}{r.evals[-1]['train_s']:>9.1f}")
