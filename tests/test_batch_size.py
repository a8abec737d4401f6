"OOM recovery by the micro-batch controller: injected and real allocation failures leave the run unchanged, never loop, and survive a resume."
import json, os, random, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from chatgot.batch_size import MemoryBudgetError, MicroBatchController, size_ladder
from chatgot.test_utils import InjectOOM
from chatgot.grad_ckpt import enable_gradient_checkpointing
from chatgot.learner import Callback, CancelFitException, Learner
from chatgot.test_utils import tiny_data, tiny_model, tiny_text
from chatgot.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = tiny_data()

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py

class Trace(Callback):
    "Per step: the batch it trained on and the micro-batch it used"
    order = 0  # before the controller (10) picks the next step's size
    def __init__(self): self.batches, self.sizes = [], []
    def after_step(self): self.batches.append(self.xb.clone()); self.sizes.append(self.micro_batch_size)

def run(cbs=(), steps=16, bs=16, T=32, **kw):
    torch.manual_seed(0)
    l = Learner(tiny_model(DATA), DATA, cbs=[Trace(), *cbs], batch_size=bs, seq_len=T, warmup=2, eval_batches=1, **kw)
    l.fit(steps)
    return l

@pytest.fixture(scope='module')
def reference(): return run([MicroBatchController(verbose=False)])

@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_random_ooms_give_the_same_run(reference, seed):
    "OOMs at random micro-batch sizes (on or off ladder, forward or backward): same steps, batches, tokens and losses"
    rng = random.Random(seed)
    limits = {s: rng.choice([None, None, 1, 2, 3, 5, 7, 9, 15]) for s in range(1, 17)}
    inj = InjectOOM(limits.get, where=rng.choice(['forward', 'backward']), block=rng.choice([0, -1]))
    l = run([inj, MicroBatchController(stable_steps=rng.choice([1, 2, 3]), verbose=False)])
    assert inj.n_raised > 0 and l.micro_batch_controller.n_oom == inj.n_raised  # the check is not vacuous
    assert (l.step, l.tokens, len(l.recorder.losses)) == (reference.step, reference.tokens, 16)
    assert all(torch.equal(a, b) for a, b in zip(l.trace.batches, reference.trace.batches))
    assert all(limits[s] is None or m <= limits[s] for s, m in enumerate(l.trace.sizes, 1))  # it ran at a size that fits
    torch.testing.assert_close(torch.tensor(l.recorder.losses), torch.tensor(reference.recorder.losses), rtol=1e-5, atol=1e-5)
    assert l.oom is None

_child = textwrap.dedent(r'''
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from chatgot.learner import Learner
    from chatgot.memory import proc_bytes
    from chatgot.batch_size import MicroBatchController
    from chatgot.test_utils import tiny_data, tiny_model
    data = tiny_data()
    def learner():
        torch.manual_seed(0)
        return Learner(tiny_model(data), data, cbs=[MicroBatchController(stable_steps=3, verbose=False)],
                       batch_size=32, seq_len=64, warmup=2, eval_batches=1)
    ref = learner(); ref.fit(10)
    need = ref.mem_peak - ref.mem_base  # one full-batch step; RSS follows the tensors (MALLOC_MMAP_THRESHOLD_)
    l = learner()
    limit = proc_bytes('VmSize') + int(need * 0.4)  # the full batch cannot fit, a quarter of it can
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    l.fit(10)
    print(json.dumps(dict(need=need, ref=ref.recorder.losses, losses=l.recorder.losses, step=l.step,
                          sizes=[r['micro_batch_size'] for r in l.recorder.rows if r.get('kind') == 'step'],
                          events=[r for r in l.recorder.rows if 'event' in r])))
''')

