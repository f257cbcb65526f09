"""What every long-running process does as it starts: the malloc arena cap, and the start-up
heap kept out of the garbage collector's full collections."""

import platform
import subprocess
import sys
import textwrap

import pytest

from dispatcher.process import limit_arenas


def test_the_arena_cap_is_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the cap is glibc's")
    assert limit_arenas(8) is True


def test_an_operators_own_cap_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False


def test_settling_frees_start_up_garbage_and_keeps_the_rest_out_of_later_collections() -> None:
    """In a process of its own: freezing this test process's heap would outlive the test."""
    script = textwrap.dedent(
        """
        import gc, weakref
        import dispatcher.api.app  # a start-up's worth of modules, classes and schemas

        class Node:
            pass

        def cycle():
            a, b = Node(), Node()
            a.other, b.other = b, a
            return a

        dropped = weakref.ref(cycle())  # garbage left by starting
        kept = cycle()
        gc.disable()  # only the collections made here
        from dispatcher.process import settle_heap
        frozen = settle_heap()
        assert dropped() is None, "start-up garbage collected first"
        assert frozen > 50_000, frozen
        assert all(obj is not kept for obj in gc.get_objects()), "kept: frozen, never walked"
        later = weakref.ref(cycle())
        gc.collect()
        assert later() is None, "objects made after settling are collected as before"
        print("ok", frozen)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
