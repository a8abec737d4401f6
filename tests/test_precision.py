"Mixed precision: NaN/Inf injected at seeded random steps, skips, fallback, resume, fp16 on the CPU, no host reads per step."
import json, math, random, zlib
from collections import Counter
from pathlib import Path
import pytest, torch
from torch.overrides import TorchFunctionMode
from chatgot.checkpoint import load_checkpoint, save_checkpoint
from chatgot.learner import Callback, Learner
from chatgot.precision import MixedPrecision, SafeGradScaler, autocast_works, native_bf16, next_precision, resolve_precision
from chatgot.test_utils import InjectNonFinite, tiny_data, tiny_model, tiny_text
from chatgot import train as train_mod
from chatgot.train import train


pytestmark = [pytest.mark.filterwarnings('ignore:--precision:UserWarning'),  # fp16/bf16 without native kernels warn
              pytest.mark.usefixtures('one_thread')]                         # tests/conftest.py

DATA = tiny_data()
CPU_PRECISIONS = [p for p in ('fp32', 'bf16', 'fp16') if autocast_works('cpu', p)]

def learner(cbs=(), seed=0, fused=False, **kw):
    "A tiny Learner with a plain (foreach) AdamW, with `fused=True` a fused one, with `fused='muon'` Muon + fused AdamW"
    torch.manual_seed(seed)
    l = Learner(tiny_model(DATA), DATA, cbs=list(cbs), **{**dict(batch_size=8, seq_len=32, warmup=2, eval_batches=2), **kw},
                **(dict(optimizer='muon') if fused == 'muon' else {}))
    if fused == 'muon': return l
    l.opt = torch.optim.AdamW([dict(params=g['params'], weight_decay=g['weight_decay']) for g in l.opt.param_groups],
                              betas=(0.9, 0.95), **(dict(fused=True) if fused else dict(foreach=True)))
    return l

class WeightWatch(Callback):
    "For each step: did the weights and the optimizer state stay bitwise the same?"
    order = 100
    def __init__(self): self.same = {}
    def snap(self): return [t.clone() for t in self.model.state_dict().values()] + \
                           [v.clone() for s in self.opt.state.values() for v in s.values()]
    def before_step(self): self.w0 = self.snap()
    def after_step(self): self.same[self.step] = all(torch.equal(a, b) for a, b in zip(self.w0, self.snap()))

def random_poison(seed, steps, n_loss, n_grad):
    "Seeded random steps (1-based) and values for `InjectNonFinite`"
    r = random.Random(seed)
    at = r.sample(range(1, steps + 1), n_loss + n_grad)
    val = lambda: r.choice(['nan', 'inf', '-inf'])
    return {s: val() for s in at[:n_loss]}, {s: val() for s in at[n_loss:]}

def events(rows, name): return [r for r in rows if r.get('event') == name]
def finite(model): return all(torch.isfinite(p).all() for p in model.parameters())
def same_weights(a, b): return all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())

def test_policy_and_bad_input():
    for p in CPU_PRECISIONS: assert resolve_precision(p, 'cpu') == p
    assert resolve_precision('auto', 'cpu') == ('bf16' if native_bf16('cpu') else 'fp32')
    with pytest.raises(ValueError, match='--precision must be one of'): resolve_precision('half', 'cpu')
    with pytest.raises(ValueError, match='--precision must be one of'): MixedPrecision('fp8')
    assert [next_precision('fp16', True), next_precision('fp16', False), next_precision('bf16', False), next_precision('fp32', True)] == \
           ['bf16', 'fp32', 'fp32', None]

@pytest.mark.parametrize('fused', [False, True, 'muon'], ids=['adamw', 'fused', 'muon'])
@pytest.mark.parametrize('precision', CPU_PRECISIONS)
def test_random_nonfinite_steps_are_skipped_bitwise(precision, fused):
    steps = 14
    loss_at, grad_at = random_poison(zlib.crc32(f"{precision}-{fused}".encode()), steps, 3, 3)
    l = learner([MixedPrecision(precision, max_bad=100, check_every=5, verbose=False), InjectNonFinite(loss_at, grad_at), WeightWatch()],
                fused=fused, micro_batch_size=4)
    l.fit(steps)
    poisoned = sorted({*loss_at, *grad_at})
    assert l.precision == precision
    assert finite(l.model)
    assert [s for s, same in l.weight_watch.same.items() if same] == poisoned  # skipped bitwise, and every other step updated
    ev = events(l.recorder.rows, 'nonfinite')
    assert [(e['step'], e['loss_nonfinite'], e['grad_nonfinite']) for e in ev] == [(s, s in loss_at, s in grad_at) for s in poisoned]
    assert all(e['precision'] == precision for e in ev)
    assert l.mixed_precision.scaler.n_skipped == len(poisoned)
    assert [r['step'] for r in l.recorder.rows if r.get('kind') == 'step' and not math.isfinite(r['loss'])] == sorted(loss_at)

