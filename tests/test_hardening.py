"""A run never dies from its own machinery: the scenarios of the hardening issue, each from outside the library."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest, torch
from chatgot.batch_size import MemoryBudgetError
from chatgot.checkpoint import find_checkpoint, list_checkpoints
from chatgot.learner import Callback
from chatgot.callback import read_jsonl
from chatgot.memory import OutOfMemoryStop
from chatgot.test_utils import tiny_text
from chatgot.train import train

TINY = dict(preset='tiny', batch_size=4, seq_len=32, eval_batches=2, log_every=5)

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus'); (d/'c.txt').write_text(tiny_text(800)); return d/'c.txt'

@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('CHATGOT_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))

def cli(tmp, *args, pre=''):
    code = pre + '\nimport sys\nfrom chatgot.cli import main\nsys.exit(main(sys.argv[1:]))'
    env = {**os.environ, 'CHATGOT_CACHE': str(tmp/'cache'), 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)

def steps(run): return sorted({r['step'] for r in read_jsonl(run/'metrics.jsonl', warn=None) if r.get('kind') == 'step'})

# 30 infinite losses in bf16 with the progress bar on (it used to die at a refresh with KeyError: 'lr')
INF_LOSSES = textwrap.dedent('''
    import torch, chatgot.model as m
    _fwd, n = m.GPT.forward, [0]
    def fwd(self, idx, targets=None, *a, **k):
        logits, loss = _fwd(self, idx, targets, *a, **k)
        if self.training and loss is not None:
            n[0] += 1
            if n[0] % 4 == 0 and n[0] <= 120: loss = loss * float('inf')
        return logits, loss
    m.GPT.forward = fwd
''')

def test_inf_losses_in_bf16_with_progress(corpus, tmp_path, one_thread):
    run = tmp_path/'run'
    r = cli(tmp_path, 'train', '--data', corpus, '--preset', 'baby', '--precision', 'bf16', '--steps', '90', '--out', run,
            '--batch-size', '4', '--seq-len', '32',  # small: CPUs without native bf16 emulate it (49 s at 16 x 64 in CI)
            '--eval-every', '45', '--eval-batches', '2', pre=INF_LOSSES)
    assert r.returncode == 0, r.stderr[-2000:]
    assert steps(run)[-1] == 90
    rows = read_jsonl(run/'metrics.jsonl')
    assert sum(r.get('event') == 'nonfinite' for r in rows) >= 20  # the losses were bad, and logged, and the run went on
    assert not any(r.get('event') == 'observer_error' for r in rows), [r for r in rows if r.get('event') == 'observer_error']
    for line in (run/'metrics.jsonl').read_text().splitlines():  # strict JSON: no NaN/Infinity literals
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))

class Broken(Callback):
    "An observer with a bug: it raises at step 7"
    observer, order = True, 50
    def after_step(self):
        if self.step == 7: raise KeyError('lr')

def test_a_failing_observer_is_switched_off(corpus, tmp_path, one_thread):
    learn = train(out=tmp_path/'run', data=str(corpus), steps=20, cbs=[Broken()], quiet=True, **TINY)
    assert learn.step == 20 and not hasattr(learn, 'broken')
    ev = [r for r in read_jsonl(tmp_path/'run'/'metrics.jsonl') if r.get('event') == 'observer_error']
    assert [(e['callback'], e['where'], e['step']) for e in ev] == [('Broken', 'after_step', 7)]

class Meddler(Callback):
    "A callback that changes training and has a bug: it must stop the run loudly, with its own error"
    order = 10
    def before_fit(self): raise ValueError('meddler is broken')

def test_first_error_is_the_one_reported(corpus, tmp_path):
    with pytest.raises(ValueError, match='meddler is broken'):  # not `AttributeError: _old` from a finally_fit
        train(out=tmp_path/'run', data=str(corpus), steps=5, cbs=[Meddler()], quiet=True, **TINY)

def test_torn_metrics_line_then_resume(corpus, tmp_path, one_thread):
    run = tmp_path/'run'
    train(out=run, data=str(corpus), steps=20, save_every=10, quiet=True, **TINY)
    with open(run/'metrics.jsonl', 'a') as f: f.write('{"kind": "step", "step": 21, "lo')  # a power cut mid-line
    learn = train(out=run, resume=True, steps=40, quiet=True)
    assert learn.step == 40 and steps(run) == list(range(1, 41))
    assert (run/'metrics.jsonl').read_text().endswith('\n')
    assert all(json.loads(l) for l in (run/'metrics.jsonl').read_text().splitlines())  # the torn line is gone

def test_split_does_not_move_with_the_seed(corpus, tmp_path, one_thread):
    a = train(out=tmp_path/'a', data=str(corpus), steps=1, seed=0, quiet=True, **TINY)
    b = train(out=tmp_path/'b', data=str(corpus), steps=1, seed=1, quiet=True, **TINY)
    assert np.array_equal(a.data.val, b.data.val) and np.array_equal(a.data.train, b.data.train)
    c = train(out=tmp_path/'c', data=str(corpus), steps=1, val_fraction=0.2, quiet=True, **TINY)
    assert len(c.data.val) > 1.5 * len(a.data.val)

class AlwaysOOM(Callback):
    "From step 6 on, every forward runs out of memory, whatever the micro-batch"
    order = -30
    def before_micro_batch(self):
        if self.learn.step >= 5: raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

def test_oom_nothing_fixes_stops_with_a_checkpoint(corpus, tmp_path, one_thread):
    run = tmp_path/'run'
    with pytest.raises(MemoryBudgetError, match='out of memory at micro-batch 1'):  # the controller tried every size first
        train(out=run, data=str(corpus), steps=20, save_every=100, cbs=[AlwaysOOM()], quiet=True, **TINY)
    ck, meta = find_checkpoint(run/'checkpoints')
    assert meta['step'] == 5
    learn = train(out=run, resume=True, quiet=True)  # without the fault it goes on to the end
    assert learn.step == 20 and steps(run) == list(range(1, 21))

NO_SPACE_AT_END = textwrap.dedent('''
    import torch
    _save, n = torch.save, [0]
    def save(obj, f, *a, **k):
        if obj.get('step') == 10: raise OSError(28, 'No space left on device')
        _save(obj, f, *a, **k)
    torch.save = save
''')

class OOMInOptStep(Callback):
    "Every optimizer step from step 6 on runs out of memory: retries cannot fix it"
    order = -30
    def before_fit(self):
        real = self.learn.opt.step
        def step(*a, **k):
            if self.learn.step >= 5: raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB (injected)")
            return real(*a, **k)
        self.learn.opt.step = step

def test_oom_in_the_optimizer_step_nothing_fixes(corpus, tmp_path, one_thread):
    run = tmp_path/'run'
    with pytest.raises(OutOfMemoryStop, match='out of memory in step 6 after every retry.*stopped at step 5 with a checkpoint'):
        train(out=run, data=str(corpus), steps=20, save_every=100, cbs=[OOMInOptStep()], quiet=True, **TINY)
    assert find_checkpoint(run/'checkpoints')[1]['step'] == 5
    assert [e['retry'] for e in read_jsonl(run/'metrics.jsonl') if e.get('event') == 'oom'] == [1, 2, 3]
    learn = train(out=run, resume=True, quiet=True)
    assert learn.step == 20

def test_full_disk_mid_run_and_at_the_end(corpus, tmp_path):
    run = tmp_path/'run'
    common = ['--data', corpus, '--preset', 'tiny', '--batch-size', '4', '--seq-len', '32', '--eval-batches', '2', '--keep-last', '5', '--out', run]
    r = cli(tmp_path, 'train', *common, '--steps', '20', '--save-every', '5', pre=NO_SPACE_AT_END)  # step 10's save fails
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'could not save the checkpoint of step 10' in r.stderr
    assert {p.name for p in list_checkpoints(run/'checkpoints')} >= {'step-0000015', 'step-0000020'}
    assert any(e.get('event') == 'save_failed' and e['step'] == 10 for e in read_jsonl(run/'metrics.jsonl'))
    run2 = tmp_path/'run2'
    r = cli(tmp_path, 'train', *common[:-1], run2, '--steps', '10', '--save-every', '100', pre=NO_SPACE_AT_END)  # the final save fails
    assert r.returncode == 1 and 'could not save the checkpoint of step 10' in r.stderr
    assert 'could not save' in r.stderr.strip().splitlines()[-1] and 'Traceback' not in r.stderr

@pytest.fixture
def small_disk(tmp_path):
    "A real 1.5 MiB filesystem (tmpfs): a tiny run's second checkpoint (0.93 MB each) does not fit beside its first"
    d = tmp_path/'disk'; d.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1536k', 'tmpfs', str(d)], capture_output=True).returncode:
        pytest.skip('needs root to mount a small tmpfs')
    yield d
    subprocess.run(['umount', '-l', str(d)], capture_output=True)

def test_a_really_full_disk(corpus, tmp_path, small_disk):
    "No monkeypatch: the disk fills up; torch.save and safetensors fail with their own errors (not OSError)"
    run = small_disk/'run'
    common = ['--preset', 'tiny', '--batch-size', '4', '--seq-len', '32', '--eval-batches', '2', '--out', run]
    r = cli(tmp_path, 'train', '--data', corpus, *common, '--steps', '20', '--save-every', '5')
    assert r.returncode == 1, r.stderr[-2000:]                       # every step trained; only the final save failed
    assert 'could not save the checkpoint of step 20' in r.stderr.strip().splitlines()[-1] and 'Traceback' not in r.stderr
    assert 'training goes on' in r.stderr                            # the saves between failed without stopping the run
    ck, meta = find_checkpoint(run/'checkpoints')                    # the good checkpoint is intact, no temp folder left
    assert meta['step'] == 5 and not list((run/'checkpoints').glob('.tmp-*'))
    assert steps(run)[-1] == 20
    subprocess.run(['mount', '-o', 'remount,size=64M', str(small_disk)], check=True)  # the user frees some space
    r = cli(tmp_path, 'train', '--out', run, '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    assert find_checkpoint(run/'checkpoints')[1]['step'] == 20

def test_a_run_made_before_this_round_still_resumes_and_loads(tmp_path, one_thread):
    "tests/data/run_before_split: written by the previous version (seeded token split, old callback names in state.pt)"
    from chatgot.checkpoint import load_for_inference
    from chatgot.generate import generate_text
    import shutil
    run = tmp_path/'run'; shutil.copytree(Path(__file__).parent/'data'/'run_before_split', run)
    (tmp_path/'c.txt').write_text(tiny_text(300))       # the corpus it was trained on (its config names a /tmp path)
    model, tok, meta = load_for_inference(run, device='cpu')
    assert meta['step'] == 10 and generate_text(model, tok, 'KING:\n', max_new_tokens=8, seed=0)[0]
    learn = train(out=run, resume=True, data=str(tmp_path/'c.txt'), steps=14, quiet=True)
    assert learn.step == 14 and learn.data.val.shape[0] > 0
    assert learn.loss_trend.n_seen == 14  # its state (saved as 'losstrend', now `learn.loss_trend`) was restored
    assert json.loads((run/'config.json').read_text())['flags']['val_fraction'] is None  # it keeps its old split
    assert steps(run)[-1] == 14
