"""The ``exchanges`` fixture: ``obpipe exchange`` children for one test, every one stopped
after it."""
from __future__ import annotations

import pytest

from tests.helpers import ExchangeProc, stop_process


class Exchanges(list):
    """The exchanges a test started (``start``), in order."""

    def __init__(self, tmp_path):
        super().__init__()
        self._tmp_path = tmp_path

    def start(self, **kw) -> ExchangeProc:
        """An ``ExchangeProc`` in the test's ``tmp_path`` (``kw``: its options), listening."""
        x = ExchangeProc(self._tmp_path, **kw)
        self.append(x)
        return x


@pytest.fixture
def exchanges(tmp_path):
    """Start exchanges with ``exchanges.start(**kw)``; after the test each is stopped
    (terminate -> join -> kill) and its stderr file closed."""
    started = Exchanges(tmp_path)
    yield started
    for x in started:
        stop_process(x.p)
        x.err.close()
