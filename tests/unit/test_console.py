"""Third-party output is redirected at the file descriptors: C-level writes and child processes land in the
log too, and the console comes back afterwards (checked in a fresh process, whose stdout is a real fd)."""

import subprocess
import sys
import textwrap


def test_output_to_catches_python_c_level_and_child_output_then_restores(tmp_path):
    log = tmp_path / "logs" / "driver.log"
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from pathlib import Path
        from sfpo_rl.utils.console import output_to

        print("before", flush=True)
        with output_to(Path({str(log)!r})):
            print("python print")
            print("python warning", file=sys.stderr)
            os.write(1, b"raw fd write\\n")
            subprocess.run([sys.executable, "-c", "import sys; print('child'); print('child err', file=sys.stderr)"])
        print("after", flush=True)
        with output_to(Path({str(log)!r})):
            print("again")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("before\nafter\n", "")
    lines = log.read_text().splitlines()
    assert lines == ["python print", "python warning", "raw fd write", "child", "child err", "again"]
