"`chatgot train --compile`: the compiled training step trains the same model as eager, and the run folder, samples and resume are unaffected (slow: Inductor compiles on the CPU)."
import json
import pytest, torch
from safetensors.torch import load_file
from chatgot.cli import main
from chatgot.train import CompileCallback, train
from chatgot.test_utils import tiny_text

FLAGS = dict(preset='tiny', steps=8, batch_size=4, seq_len=32, precision='fp32', eval_every=4, save_every=4, sample_every=4,
             eval_batches=2, log_every=1)

def losses(run): return [json.loads(l)['loss'] for l in (run/'metrics.jsonl').read_text().splitlines() if '"loss"' in l]

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('compile')
    (tmp/'c.txt').write_text(tiny_text(600))
    eager = train(out=tmp/'eager', data=str(tmp/'c.txt'), quiet=True, **FLAGS)
    args = ['train', '--data', str(tmp/'c.txt'), '--out', str(tmp/'compiled'), '--compile']
    for k, v in FLAGS.items(): args += [f"--{k.replace('_', '-')}", str(v)]
    from torch._dynamo.utils import counters
    graphs = counters['stats']['unique_graphs']
    assert main(args) == 0
    assert counters['stats']['unique_graphs'] > graphs  # the training step really went through dynamo
    return tmp, eager

def test_compiled_run_trains_the_same_model(runs):
    tmp, eager = runs
    cfg = json.loads((tmp/'compiled'/'config.json').read_text())['flags']
    assert cfg['compile'] is True and json.loads((tmp/'eager'/'config.json').read_text())['flags']['compile'] is False
    a, b = losses(tmp/'eager'), losses(tmp/'compiled')
    assert len(a) == len(b) == 8
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 1e-4, (a, b)  # Inductor may reorder float sums: close, not equal
    we, wc = (load_file(tmp/r/'checkpoints'/'step-0000008'/'model.safetensors') for r in ('eager', 'compiled'))
    assert we.keys() == wc.keys()  # plain names: the eager model is what gets saved
    assert max((we[k] - wc[k]).abs().max().item() for k in we) < 1e-4
    assert len((tmp/'compiled'/'samples.jsonl').read_text().splitlines()) == 2  # sampling ran on the eager model

def test_resume_keeps_compiling(runs):
    tmp, _ = runs
    l = train(out=tmp/'compiled', resume=True, steps=10, quiet=True)
    assert l.step == 10
    cc = [c for c in l.cbs if isinstance(c, CompileCallback)]
    assert len(cc) == 1 and cc[0].compiled is not None
    assert l.train_model is l.model  # put back after the fit
    assert len(losses(tmp/'compiled')) == 10
