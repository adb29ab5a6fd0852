"""Run ``run_demo`` in its own Python process (not a test module).

The demo executes many Dagster runs on a persistent DAGSTER_HOME instance, whose compute-log capture redirects
the process's stdout/stderr file descriptors; inside the pytest process, after other tests, that left pytest's
own output pointing at a deleted capture file. A child process is also how the README runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, sys
from pathlib import Path
from earnopt_assets.demo import run_demo
kwargs = json.loads(sys.argv[2])
sys.exit(run_demo(Path(sys.argv[1]), **kwargs))
"""


def run_demo_process(data_dir: Path, timeout_s: float = 900, **kwargs) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``run_demo(data_dir, **kwargs)`` in a child with this process's env."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(data_dir), json.dumps(kwargs)],
        env=dict(os.environ), capture_output=True, text=True, timeout=timeout_s,
    )
    return done.returncode, done.stdout + done.stderr
