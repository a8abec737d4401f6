"ETA on replayed step-time traces, the ETA callback in real runs, plot_run, and the progress bar on resume."
import contextlib, io, json, math
import pytest, torch
from chatgot.eta import EtaCallback, EtaEstimator
from chatgot.runs import is_step_row, plot_run, read_metrics
from chatgot.test_utils import TRACES, eta_errors, eta_jumps, replay, synthetic_trace, tiny_text
from chatgot.train import train

CHANGE = {'rate_change': 500, 'micro_batch': 600}  # step where the true rate changes for good

def judged(rows, kind):
    "Reports after warm-up (step 30), one median window after a lasting change, while 5 % of the run is left"
    end = rows[0]['t'] + rows[0]['truth']
    return [r for r in rows if r['step'] >= max(30, CHANGE.get(kind, -70) + 70) and r['truth'] >= 0.05 * end]

@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('kind', TRACES)
def test_error_within_10pct_and_no_jumps(kind, seed):
    rows = replay(synthetic_trace(kind, seed=seed))
    j = judged(rows, kind)
    assert len(j) >= 25
    assert max(abs(e) for e in eta_errors(j)) <= 0.10
    if kind not in CHANGE: assert max(eta_jumps(j)) <= 0.20  # the true rate is steady
    end = rows[0]['t'] + rows[0]['truth']
    assert all(abs(r['eta'] - r['truth']) <= 0.01 * end for r in rows if r['truth'] < 0.05 * end)  # the last 5 %

def test_the_criteria_can_fail():
    "tqdm's EMA estimate, judged the same way on the same traces, misses them"
    for kind in ('periodic_slow', 'eval_pauses'):
        j = judged(replay(synthetic_trace(kind)), kind)
        assert max(abs(e) for e in eta_errors(j, 'tqdm')) > 0.10 and max(eta_jumps(j, 'tqdm')) > 0.20

def test_range_holds_the_truth():
    for kind in TRACES:
        j = judged(replay(synthetic_trace(kind)), kind)
        assert sum(r['low'] <= r['truth'] <= r['high'] for r in j) >= 0.85 * len(j), kind

def test_estimator_state_is_plain(tmp_path):
    est = EtaEstimator()
    for i in range(20): est.add(2.5 + 0.01 * (i % 3), 10_000, regime=8)
    est.add_pause('eval', 3.)
    torch.save(est.state_dict(), tmp_path/'s.pt')
    est2 = EtaEstimator(); est2.load_state_dict(torch.load(tmp_path/'s.pt', weights_only=True))
    assert est2.estimate(50_000, {'eval': 2}) == est.estimate(50_000, {'eval': 2})

def test_bad_arguments():
    with pytest.raises(ValueError, match='windows must be at least 1'): EtaEstimator(window=0)
    with pytest.raises(ValueError, match='unknown trace kind'): synthetic_trace('bumpy')

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny run to step 20, then resumed to 30, with the ETA callback; the bar's output of each part"
    tmp = tmp_path_factory.mktemp('eta')
    (tmp/'c.txt').write_text(tiny_text(800))
    mp = pytest.MonkeyPatch()
    mp.setenv('CHATGOT_CACHE', str(tmp/'cache'))
    flags = dict(data=str(tmp/'c.txt'), preset='tiny', batch_size=4, seq_len=32, eval_every=10, save_every=10,
                 eval_batches=2, log_every=5, device='cpu')
    out = []
    try:
        for steps, resume in ((20, False), (30, True)):
            err = io.StringIO()
            with contextlib.redirect_stderr(err): learn = train(out=tmp/'run', resume=resume, steps=steps, cbs=[EtaCallback()], **flags)
            out.append((learn, err.getvalue()))
    finally: mp.undo()
    return tmp/'run', out

def frames(text): return [f for f in text.replace('\n', '\r').split('\r') if f.strip()]

def test_metrics_carry_honest_timing(run):
    path, [(l1, _), (l2, _)] = run
    rows = [r for r in read_metrics(path/'metrics.jsonl') if is_step_row(r)]
    assert [r['step'] for r in rows] == list(range(1, 31))
    for r in rows:
        assert r['step_time_s'] > 0 and r['tok_per_s'] == pytest.approx(4 * 32 / r['step_time_s'])
        assert 0 <= r['eta_low_s'] <= r['eta_s'] <= r['eta_high_s']
    assert {'eval', 'save'} <= set(l2.eta.est.pauses)  # measured (and carried over by the checkpoint)

def test_bar_starts_at_the_resumed_step(run):
    _, [(_, out1), (_, out2)] = run
    assert frames(out1)[0].startswith('train 0/20')
    assert frames(out2)[0].startswith('train 20/30')
    assert any('eta ' in f for f in frames(out2)) and 'eta' not in frames(out2)[-2]  # a finished bar shows no stale ETA
    assert frames(out2)[-1].startswith('done: step 30/30 in ') and 'tok/s' in frames(out2)[-1]

def test_plot_run_on_a_real_run(run):
    path, _ = run
    p = plot_run(path)
    assert p == path/'plot.png' and p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

def test_plot_run_on_odd_metrics(tmp_path):
    "No eval rows, NaN and infinite losses, events, a rewind that goes back, a torn last line"
    rows = []
    for k in range(1, 61):
        step = k if k <= 40 else k - 10
        rows.append(dict(step=step, tokens=step * 64, loss=math.nan if k == 20 else math.inf if k == 21 else 3 - k / 100,
                         loss_ema=None if k < 3 else 3 - k / 100, lr=1e-3, batch_size=4, micro_batch_size=4 if k < 30 else 2,
                         mem_peak_bytes=2**27))
    rows += [dict(step=30, event='oom', micro_batch_size=4), dict(step=40, event='rewind', to_step=30),
             dict(step=10, event='resume', tokens=640)]
    (tmp_path/'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 51, "lo')
    assert plot_run(tmp_path).read_bytes()[:4] == b'\x89PNG'
    with pytest.raises(ValueError, match='not a run folder'): plot_run(tmp_path/'missing')

def test_live_plot_runs_outside_a_kernel(capsys):
    "The live plot (on when asked, or in a Jupyter kernel) redraws at log points without a kernel too"
    from chatgot.progress import ProgressCallback, in_kernel
    from chatgot.learner import Learner
    from chatgot.test_utils import tiny_data, tiny_model
    assert not in_kernel()
    data = tiny_data()
    learn = Learner(tiny_model(data), data, cbs=[EtaCallback(), ProgressCallback(file=io.StringIO(), plot=True, plot_every_s=0)],
                    batch_size=4, seq_len=16, eval_every=10, eval_batches=1)
    learn.recorder.log_every = 5
    learn.fit(10)
    assert capsys.readouterr().out.count('Image object') >= 3  # first draw, two log points, the end
