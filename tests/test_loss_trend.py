"Loss trend tracking: each rule on scripted loss sequences, then end-to-end runs of the tiny model through `train()`."
import json, math, shutil
from pathlib import Path
import pytest, torch
from chatgot.learner import Callback, CancelFitException, CancelStepException, lr_at
from chatgot.callback import read_jsonl
from chatgot.checkpoint import list_checkpoints
from chatgot.loss_trend import DivergenceError, LossTrendCallback
from chatgot.test_utils import InjectSpikes, ScriptedLearner, noisy
from chatgot.test_utils import tiny_text
from chatgot.train import train

# ---- scripted rules (no model) ----

def kinds(sl, *names): return [(e['event'], e['step']) for e in sl.events if not names or e['event'] in names]

def test_bad_settings_are_refused():
    for kw, msg in [(dict(window=16), 'min_samples <= window'), (dict(lr_factor=1.0), 'lr_factor'),
                    (dict(min_lr_mult=0), 'min_lr_mult'), (dict(k=-1), 'positive'), (dict(max_rewinds=-1), 'max_rewinds')]:
        with pytest.raises(ValueError, match=msg): LossTrendCallback(**kw)

def test_clean_sequence_has_no_events():
    sl = ScriptedLearner([LossTrendCallback()]).fit(noisy(600, slope=-0.002), noisy(600, level=0.8, sd=0.1, seed=1))
    assert sl.events == [] and set(sl.scales) == {1.0} and set(sl.lrs) == {1e-3}

def test_loss_spike_is_skipped_and_left_out_of_the_ema():
    losses = noisy(80); losses[50] = 12.0
    sl = ScriptedLearner([cb := LossTrendCallback()]).fit(losses)
    assert [i for i, s in enumerate(sl.scales) if s != 1] == [50] and sl.scales[50] == 0
    (e,) = sl.events
    assert (e['event'], e['step'], e['action']) == ('spike', 51, 'skip') and e['z'] > 6 and e['loss'] == 12.0
    assert abs(e['median'] - 3) < 0.05 and abs(e['expected'] - 3) < 0.05 and 0 < e['deviation'] < 0.1
    kept = [l for i, l in enumerate(losses) if i != 50]   # the EMA is the bias-corrected EMA of the kept losses
    ema = w = 0.
    for l in kept: ema, w = 0.98 * ema + 0.02 * l, 0.98 * w + 0.02
    assert abs(float(sl.loss_ema) - ema / w) < 1e-5

def test_warmup_judges_nothing_but_nonfinite():
    losses = [3.0] * 40; losses[10] = 30.0; losses[20] = float('nan')
    sl = ScriptedLearner([LossTrendCallback(check_every=10**9)]).fit(losses)
    assert [i for i, s in enumerate(sl.scales) if s != 1] == [20] and sl.events == []

def test_gradient_norm_spike_is_clipped_to_its_threshold():
    gns = noisy(100, level=0.5, sd=0.05, seed=2); gns[70] = 0.95
    sl = ScriptedLearner([LossTrendCallback()]).fit(noisy(100), gns)
    (e,) = sl.events
    thr = e['grad_expected'] + 6 * e['grad_deviation']
    assert (e['step'], e['action']) == (71, 'clip') and e['grad_z'] > 6
    assert abs(sl.scales[70] - thr / 0.95) < 1e-5 and 0 < sl.scales[70] < 1
    assert sl.lrs == [1e-3] * 100   # a clip does not count toward lr_down

def test_clip_that_does_not_bind_is_not_an_event():
    gns = noisy(100, level=2.0, sd=0.05, seed=2); gns[70] = 3.0   # above 6 sigma, but the Learner's clip (1.0) is tighter
    sl = ScriptedLearner([LossTrendCallback()]).fit(noisy(100), gns)
    assert sl.events == [] and set(sl.scales) == {1.0}

def test_repeated_spikes_lower_the_lr_and_calm_restores_it():
    losses = noisy(400); losses[100] = losses[110] = 8.0
    sl = ScriptedLearner([cb := LossTrendCallback()]).fit(losses)
    assert kinds(sl) == [('spike', 101), ('spike', 111), ('lr_down', 120), ('lr_up', 220)]
    assert sl.lrs[119] == 1e-3 and sl.lrs[120] == 5e-4 and sl.lrs[219] == 5e-4 and sl.lrs[220] == 1e-3
    assert cb.lr_mult == 1.0

