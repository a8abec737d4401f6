import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "Tiny models gain nothing from a second thread and lose a lot (OpenMP waits) when other jobs share the two cores"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long tests (builds or external runtimes), skipped unless CHATGOT_SLOW=1')
