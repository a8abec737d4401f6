"The `chatgot` command as a newcomer meets it: run as a subprocess, exit codes, one-line errors, what it prints."
import io, json, os, re, subprocess, sys
from pathlib import Path
import pytest
from chatgot.test_utils import tiny_text

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from chatgot.cli import main; sys.argv[0] = 'chatgot'; sys.exit(main())"

def chatgot(*args, cwd=None, env=None):
    "Run `chatgot ARGS` in a fresh process with this checkout first on the path"
    e = {**os.environ, 'PYTHONPATH': str(ROOT), 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([sys.executable, '-c', MAIN, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=300)

def one_line(p, code=2):
    "Exit `code` with exactly one line on stderr and no traceback"
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, p.stderr
    return err

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny run of 12 steps on a toy dialogue, with its output"
    tmp = tmp_path_factory.mktemp('cli')
    (tmp/'c.txt').write_text(tiny_text(800))
    env = {'CHATGOT_CACHE': str(tmp/'cache')}
    p = chatgot('train', '--preset', 'tiny', '--data', tmp/'c.txt', '--steps', 12, '--batch-size', 4, '--seq-len', 32,
                '--eval-every', 6, '--save-every', 6, '--eval-batches', 2, '--log-every', 5, '--device', 'cpu', '--out', tmp/'run',
                cwd=tmp, env=env)
    assert p.returncode == 0, p.stderr
    return tmp, env, p

def test_train_says_where_the_run_is_and_what_next(run):
    tmp, _, p = run
    out = p.stdout.splitlines()
    assert out[0] == f"run folder: {tmp/'run'}"
    text = p.stdout
    assert re.search(r"final val loss \d+\.\d{4}, \d+\.\d{4} bits/byte \(step 12\)", text), text
    assert re.search(r"checkpoints: \d kept in .*weights [\d.]+ MB, optimizer state", text), text
    for cmd in (f"chatgot chat --ckpt {tmp/'run'}", f"chatgot eval --ckpt {tmp/'run'}",
                f"chatgot train --out {tmp/'run'} --resume --steps 24"):
        assert cmd in text, text
    frames = [f for f in p.stderr.replace('\n', '\r').split('\r') if f.startswith('train ')]
    assert any(f.startswith('train 1/12') and 'loss ' in f for f in frames), frames[:5]  # before the first log point
    assert 'eta' not in frames[-1], frames[-1]  # the finished bar has no stale ETA
    ckpts = sorted(p.name for p in (tmp/'run'/'checkpoints').glob('step-*'))
    assert 1 <= len(ckpts) <= 2 and ckpts[-1] == 'step-0000012'  # keep_last 1, plus the best by val loss

WIDE = {'COLUMNS': '200'}  # argparse wraps help to the terminal ($COLUMNS): one width wherever pytest runs (xdist workers have none)

def test_version_and_help():
    from chatgot import __version__
    p = chatgot('--version')
    assert p.returncode == 0 and p.stdout.strip() == f"chatgot {__version__}"
    p = chatgot('--help', env=WIDE)
    assert p.returncode == 0
    for cmd in ('train', 'generate', 'chat', 'eval', 'plot', 'runs'):
        assert re.search(rf"^  {cmd}\s+\w", p.stdout, re.M), p.stdout  # each command, with a description
    p = chatgot('chat', '--help', env=WIDE)
    assert p.returncode == 0 and '--as ' in p.stdout and '--as-name' not in p.stdout
    p = chatgot('train', '--help', env=WIDE)
    opts = re.findall(r"^  (--[\w-]+)(.*(?:\n {10,}.*)*)", p.stdout, re.M)
    assert len(opts) >= 28
    for name, text in opts:
        assert text.strip(), name  # every flag has a help text
        if '(' in text.split()[0]: assert '(default: ' in text, (name, text)  # every flag that takes a value shows its default
    assert re.search(r"--keep-last .*\(default: 1\)", p.stdout) and 'runs/<timestamp>' in p.stdout

def test_bad_out_and_resume(tmp_path, capsys):
    (tmp_path/'notes.txt').write_text('mine')
    assert 'is a file, not a folder' in one_line(chatgot('train', '--preset', 'tiny', '--out', tmp_path/'notes.txt', cwd=tmp_path))
    from chatgot.cli import main  # the other cases in this process: the same code, without a torch import each
    def err(*argv):
        assert main(list(map(str, argv))) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1, e
        return e
    assert 'holds other files (notes.txt) but no run' in err('train', '--preset', 'tiny', '--out', tmp_path)
    old = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert '--resume needs --out RUN' in err('train', '--resume')
    finally: os.chdir(old)
    assert not (tmp_path/'runs').exists()  # no timestamp folder invented
    assert 'holds no run' in err('train', '--resume', '--out', tmp_path)
    assert 'does not exist' in err('train', '--resume', '--out', tmp_path/'nowhere')

def test_resume_on_other_data(run):
    tmp, env, _ = run
    (tmp/'other.txt').write_text(tiny_text(300, seed=1))
    err = one_line(chatgot('train', '--out', tmp/'run', '--resume', '--steps', 14, '--data', tmp/'other.txt', cwd=tmp, env=env))
    assert 'this run was trained on other data' in err and 'n_tokens' not in err

def test_runs_lists_runs(run):
    tmp, _, _ = run
    (tmp/'broken').mkdir(exist_ok=True)
    (tmp/'broken'/'config.json').write_text(json.dumps({'flags': {'steps': 50}}))
    (tmp/'broken'/'metrics.jsonl').write_bytes(b'{"step": 5, "loss": 3.1, "lr": 0.001}\n\xff\xfe garbage\n{"step": 6, "event": "spike", "loss": 9}\n{"step": 7')
    os.utime(tmp/'broken'/'metrics.jsonl', (0, 0))
    p = chatgot('runs', tmp)
    assert p.returncode == 0, p.stderr
    lines = {l.split()[0]: l for l in p.stdout.splitlines()[1:]}
    assert re.search(r"12/12\s+\d+\.\d{4}\s+[\d.]+MB\s+finished", lines[str(tmp/'run')]), p.stdout
    assert re.search(r"5/50\s+-\s+.*interrupted, no checkpoint", lines[str(tmp/'broken')]), p.stdout
    (tmp/'empty').mkdir(exist_ok=True)
    assert 'no runs in' in chatgot('runs', tmp/'empty').stdout
    assert 'no such folder' in one_line(chatgot('runs', tmp/'nowhere'))

def test_eval_report(run):
    tmp, env, _ = run
    p = chatgot('eval', '--ckpt', tmp/'run', cwd=tmp, env=env)
    assert p.returncode == 0, p.stderr
    assert 'lower is better' in p.stdout and 'mean_len' not in p.stdout
    assert 'higher: more varied' in p.stdout and 'lower: less repetitive' in p.stdout
    assert len(re.findall(r"^  [A-Z]+: / ", p.stdout, re.M)) == 3, p.stdout  # three samples shown
    (tmp/'odd.txt').write_text(tiny_text(300).replace('e', 'é'))
    p = chatgot('eval', '--ckpt', tmp/'run', '--data', tmp/'odd.txt', cwd=tmp, env=env)
    assert p.returncode == 0, p.stderr
    assert re.search(r"warning: [\d,]+ characters of .* are not in the model's vocabulary", p.stderr), p.stderr

class _Tty(io.StringIO):
    def isatty(self): return True

def test_chat_ctrl_d_ends_the_line(run, monkeypatch, capsys, one_thread):
    "Ctrl-D (EOF) at the `YOU:` prompt of a terminal chat leaves the shell prompt on a line of its own"
    from chatgot.cli import main
    tmp, _, _ = run
    monkeypatch.setattr(sys, 'stdin', _Tty(''))
    assert main(['chat', '--ckpt', str(tmp/'run'), '--as', 'king']) == 0
    assert capsys.readouterr().out.endswith('YOU: \n')

def test_progress_bar_survives_event_rows(one_thread):
    "An event row with a loss but no `lr` (a spike) after the last step row used to crash the bar with KeyError 'lr'"
    from chatgot.eta import EtaCallback
    from chatgot.progress import ProgressCallback
    from chatgot.learner import Callback, Learner
    from chatgot.test_utils import tiny_data, tiny_model
    class Spike(Callback):
        order = 50
        def after_step(self):
            if self.step % 5 == 0: self.recorder.event('spike', loss=9.)
    data, buf = tiny_data(), io.StringIO()
    learn = Learner(tiny_model(data), data, cbs=[EtaCallback(), Spike(), ProgressCallback(file=buf, plot=False)],
                    batch_size=4, seq_len=16, total_steps=10)
    learn.recorder.log_every = 5
    learn.fit(10)
    assert 'loss ' in buf.getvalue() and buf.getvalue().rstrip().splitlines()[-1].startswith('done: step 10/10')
