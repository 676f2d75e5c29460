"""Runs ``vae`` commands in forked children of one process that imported everything once (for
``test_run_kills.py``: dozens of runs, each killed or resumed, without paying the imports each
time).

Usage: ``python fork_server.py`` with the backends to import before forking as arguments
(``torch``, ``jax``). No backend computes before a fork: no JAX backend, no torch thread pool
exists yet, so a child starts like a fresh process that has the modules loaded (and
matplotlib's fonts: drawing is single-threaded).

Protocol, one JSON object a line: first ``{"ready": pid}`` on stdout; then, for each request
``{"argv": [...], "env": {...}, "log": PATH}`` on stdin, the child runs ``vae ARGV`` with ``env``
added and its output in ``log``, and the server answers ``{"status": S}``: the exit status, or
minus the signal that ended the child.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def child(request: dict) -> int:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(request.get("env", {}))
    from vae_tools import cli

    try:
        return cli.main(request["argv"])
    except BaseException:  # a traceback is a finding: the test reads the log
        traceback.print_exc()
        return 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def warm_up_plots() -> None:
    """Draw each kind of figure once (matplotlib is single-threaded): its fonts and text caches
    are then loaded once, not in every child."""
    import numpy as np

    from vae_tools import plots

    with tempfile.TemporaryDirectory() as tmp:
        images = np.zeros((4, 1, 8, 8))
        plots.save_reconstructions(f"{tmp}/r.png", images, images)
        plots.save_samples(f"{tmp}/s.png", images)
        plots.save_loss_curves(f"{tmp}/l.png", {"torch": [50.0, 45.0]}, {"torch": ([4], [44.0])})
        plots.save_latent_space(f"{tmp}/z.png", np.zeros((4, 2)), np.arange(4))


def main() -> None:
    import vae_tools.cli
    import vae_tools.run  # noqa: F401

    if "torch" in sys.argv[1:]:
        import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: seconds)

        import vae_torch.train  # noqa: F401
    if "jax" in sys.argv[1:]:
        import vae_jax.train  # noqa: F401
    warm_up_plots()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(child(request))
        _, wait_status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)


if __name__ == "__main__":
    main()
