"""Chaos: many short runs, each with a random schedule of faults injected from outside the library, each resumed
until it finishes; nothing may be lost. `CHATGOT_CHAOS_RUNS=200 python -m pytest tests/test_chaos.py -s` is the
long version (DEBUG_LOG.md has its table); CI runs a short seeded subset.

Per run the schedule mixes: OOM at random sites (forward, backward, clipping, optimizer step, evaluation, sample),
NaN/Inf losses and loss spikes, a failing observer, a full disk on a checkpoint write, SIGKILL inside a checkpoint
write or at a random moment, and a torn last line in metrics.jsonl after a kill.
Asserted for every run: it finishes all steps, its weights are finite, the newest checkpoint is the last step and
verifies, the best checkpoint by validation loss is still there, retention kept what it should; and for schedules that
do not change the arithmetic (kills, torn lines, full disks, a failing observer) the final weights and every step's
loss are bitwise those of an uninterrupted run.
"""
import collections, json, math, os, random, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from chatgot.checkpoint import abandoned_sets, best_checkpoint, list_checkpoints, verify_checkpoint
from chatgot.callback import read_jsonl
from chatgot.test_utils import tiny_text

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from chaos_child import FLAGS, STEPS

N_RUNS = int(os.environ.get('CHATGOT_CHAOS_RUNS', '4'))
START = int(os.environ.get('CHATGOT_CHAOS_START', '0'))  # schedule number of the first run (the long version in parts)
MATH = ['oom_fwd', 'oom_bwd', 'oom_clip', 'oom_opt', 'oom_eval', 'oom_sample', 'nan', 'inf', 'spike']
NEUTRAL = ['observer']

def env(tmp): return {**os.environ, 'CHATGOT_CACHE': str(tmp/'cache'), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}

