import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "Tiny models gain nothing from a second thread and lose a lot (OpenMP waits) when other jobs share the two cores"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

from chatgot.learner import CancelStepException
from chatgot.test_utils import ScriptedLearner

def _drop(self, flag):  # the Learner's `drop`: a fused optimizer skips on the device, else the step is cancelled now
    if not getattr(getattr(self, 'opt', None), '_step_supports_amp_scaling', False) and bool(flag): raise CancelStepException()
if not hasattr(ScriptedLearner, 'drop'):  # until `chatgot.test_utils.ScriptedLearner` has the loop's requests: no checkpoints to rewind to
    ScriptedLearner.drop, ScriptedLearner.rewind = _drop, lambda self, *a, **kw: None