def test_spikes_far_apart_do_not_lower_the_lr():
    losses = noisy(400); losses[100] = losses[250] = 8.0
    sl = ScriptedLearner([LossTrendCallback()]).fit(losses)
    assert kinds(sl) == [('spike', 101), ('spike', 251)] and set(sl.lrs) == {1e-3}

def test_lr_bounds():
    losses = noisy(600)
    for s in range(50, 600, 4): losses[s] = 9.0
    sl = ScriptedLearner([cb := LossTrendCallback(min_lr_mult=0.2)]).fit(losses)
    assert abs(min(sl.lrs) - 2e-4) < 1e-12 and max(sl.lrs) <= 1e-3
    assert all(0.2 <= v <= 1 for v in cb.mult.values())
    assert len(kinds(sl, 'lr_down')) == 3       # 0.5, 0.25, the floor 0.2, then no more events

def test_rising_loss_without_checkpoint_lowers_the_lr_from_level_to_level():
    sl = ScriptedLearner([cb := LossTrendCallback()]).fit(noisy(100) + noisy(200, slope=0.001, seed=1))
    ev = sl.events
    assert {(e['event'], e['reason']) for e in ev} == {('lr_down', 'rising')} and len(ev) >= 2
    assert all(e['loss_ema'] > 1.02 * e['best_ema'] for e in ev)
    assert [b['best_ema'] for b in ev[1:]] == [a['loss_ema'] for a in ev[:-1]]   # each cut resets the reference
    assert cb.rewinds == len(ev) and abs(cb.mult['rewind'] - 0.5 ** len(ev)) < 1e-12

def test_a_falling_or_flat_loss_never_counts_as_rising():
    for seq in (noisy(800, slope=-0.001, sd=0.1), noisy(800, sd=0.1, seed=4), noisy(800, level=6, sd=0.3, seed=5)):
        assert ScriptedLearner([LossTrendCallback()]).fit(seq).events == []

def test_plateau_lowers_the_lr_once_per_window():
    cb = LossTrendCallback(window=128, lr_on_plateau=True)
    sl = ScriptedLearner([cb]).fit(noisy(300, level=4, slope=-0.003))
    assert not cb.plateau and sl.events == []
    sl.fit(noisy(400, level=3.1, seed=3))
    ev = sl.events
    assert cb.plateau and {e['reason'] for e in ev} == {'plateau'} and ev[0]['step'] > 300
    assert [b['step'] - a['step'] for a, b in zip(ev, ev[1:])] == [130] * (len(ev) - 1)
    assert abs(cb.lr_mult - 0.5 ** len(ev)) < 1e-12

def test_plateau_flag_without_lr_change_by_default():
    sl = ScriptedLearner([cb := LossTrendCallback(window=128)]).fit(noisy(400, level=3.1, seed=3))
    assert cb.plateau and sl.events == [] and set(sl.lrs) == {1e-3}

def test_divergence_without_checkpoint_lowers_lr_then_stops():
    sl = ScriptedLearner([cb := LossTrendCallback(max_rewinds=2)])
    with pytest.raises(DivergenceError, match='training diverged.*after 2 rewinds'): sl.fit(noisy(100) + [6.0] * 200)
    assert [(e['event'], e['step']) for e in sl.events if e.get('reason') == 'diverged' or e['event'] == 'diverged'] == \
           [('lr_down', 120), ('lr_down', 140), ('diverged', 160)]
    assert cb.mult['rewind'] == 0.25

def test_isolated_nonfinite_steps_are_not_spikes_but_a_run_of_them_diverges():
    losses = noisy(200); losses[80] = losses[85] = float('nan')
    sl = ScriptedLearner([LossTrendCallback()]).fit(losses)
    assert sl.events == [] and sl.scales[80] == sl.scales[85] == 0 and set(sl.lrs) == {1e-3}
    losses = noisy(60) + [float('nan')] * 25 + noisy(40)
    sl = ScriptedLearner([LossTrendCallback()]).fit(losses)
    assert kinds(sl) == [('lr_down', 80)]