def test_fallback_after_k_counted_steps():
    "K non-finite losses within the window fall back at the next check; K-1 do not"
    K, check = 3, 5
    for bf16_ok in (False, True):
        loss_at, _ = random_poison(7, check, K, 0)
        l = learner([MixedPrecision('fp16', max_bad=K, window=20, check_every=check, bf16_ok=bf16_ok, verbose=False),
                     InjectNonFinite(loss_at)])
        l.fit(8)
        to = 'bf16' if bf16_ok else 'fp32'
        assert [(e['step'], e['from_precision'], e['to_precision'], e['bad_steps']) for e in events(l.recorder.rows, 'fallback')] == \
               [(check, 'fp16', to, sorted(loss_at))]
        assert [r['precision'] for r in l.recorder.rows if r.get('kind') == 'step'] == ['fp16'] * check + [to] * 3
        assert finite(l.model)
    loss_at, _ = random_poison(8, check, K - 1, 0)
    l = learner([MixedPrecision('fp16', max_bad=K, window=20, check_every=check, verbose=False), InjectNonFinite(loss_at)])
    l.fit(8)
    assert events(l.recorder.rows, 'fallback') == [] and l.precision == 'fp16'
    assert len(events(l.recorder.rows, 'nonfinite')) == K - 1

def test_fp16_grad_overflow_counts_only_at_the_scale_floor():
    "Gradient overflows above `min_scale` back the scale off (after `hysteresis`) and do not count; at the floor they do"
    l = learner([MixedPrecision('fp16', max_bad=10, check_every=5, verbose=False), InjectNonFinite(loss_at={1: 'nan', 2: 'inf', 3: 'nan'})])
    l.fit(5)  # non-finite losses count, but the scale does not answer for them
    assert [e['counted'] for e in events(l.recorder.rows, 'nonfinite')] == [True] * 3 and l.mixed_precision.scaler.get_scale() == 2.**16
    grad_at = {s: 'inf' for s in (1, 2, 3, 4)}
    l = learner([MixedPrecision('fp16', max_bad=3, check_every=5, hysteresis=2, verbose=False), InjectNonFinite(grad_at=grad_at)])
    l.fit(5)
    ev = events(l.recorder.rows, 'nonfinite')
    assert [e['scale'] for e in ev] == [2.**16, 2.**16, 2.**15, 2.**14] and not any(e['counted'] for e in ev)
    assert l.precision == 'fp16' and l.mixed_precision.scaler.get_scale() == 2.**13
    l = learner([MixedPrecision('fp16', max_bad=3, check_every=5, init_scale=1., min_scale=1., verbose=False),
                 InjectNonFinite(grad_at=grad_at)])
    l.fit(6)
    assert [e['counted'] for e in events(l.recorder.rows, 'nonfinite')] == [True] * 4
    assert [e['to_precision'] for e in events(l.recorder.rows, 'fallback')] == [next_precision('fp16', native_bf16('cpu'))]

def test_fp16_on_cpu_scales_and_unscales_before_clipping():
    "fp16 autocast is really used; the loss is scaled by 2**16; the logged (clipped) grad norm is the unscaled one"
    seen = []
    class Grab(Callback):
        order = 50
        def before_opt_step(self):
            if self.step == 0: self.g = torch.cat([p.grad.flatten() for p in self.model.parameters()]).clone()
    runs = {}
    for prec, mbs in (('fp32', 8), ('fp16', 8), ('fp16', 2)):
        l = learner([MixedPrecision(prec, verbose=False), Grab()], micro_batch_size=mbs)
        h = l.model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) if prec == 'fp16' and mbs == 8 else None
        l.fit(3)
        if h: h.remove()
        runs[prec, mbs] = l
    assert torch.float16 in seen
    assert runs['fp16', 8].mixed_precision.scaler.get_scale() == 2.**16
    gn = {k: [r['grad_norm'] for r in l.recorder.rows if r.get('kind') == 'step'] for k, l in runs.items()}
    assert gn['fp16', 8] == pytest.approx(gn['fp32', 8], rel=2e-2)
    assert torch.allclose(runs['fp16', 8].grab.g, runs['fp16', 2].grab.g, atol=1e-3)  # accumulation: same unscaled gradient
    assert torch.allclose(runs['fp16', 8].grab.g, runs['fp32', 8].grab.g, atol=1e-2)