def life(tmp, run, corpus, faults, resume, kill_after=None):
    "One process of a run; `kill_after`: SIGKILL it that many seconds after its first metrics row"
    cmd = [sys.executable, str(HERE/'chaos_child.py'), str(run), str(corpus), json.dumps(faults)] + (['--resume'] if resume else [])
    p = subprocess.Popen(cmd, env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_mid_run = False
    if kill_after is not None:
        t_end = time.time() + 120
        while time.time() < t_end and p.poll() is None and not (run/'metrics.jsonl').exists(): time.sleep(0.02)
        time.sleep(kill_after)
        if p.poll() is None: p.send_signal(signal.SIGKILL); killed_mid_run = True
    out, err = p.communicate(timeout=300)
    return p.returncode, err, killed_mid_run

def schedule(rng:random.Random) -> dict:
    "A random fault schedule: step faults for the first life, process faults around it"
    faults = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(MATH + NEUTRAL if rng.random() < 0.6 else NEUTRAL)
        step = rng.choice([10, 20, 30, 40] if kind == 'oom_eval' else [20, 40] if kind == 'oom_sample' else range(1, STEPS + 1))
        faults.append(dict(kind=kind, at=step))
    if rng.random() < 0.35: faults.append(dict(kind='enospc', at=rng.randint(1, 9)))
    if rng.random() < 0.35: faults.append(dict(kind='kill_in_save', at=rng.randint(1, 8)))
    return dict(faults=faults, kill_after=rng.uniform(0, 2.5) if rng.random() < 0.5 else None, torn=rng.random() < 0.6)

def step_losses(run):
    last = {}
    for r in read_jsonl(run/'metrics.jsonl', warn=None):
        if r.get('kind') == 'step': last[r['step']] = r['loss']
    return last

def weights(ck): return load_file(ck/'model.safetensors')

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('chaos'); (d/'c.txt').write_text(tiny_text(800)); return d/'c.txt'

@pytest.fixture(scope='module')
def reference(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ref')
    rc, err, _ = life(tmp, tmp/'run', corpus, [], False)
    assert rc == 0, err
    return tmp/'run'

def run_one(i, corpus, reference, tmp):
    rng = random.Random(1000 + i)
    sch, run = schedule(rng), tmp/f'run{i}'
    kinds = collections.Counter()
    lives, outcomes = 0, []
    faults, kill_after, resume = sch['faults'], sch['kill_after'], False
    while lives < 5:
        rc, err, killed = life(tmp, run, corpus, faults, resume, kill_after)
        lives += 1
        outcomes.append(rc)
        if killed: kinds['kill'] += 1
        if rc == 0: break
        # allowed endings of a life: killed (by us or inside a save), or a final save that hit the full disk
        assert rc == -signal.SIGKILL or (rc == 1 and 'could not save the checkpoint' in err and err.strip().count('\n') < 3), \
            f"run {i} life {lives}: rc {rc}\n{err[-3000:]}"
        if sch['torn'] and (run/'metrics.jsonl').exists():
            with open(run/'metrics.jsonl', 'a') as f: f.write('{"kind": "step", "step": 9')
            kinds['torn'] += 1
        # later lives: the step faults again (they fire where steps are redone), no kills, no disk faults
        faults, kill_after, resume = [f for f in sch['faults'] if f['kind'] in MATH + NEUTRAL], None, (run/'config.json').exists()
    assert outcomes[-1] == 0, f"run {i} never finished: {outcomes}"
    fired = tmp/f'run{i}.fired'
    if fired.exists(): kinds.update(fired.read_text().split())
    ck = run/'checkpoints'
    latest = ck/(ck/'latest').read_text().strip()
    assert latest.name == f'step-{STEPS:07d}', latest
    verify_checkpoint(latest)
    w = weights(latest)
    assert all(t.isfinite().all() for t in w.values()), f"run {i}: non-finite weights"
    losses = step_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1)), f"run {i}: step rows {sorted(losses)}"
    # retention: at most keep_last live checkpoints plus the best; the best by val loss of the final log is kept
    live = list_checkpoints(ck)
    assert len(live) <= FLAGS['keep_last'] + 1, [p.name for p in live]
    rows = read_jsonl(run/'metrics.jsonl', warn=None)
    failed = {r['step'] for r in rows if r.get('event') == 'save_failed'}
    evals = {r['step']: r['val_loss'] for r in rows if r.get('kind') == 'eval' and r['step'] % FLAGS['save_every'] == 0}
    best = best_checkpoint(ck)
    assert best is not None, f"run {i}: no best checkpoint"
    metas = [json.loads((p/'meta.json').read_text()) for p in live + [c for a in abandoned_sets(ck) for c in list_checkpoints(a)]]
    for s in sorted(evals, key=evals.get):  # the best evaluated step whose checkpoint was written must still be there
        if any(m['step'] == s and m['val_loss'] == evals[s] for m in metas): break
        assert s in failed, f"run {i}: the best checkpoint (step {s}, val {evals[s]}) was lost; have {[(m['step'], m['val_loss']) for m in metas]}"
    neutral = not any(f['kind'] in MATH for f in sch['faults'])
    if neutral:
        ref = weights(reference/'checkpoints'/f'step-{STEPS:07d}')
        assert w.keys() == ref.keys() and all(torch.equal(w[k], ref[k]) for k in w), f"run {i}: weights differ from the uninterrupted run"
        assert losses == step_losses(reference), f"run {i}: losses differ from the uninterrupted run"
    return kinds, lives, neutral

def test_chaos(corpus, reference, tmp_path):
    total, n_lives, n_neutral = collections.Counter(), 0, 0
    t0 = time.time()
    for i in range(START, START + N_RUNS):
        kinds, lives, neutral = run_one(i, corpus, reference, tmp_path)
        total.update(kinds); n_lives += lives; n_neutral += neutral
        if N_RUNS > 10: print(f"run {i}: {lives} processes, faults {dict(kinds)}{', bitwise equal' if neutral else ''}", flush=True)
    print(f"\nchaos: {N_RUNS} runs, {n_lives} processes, {time.time() - t0:.0f}s; all finished, 0 lost; "
          f"{n_neutral} arithmetic-neutral runs bitwise equal to the uninterrupted run")
    print("| fault | injected | survived | lost |\n|---|---|---|---|")
    for k in sorted(total): print(f"| {k} | {total[k]} | {total[k]} | 0 |")
