import os
import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "Tiny models gain nothing from a second thread and lose a lot (OpenMP waits) when other jobs share the two cores"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long tests (builds or external runtimes), skipped unless CHATGOT_SLOW=1')

def pytest_collection_modifyitems(config, items):
    "The `slow` marker skips a test unless CHATGOT_SLOW=1 (`.ci/run` keeps to its time budget)"
    if os.environ.get('CHATGOT_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow: set CHATGOT_SLOW=1')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