def test_steps_cancelled_before_judging_count_toward_divergence():
    class CancelNonFinite(Callback):   # what MixedPrecision does with a non-fused optimizer
        order = -5
        def before_opt_step(self):
            if not self.step_loss.isfinite(): raise CancelStepException()
    sl = ScriptedLearner([cb := LossTrendCallback(), CancelNonFinite()]).fit(noisy(60) + [float('nan')] * 25 + noisy(40))
    assert kinds(sl) == [('lr_down', 80)] and cb.n_seen == 100

def test_state_survives_weights_only_load(tmp_path):
    losses = noisy(300); losses[150] = losses[152] = 9.0
    full = ScriptedLearner([LossTrendCallback()]).fit(losses)
    a = ScriptedLearner([cb := LossTrendCallback()]).fit(losses[:155])
    torch.save(cb.state_dict(), tmp_path/'s.pt')
    n = len(a.events)
    b = ScriptedLearner([cb2 := LossTrendCallback()]); b.step = b.sampler.k = 155
    cb2.load_state_dict(torch.load(tmp_path/'s.pt', weights_only=True)); b.fit(losses[155:])
    assert b.events == full.events[n:] and b.lrs == full.lrs[155:] and b.scales == full.scales[155:]
    assert torch.equal(b.loss_ema, full.loss_ema)

# ---- end to end: the tiny model through train() ----

FLAGS = dict(preset='tiny', steps=160, batch_size=8, seq_len=32, lr=3e-3, warmup=5, save_every=40, eval_every=80,
             eval_batches=4, log_every=10, keep_last=10, precision='fp32')  # the same arithmetic on every CPU
SPIKES = {40: 'random', 48: 10.0, 56: 'random'}   # batch number: corrupted tokens or loss x10

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus')
    (d/'c.txt').write_text(tiny_text(800))
    return str(d/'c.txt')