def test_resume_through_checkpoint_is_bitwise(tmp_path):
    "Stop between two checks with bad steps counted but no fallback yet; the resumed run falls back and ends bitwise where the full one does"
    loss_at, grad_at = random_poison(5, 14, 4, 2)  # losses at 5, 6, 10, 12; gradients at 1, 9
    def mp(): return MixedPrecision('fp16', max_bad=2, window=20, check_every=4, verbose=False)
    full = learner([mp(), InjectNonFinite(loss_at, grad_at)], total_steps=14); full.fit(14)
    first = learner([mp(), InjectNonFinite(loss_at, grad_at)], total_steps=14, out=tmp_path); first.fit(7)
    assert first.precision == 'fp16' and first.mixed_precision.scaler.recent == [5, 6]  # the fallback is due at the check of step 8
    ck = save_checkpoint(first, tmp_path/'checkpoints')
    resumed = learner([mp(), InjectNonFinite(loss_at, grad_at)], total_steps=14, seed=1, out=tmp_path)
    load_checkpoint(resumed, ck)  # torch.load(weights_only=True) inside
    assert (resumed.precision, resumed.mixed_precision.scaler.precision) == (first.precision, first.precision)
    resumed.fit(14)
    assert [e['step'] for e in events(full.recorder.rows, 'fallback')] == [8, 12] if native_bf16('cpu') else [8]
    assert same_weights(full, resumed)
    a, b = full.mixed_precision.scaler.state_dict(), resumed.mixed_precision.scaler.state_dict()
    assert torch.equal(a.pop('pending'), b.pop('pending')) and a == b
    rows = [json.loads(x) for x in (tmp_path/'metrics.jsonl').read_text().splitlines()]
    key = lambda rs: [(r['step'], r['event']) for r in rs if r.get('event') in ('nonfinite', 'fallback')]
    assert key(rows) == key(full.recorder.rows)  # each event exactly once

def test_resume_through_train_keeps_the_fallen_back_precision(tmp_path, monkeypatch):
    "Through `train()`: fall back, get interrupted (as by Ctrl-C) after a checkpoint, resume, match the uninterrupted run"
    monkeypatch.setenv('CHATGOT_CACHE', str(tmp_path/'cache'))
    (tmp_path/'c.txt').write_text(tiny_text(800))
    flags = dict(data=str(tmp_path/'c.txt'), preset='tiny', steps=16, batch_size=4, seq_len=32, save_every=8, eval_every=0,
                 eval_batches=2, log_every=4, quiet=True)
    builtin = 'precision' in train_mod.FLAGS  # train() attaches MixedPrecision(--precision) itself
    if builtin: flags['precision'] = 'fp16'
    loss_at = {1: 'nan', 2: 'inf', 3: 'nan', 11: 'nan'}  # the default max_bad=3: falls back at the check of step 4
    def cbs(): return ([] if builtin else [MixedPrecision('fp16', verbose=False)]) + [InjectNonFinite(loss_at)]
    class Interrupt(Callback):
        order = 80  # before the checkpoint callback's after_step, which saves and stops
        def after_step(self):
            if self.step == 8: self.learn.request_stop('SIGINT')
    full = train(out=tmp_path/'full', cbs=cbs(), **flags)
    part = train(out=tmp_path/'run', cbs=cbs() + [Interrupt()], **flags)
    fallen = next_precision('fp16', native_bf16('cpu'))
    assert part.step == 8 and part.precision == fallen
    resumed = train(out=tmp_path/'run', resume=True, quiet=True, cbs=cbs())
    assert resumed.precision == fallen and resumed.mixed_precision.scaler.n_fallbacks == 1
    assert same_weights(full, resumed)
    rows = [json.loads(x) for x in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()]
    assert [r['precision'] for r in rows if r.get('kind') == 'step'] == ['fp16'] * 4 + [fallen] * 12
    assert Counter((r['step'], r['event']) for r in rows if r.get('event') in ('nonfinite', 'fallback')) == \
           Counter({(1, 'nonfinite'): 1, (2, 'nonfinite'): 1, (3, 'nonfinite'): 1, (4, 'fallback'): 1, (11, 'nonfinite'): 1})

