import os
import signal

import pytest

from tf_lm.training.signals import StopOnSignal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_stop_request_and_the_handlers_come_back(signum):
    previous = signal.getsignal(signum)
    with StopOnSignal() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signum)
        assert stop.requested() and stop.signal == signum
    assert signal.getsignal(signum) is previous


def test_a_second_ctrl_c_stops_at_once():
    with StopOnSignal() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # a failure of this test, not an interrupt that ends the whole session
            pytest.fail("The first Ctrl-C raised KeyboardInterrupt; it should only ask the loop to stop.")
        assert stop.requested() and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_first_signal_is_the_one_reported():
    """A Ctrl-C followed by the SIGTERM of a supervisor ended with SIGTERM's 143 instead of Ctrl-C's 130."""
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGINT
