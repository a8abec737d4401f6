"Kill-and-resume, corrupted and malicious checkpoints, signals and exit codes, through the real CLI."
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from chatgot.callback import read_jsonl
from chatgot.test_utils import tiny_text

STEPS = 40
FLAGS = ['--preset', 'tiny', '--steps', str(STEPS), '--batch-size', '4', '--seq-len', '32',
         '--save-every', '10', '--eval-every', '20', '--eval-batches', '2', '--log-every', '5', '--keep-last', '10']

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus')
    (d/'c.txt').write_text(tiny_text(800))
    return d/'c.txt'

def env(tmp):
    return {**os.environ, 'CHATGOT_CACHE': str(tmp/'cache'), 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}

def cli(tmp, *args, pre='', timeout=300):
    "Run `chatgot` in a child process; `pre` is Python run before the CLI (to inject faults)"
    code = pre + '\nimport sys\nfrom chatgot.cli import main\nsys.exit(main(sys.argv[1:]))'
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True,
                          env=env(tmp), timeout=timeout)

def weights(run, step=STEPS): return load_file(run/'checkpoints'/f'step-{step:07d}'/'model.safetensors')
def losses(run): return {r['step']: r['loss'] for r in read_jsonl(run/'metrics.jsonl', warn=None) if r.get('kind') == 'step'}
def same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ref')
    r = cli(tmp, 'train', '--data', corpus, '--out', tmp/'run', *FLAGS)
    assert r.returncode == 0, r.stderr
    return tmp/'run'

def test_reference_run_layout(reference):
    assert {'config.json', 'metrics.jsonl', 'checkpoints'} <= {p.name for p in reference.iterdir()}
    l = losses(reference)
    assert sorted(l) == list(range(1, STEPS + 1))
    assert l[STEPS] < l[1]

# a SIGKILL from inside the checkpoint writer, part way through state.pt
KILL_IN_SAVE = textwrap.dedent('''
    import os, signal, torch
    _save = torch.save
    def dying_save(obj, f, *a, **k):
        _save(obj, f, *a, **k)
        if obj['step'] == {step}:
            b = open(f, 'rb').read(); open(f, 'wb').write(b[:len(b) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
''')

@pytest.mark.parametrize('step', [20, 30])
def test_kill_inside_checkpoint_write_then_resume(corpus, reference, tmp_path, step):
    run = tmp_path/'run'
    r = cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS, pre=KILL_IN_SAVE.format(step=step))
    assert r.returncode == -signal.SIGKILL
    assert not (run/'checkpoints'/f'step-{step:07d}').exists()  # the half-written one never got its name
    assert (run/'checkpoints'/'latest').read_text().strip() == f'step-{step - 10:07d}'
    r = cli(tmp_path, 'train', '--out', run, '--resume')
    assert r.returncode == 0, r.stderr
    assert same(weights(run), weights(reference))
    assert losses(run) == losses(reference)
    assert not list((run/'checkpoints').glob('.tmp-*'))

# each step made slower from outside, so that a kill at a random moment lands mid-run
SLOW_STEPS = textwrap.dedent('''
    import time, chatgot.learner as L
    _step = L.Learner._do_step
    def slow(self): time.sleep(0.03); _step(self)
    L.Learner._do_step = slow
''')

@pytest.mark.parametrize('seed', [0, 1])
def test_kill_at_a_random_moment_then_resume(corpus, reference, tmp_path, seed):
    import random
    run = tmp_path/'run'
    code = SLOW_STEPS + '\nimport sys\nfrom chatgot.cli import main\nsys.exit(main(sys.argv[1:]))'
    p = subprocess.Popen([sys.executable, '-c', code, 'train', '--data', str(corpus), '--out', str(run), *FLAGS],
                         env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run/'checkpoints'/'step-0000010').exists(): time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0, 0.6))  # 30 steps of >= 30 ms are left: the kill lands mid-run
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL                                 # it was killed, it did not finish
    assert not (run/'checkpoints'/f'step-{STEPS:07d}').exists() and max(losses(run)) < STEPS
    r = cli(tmp_path, 'train', '--out', run, '--resume')
    assert r.returncode == 0, r.stderr
    assert same(weights(run), weights(reference))
    assert losses(run) == losses(reference)