def test_real_allocation_failure_recovers():
    "A child process under an address-space limit gets real `can't allocate memory` errors and recovers the same way"
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536', 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-c', _child], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    ooms = [e for e in out['events'] if e['event'] == 'oom']
    assert ooms and ooms[0]['micro_batch_size'] == 32 and all(e['action'] == 'halve' for e in ooms)
    assert all(e['error'] == 'RuntimeError' and e['tried_bytes'] > 0 for e in ooms)  # the CPU allocator's own error
    assert out['step'] == 10 and len(out['losses']) == 10 and min(out['sizes']) < 32
    torch.testing.assert_close(torch.tensor(out['losses']), torch.tensor(out['ref']), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('ckpt_before', [False, True])
def test_no_retry_loop_when_nothing_fits(ckpt_before):
    "Every size failing: halve to 1, checkpointing once (unless already on), then a clear `MemoryBudgetError`"
    torch.manual_seed(0)
    m = tiny_model(DATA)
    if ckpt_before: enable_gradient_checkpointing(m)
    inj = InjectOOM(0)
    l = Learner(m, DATA, cbs=[inj, MicroBatchController(verbose=False)], batch_size=16, seq_len=32)
    with pytest.raises(MemoryBudgetError, match=r'^out of memory at micro-batch 1 even with gradient checkpointing on cpu: the step needed more than'):
        l.fit(5)
    assert inj.n_raised == len(size_ladder(16)) + (0 if ckpt_before else 1)
    assert [e['action'] for e in l.recorder.rows if e.get('event') == 'oom'][-1] == 'stop' and l.step == 0

def test_learner_bounds_retries_of_a_broken_handler(monkeypatch):
    "A handler that asks for retries without changing anything cannot loop forever"
    monkeypatch.setattr(Learner, 'max_oom_retries', 5)  # each retry runs a full gc.collect: keep the test short
    class Retry(Callback):
        def after_oom(self): self.learn.oom_retry = True
    inj = InjectOOM(2, where='forward')
    with pytest.raises(RuntimeError, match="can't allocate memory"): run([inj, Retry()], steps=1, bs=4)
    assert inj.n_raised == Learner.max_oom_retries + 1

class StopAt(Callback):
    order = 100  # after every other callback has seen the step
    def __init__(self, at): self.at = at
    def after_step(self):
        if self.step == self.at: raise CancelFitException()

class Start(Callback):
    order = 20  # after the controller set the micro-batch
    def before_fit(self): self.micro_batch_size_at_start = self.micro_batch_size

def test_resume_keeps_the_learned_micro_batch(tmp_path, monkeypatch):
    "Through train() and a real checkpoint: a resumed run starts at the learned size and ends bitwise like an uninterrupted one"
    monkeypatch.setenv('CHATGOT_CACHE', str(tmp_path/'cache'))
    (tmp_path/'c.txt').write_text(tiny_text(600))
    flags = dict(data=str(tmp_path/'c.txt'), preset='tiny', steps=14, batch_size=8, seq_len=32, save_every=4, eval_every=0)
    cbs = lambda: [InjectOOM(2, steps=range(3, 7)), MicroBatchController(stable_steps=3, verbose=False), Start()]
    full = train(out=tmp_path/'full', quiet=True, cbs=cbs(), **flags)
    a = train(out=tmp_path/'run', quiet=True, cbs=cbs() + [StopAt(5)], **flags)
    assert (a.step, a.micro_batch_size) == (5, 2)
    b = train(out=tmp_path/'run', resume=True, quiet=True, cbs=cbs())
    assert b.start.micro_batch_size_at_start == 2  # not the full batch again
    assert b.micro_batch_controller.state_dict() == full.micro_batch_controller.state_dict()
    sizes = lambda d: [r['micro_batch_size'] for r in map(json.loads, (d/'metrics.jsonl').read_text().splitlines()) if r.get('kind') == 'step']
    assert sizes(tmp_path/'run') == sizes(tmp_path/'full') and min(sizes(tmp_path/'full')) == 2
    fw, bw = full.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(fw[k], bw[k]) for k in fw)