_reads = {'item', 'tolist', 'numpy', 'cpu', '__bool__', '__float__', '__int__', '__index__'}
class HostReads(TorchFunctionMode):
    "Count tensor reads by the host (a device sync on a GPU)"
    def __init__(self): super().__init__(); self.n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += getattr(func, '__name__', '') in _reads
        return func(*args, **(kwargs or {}))

class Open(Callback):
    "Start counting host reads at the start of each step"
    order = -100
    def __init__(self): self.reads = {}
    def before_step(self): self.mode = HostReads(); self.mode.__enter__()
class Close(Callback):
    "...and stop after every callback's `after_step` ran"
    order = 1000
    def after_step(self): self.open.mode.__exit__(None, None, None); self.open.reads[self.step] = self.open.mode.n

@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_no_host_reads_between_checks_on_the_fused_path(precision):
    "The whole step (forward, backward, clip, fused AdamW, scaler, Recorder) reads nothing on the host except at log steps"
    l = learner([Open(), Close(), MixedPrecision(precision, verbose=False), InjectNonFinite({3: 'nan'}, {6: 'inf'})], fused=True)
    l.recorder.log_every = 5
    l.fit(10)
    assert [s for s, n in l.open.reads.items() if n] == [5, 10]  # the log steps read (the counter works); no other step does
    assert [e['step'] for e in events(l.recorder.rows, 'nonfinite')] == [3, 6]
    l = learner([Open(), Close(), MixedPrecision(precision, verbose=False)])  # plain AdamW: the skip decision (and AdamW's own
    l.recorder.log_every = 5                                                  # step counters) are read every step
    l.fit(4)
    assert len(l.open.reads) == 4 and all(n > 0 for n in l.open.reads.values())

def test_oom_retry_leaves_the_scaler_as_it_was():
    class OOMOnce(Callback):
        order = -10
        def __init__(self, at, halve): self.at, self.halve, self.mb, self.hit = at, halve, 0, False
        def before_step(self): self.mb = 0
        def after_backward(self):
            self.mb += 1
            if self.step + 1 == self.at and self.mb == 2 and not self.hit:
                self.hit = True; raise RuntimeError("DefaultCPUAllocator: can't allocate memory: injected")
        def after_oom(self):
            if self.halve: self.learn.micro_batch_size //= 2
            self.learn.oom_retry = True
    ref = learner([MixedPrecision('fp16', verbose=False)], micro_batch_size=4); ref.fit(4)
    for halve in (False, True):
        l = learner([MixedPrecision('fp16', verbose=False), OOMOnce(2, halve)], micro_batch_size=4); l.fit(4)
        assert l.oom_once.hit and l.mixed_precision.scaler.n_skipped == 0
        a, b = ref.mixed_precision.scaler.state_dict(), l.mixed_precision.scaler.state_dict()
        assert torch.equal(a.pop('pending'), b.pop('pending')) and a == b
        if not halve: assert same_weights(ref, l)

def test_scaler_state_loads_weights_only(tmp_path):
    sc = SafeGradScaler('cpu', 'fp16', init_scale=64., growth_interval=4)
    nan, one = torch.tensor(float('nan')), torch.tensor(1.)
    for i, bad in enumerate([0, 1, 1, 0, 0, 1], 1): sc.check(nan if bad else one, one); sc.update(i)
    sc.read(); sc.check(one, nan); sc.update(7)
    torch.save(sc.state_dict(), tmp_path/'sc.pt')
    sc2 = SafeGradScaler('cpu', 'bf16'); sc2.load_state_dict(torch.load(tmp_path/'sc.pt', weights_only=True))
    assert sc2.precision == 'fp16' and sc2.get_scale() == sc.get_scale()
    assert sc2.read() == sc.read()
