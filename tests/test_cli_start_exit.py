"""How nattrav-fast starts and ends (cli/launch.py, cli/exits.py): the collector paused for the start-up's
imports only, and an exit without the interpreter's teardown that loses nothing written and keeps the code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# buffered stdout, as a command run from a shell has it (this suite may set PYTHONUNBUFFERED)
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_exit_now_flushes_output_and_logging_and_keeps_the_code(tmp_path):
    log = tmp_path / "log.txt"
    code = textwrap.dedent(f"""
        import logging, sys
        from nattrav.cli.exits import exit_now
        handler = logging.FileHandler({str(log)!r})
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().warning("logged")
        sys.stdout.write("x" * 100000)  # more than one buffer, the tail unflushed
        sys.stdout.write("end")
        sys.stderr.write("err-no-newline")
        exit_now(5)
        print("not reached")
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=BUFFERED)
    assert cp.returncode == 5
    assert cp.stdout == "x" * 100000 + "end"
    assert cp.stderr == "err-no-newline"
    assert log.read_text() == "logged\n"


def test_exit_now_on_a_closed_stdout_still_exits_with_the_code():
    code = "import sys\nfrom nattrav.cli.exits import exit_now\nsys.stdout.write('x' * 10)\nexit_now(3)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=BUFFERED)
    p.stdout.close()  # the reader went away: the flush meets a broken pipe
    assert p.wait(timeout=60) == 3
    assert b"Traceback" not in p.stderr.read()


def test_startup_pauses_the_collector_only_for_the_imports_and_respects_an_embedders_choice():
    code = textwrap.dedent("""
        import gc
        from nattrav.cli import launch
        launch.startup_begin()
        off = not gc.isenabled()
        import nattrav.api
        launch.startup_done()
        print(off, gc.isenabled(), gc.get_freeze_count() > 1000)
        gc.disable()  # an embedding program's own choice: startup_done() must leave it alone
        launch.startup_begin(); launch.startup_done()
        print(gc.isenabled())
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["True", "True", "True", "False"]


def test_the_command_runs_with_the_collector_on_after_start_up():
    # nattrav-fast as the bench and the tests start it (python -m): the collector is off for the
    # imports and back on (the start-up's objects frozen) when main() hands over to Trio
    code = textwrap.dedent("""
        import gc, runpy, sys
        import trio
        def probe(*a, **k):
            print(gc.isenabled(), gc.get_freeze_count() > 1000, flush=True)
            return 0
        trio.run = probe
        sys.argv = ["nattrav-fast", "-s", "127.0.0.1", "-d", "somebody"]
        runpy.run_module("nattrav.cli.fast", run_name="__main__", alter_sys=True)
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=BUFFERED)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["True", "True"]