@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('CHATGOT_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))

def rows(out): return read_jsonl(Path(out)/'metrics.jsonl')
def steps_rows(rs): return {r['step']: r for r in rs if r.get('kind') == 'step'}
def cb(): return LossTrendCallback(calm_steps=20, lr_factor=0.7)   # a short run: a short, mild LR cut

@pytest.fixture(scope='module')
def runs(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('runs')
    mp = pytest.MonkeyPatch(); mp.setenv('CHATGOT_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))
    out = {}
    for name, cbs in [('clean', []), ('spiky', [InjectSpikes(SPIKES)]), ('guarded', [cb(), InjectSpikes(SPIKES)])]:
        l = train(out=tmp/name, quiet=True, cbs=cbs, data=corpus, **FLAGS)
        out[name] = (tmp/name, l)
    mp.undo()
    return out

def test_e2e_spikes_are_skipped_lr_lowered_then_restored(runs):
    run, l = runs['guarded']
    rs = rows(run)
    ev = [(r['event'], r['step']) for r in rs if r.get('event')]
    assert ev == [('spike', 40), ('spike', 48), ('lr_down', 50), ('spike', 56), ('lr_up', 80)]   # calm counts from the last spike
    assert all(r['action'] == 'skip' and r['z'] > 6 for r in rs if r.get('event') == 'spike')
    mult = {s: r['lr'] / lr_at(s - 1, FLAGS['lr'], FLAGS['steps'], FLAGS['warmup'], 0.1) for s, r in steps_rows(rs).items()}
    assert all(abs(mult[s] - (0.7 if 51 <= s <= 80 else 1.0)) < 1e-9 for s in mult)   # lowered, then restored

def test_e2e_final_loss_close_to_the_spike_free_run(runs):
    clean, guarded, spiky = (runs[k][1].val_loss for k in ('clean', 'guarded', 'spiky'))
    print(f"val loss: clean {clean:.4f}, spikes+callback {guarded:.4f}, spikes alone {spiky:.4f}")
    # measured in fp32: clean 0.9422, guarded 0.9849 (+4.5 %: the 30 steps at 0.7x LR cost more than the skips save),
    # spikes alone 1.0964 (+16 %). The callback must recover most of what the spikes cost.
    assert spiky - clean > 0.08 * clean
    assert abs(guarded - clean) < 0.5 * (spiky - clean)

def test_e2e_callback_leaves_a_clean_run_untouched(runs, corpus, tmp_path):
    l = train(out=tmp_path/'run', quiet=True, cbs=[cb()], data=corpus, **FLAGS)
    assert not [r for r in rows(tmp_path/'run') if r.get('event')]
    assert all(torch.equal(a, b) for a, b in zip(l.model.state_dict().values(), runs['clean'][1].model.state_dict().values()))

def test_e2e_loss_ema_in_metrics_is_bias_corrected(runs):
    rs = steps_rows(rows(runs['clean'][0]))
    ema = w = 0.
    for s in sorted(rs):
        ema, w = 0.98 * ema + 0.02 * rs[s]['loss'], 0.98 * w + 0.02
        assert abs(rs[s]['loss_ema'] - ema / w) < 1e-5 * ema / w   # the callback's float32 EMA on the device

class StopAt(Callback):
    "Stop the fit after step `at`, as Ctrl-C would (a checkpoint is saved on the way out)"
    order = 80
    def __init__(self, at): self.at = at
    def after_step(self):
        if self.step == self.at: raise CancelFitException()

def test_e2e_resume_continues_the_callback_state(corpus, tmp_path):
    "Killed between checkpoint 50 and 70 (after the lr_down of step 50 was logged), resumed: the uninterrupted run, bitwise"
    flags = {**FLAGS, 'save_every': 25}
    ref = train(out=tmp_path/'ref', quiet=True, cbs=[cb(), InjectSpikes(SPIKES)], data=corpus, **flags)
    run = tmp_path/'run'
    l = train(out=run, quiet=True, cbs=[cb(), InjectSpikes(SPIKES), StopAt(70)], data=corpus, **flags)
    assert l.step == 70 and l.loss_trend.mult['spike'] == 0.7 and l.loss_trend.spikes == [56]
    shutil.rmtree(run/'checkpoints'/'step-0000070')   # as if killed before it was written: resume from step 50
    l = train(out=run, resume=True, quiet=True, cbs=[cb(), InjectSpikes(SPIKES)], data=corpus)
    assert l.step == 160 and l.loss_trend.mult == ref.loss_trend.mult and l.sampler.k == 160
    timeless = lambda rs: [{k: v for k, v in r.items() if not k.endswith('_s') and k != 'mem_peak_bytes'} for r in rs
                           if r.get('event') != 'resume']
    assert timeless(rows(run)) == timeless(rows(tmp_path/'ref'))
    assert all(torch.equal(a, b) for a, b in zip(l.model.state_dict().values(), ref.model.state_dict().values()))

def test_e2e_rewind_skips_bad_data_and_stop_after_max_rewinds(corpus, tmp_path):
    bad = {b: 'random' for b in range(81, 101)}
    l = train(out=tmp_path/'a', quiet=True, cbs=[LossTrendCallback(), InjectSpikes(bad)], data=corpus, **FLAGS)
    rs = rows(tmp_path/'a')
    (rw,) = [r for r in rs if r.get('event') == 'rewind']
    assert (rw['step'], rw['from_step'], rw['checkpoint'], rw['skipped_batches']) == (80, 100, 'step-0000080', 20)
    assert l.step == 160 and l.sampler.k == 180 and l.loss_trend.rewinds == 1 and l.loss_trend.mult['rewind'] == 0.5
    i = rs.index(rw)
    assert [r['step'] for r in rs[i + 1:] if r.get('kind') == 'step'] == list(range(81, 161))
    good = steps_rows(rs[i + 1:])
    assert max(good[s]['loss'] for s in good) < steps_rows(rs[:i])[80]['loss'] + 0.3   # the bad batches were skipped
    bad = {b: 'random' for b in range(41, 1000)}
    with pytest.raises(DivergenceError, match='checkpoints/latest is now step-0000040'):
        train(out=tmp_path/'b', quiet=True, cbs=[LossTrendCallback(max_rewinds=1), InjectSpikes(bad)], data=corpus, **{**FLAGS, 'save_every': 10})
    assert (tmp_path/'b'/'checkpoints'/'latest').read_text().strip() == 'step-0000040'
    assert [r['event'] for r in rows(tmp_path/'b') if r.get('event') in ('rewind', 'diverged')] == ['rewind', 'diverged']
    moved = [r['abandoned'] for r in rows(tmp_path/'b') if r.get('event') in ('rewind', 'diverged') and r.get('abandoned')]
    assert moved and all(list_checkpoints(tmp_path/'b'/m) for m in moved)  # the diverged stretch's checkpoints: moved aside, not deleted