def test_corrupt_newest_checkpoint_falls_back(corpus, reference, tmp_path):
    run = tmp_path/'run'
    assert cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS).returncode == 0
    f = run/'checkpoints'/f'step-{STEPS:07d}'/'model.safetensors'
    b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))
    r = cli(tmp_path, 'train', '--out', run, '--resume')
    assert r.returncode == 0, r.stderr
    assert f'step-{STEPS:07d}' in r.stdout and 'corrupt' in r.stdout and f'trying step-{STEPS - 10:07d}' in r.stdout
    assert same(weights(run), weights(reference))  # redone from step 30, bit for bit
    assert losses(run) == losses(reference)

def test_malicious_state_is_refused(corpus, tmp_path):
    run = tmp_path/'run'
    assert cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS, '--steps', '10').returncode == 0
    ck, marker = run/'checkpoints'/'step-0000010', tmp_path/'pwned'
    code = textwrap.dedent(f'''
        import json, os, torch
        from chatgot.checkpoint import sha256
        class Evil:
            def __reduce__(self): return (os.system, ('touch {marker}',))
        torch.save({{'step': Evil()}}, '{ck}/state.pt')
        m = json.load(open('{ck}/meta.json')); m['files']['state.pt'] = sha256('{ck}/state.pt')
        json.dump(m, open('{ck}/meta.json', 'w'))
    ''')
    subprocess.run([sys.executable, '-c', code], check=True, env=env(tmp_path))
    r = cli(tmp_path, 'train', '--out', run, '--resume', '--steps', '20')
    assert r.returncode == 2
    assert 'refused' in r.stderr and 'Traceback' not in r.stderr
    assert not marker.exists()
    assert (ck/'state.pt').exists()  # nothing deleted

def test_wrong_config_checkpoint_is_exit_2(corpus, tmp_path):
    run = tmp_path/'run'
    assert cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS, '--steps', '10').returncode == 0
    before = sorted(p.name for p in (run/'checkpoints').iterdir())
    r = cli(tmp_path, 'train', '--out', run, '--resume', '--n-layer', '3', '--steps', '20')
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and 'n_layer' in r.stderr
    assert sorted(p.name for p in (run/'checkpoints').iterdir()) == before

def test_existing_run_is_not_overwritten(corpus, tmp_path):
    run = tmp_path/'run'
    assert cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS, '--steps', '10').returncode == 0
    before = (run/'metrics.jsonl').read_text()
    r = cli(tmp_path, 'train', '--data', corpus, '--out', run, *FLAGS)
    assert r.returncode == 2 and 'already holds a run' in r.stderr
    assert (run/'metrics.jsonl').read_text() == before

def test_sigint_saves_and_exits_130(corpus, tmp_path):
    run = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-m', 'chatgot.cli', 'train', '--data', str(corpus), '--out', str(run),
                          *FLAGS, '--steps', '100000', '--save-every', '100000'],
                         env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run/'metrics.jsonl').exists(): time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    ck = (run/'checkpoints'/'latest').read_text().strip()
    step = int(ck.split('-')[1])
    assert step >= 5 and 'SIGINT' in err
    assert max(losses(run)) == step  # metrics flushed up to the saved step

@pytest.mark.parametrize('args,needle', [
    (['--data', '/no/such/corpus.txt'], 'no/such/corpus.txt'),
    (['--preset', 'huge'], 'unknown preset'),
    (['--lr', '-1'], '--lr'),
    (['--micro-batch-size', '0'], '--micro-batch-size'),
    (['--bogus-flag', '1'], 'unrecognized arguments'),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    r = cli(tmp_path, 'train', '--preset', 'tiny', '--out', tmp_path/'run', *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path/'run'/'checkpoints').exists()

def test_debug_shows_traceback(tmp_path):
    r = cli(tmp_path, 'train', '--preset', 'tiny', '--data', '/no/such/corpus.txt', '--debug')
    assert r.returncode == 2 and 'Traceback' in r.stderr
