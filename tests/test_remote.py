"""An engine generator driven in a child process behaves like the generator itself (core.engines.remote)."""

import os
from functools import partial
from pathlib import Path

import pytest

from napari_rrl_medsam.core.engines.remote import RemoteEvents
from napari_rrl_medsam.core.errors import InputError


def counting(n: int, log: Path):
    """Yields (pid, i); records each step computed and, on close, the last one (like an engine's checkpoint)."""
    i = 0
    try:
        while i < n:
            i += 1
            with open(log, "a") as f:
                f.write(f"step {i}\n")
            yield os.getpid(), i
    finally:
        with open(log, "a") as f:
            f.write(f"closed at {i}\n")


def failing(after: int):
    yield from range(after)
    raise InputError("the atlas has no labels: choose its labels layer.")


def test_events_come_from_a_child_process_in_order_and_end(tmp_path):
    log = tmp_path / "log.txt"
    events = list(RemoteEvents(partial(counting, 3, log)))
    assert [i for _, i in events] == [1, 2, 3]
    assert {pid for pid, _ in events} != {os.getpid()} and len({pid for pid, _ in events}) == 1
    assert log.read_text().splitlines()[-1] == "closed at 3"


def test_the_child_advances_only_on_demand_and_close_saves(tmp_path):
    log = tmp_path / "log.txt"
    remote = RemoteEvents(partial(counting, 100, log))
    assert next(remote)[1] == 1 and next(remote)[1] == 2
    remote.close()  # like Stop: the engine is closed in the child, which then exits
    assert log.read_text().splitlines() == ["step 1", "step 2", "closed at 2"]  # no step computed ahead
    assert not remote._process.is_alive() and remote._process.exitcode == 0
    with pytest.raises(StopIteration):
        next(remote)


def test_an_error_in_the_child_is_raised_in_the_consumer_with_its_type_and_message():
    remote = RemoteEvents(partial(failing, 2))
    assert [next(remote), next(remote)] == [0, 1]
    with pytest.raises(InputError, match="choose its labels layer"):
        next(remote)
    assert not remote._process.is_alive()


def test_a_child_that_dies_is_an_error_that_says_so(tmp_path):
    remote = RemoteEvents(partial(counting, 10, tmp_path / "log.txt"))
    next(remote)
    remote._process.kill()
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        next(remote)


def test_a_main_script_without_a_guard_is_not_run_again_in_the_child(tmp_path):
    """napari users' scripts often lack `if __name__ == "__main__"`; spawn would re-run them in the child."""
    import subprocess
    import sys

    marker, script = tmp_path / "runs.txt", tmp_path / "user_script.py"
    script.write_text(
        "from functools import partial\n"
        "from napari_rrl_medsam.core.engines.remote import RemoteEvents\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "print(list(RemoteEvents(partial(iter, [1, 2, 3]))))\n"
        "assert __file__.endswith('user_script.py')\n"
    )  # the parent's __main__ is restored after the start
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3]"
    assert marker.read_text() == "ran\n"  # once: in the user's process only
