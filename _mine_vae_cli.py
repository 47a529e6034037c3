"""The `mine-vae` console script's entry point, outside the package on purpose.

Importing `mine_vae` loads torch and transformers, which takes seconds; a Ctrl-C in that window would end in a
traceback, because the package's own Ctrl-C handling is not loaded yet. This module imports nothing heavy itself,
so it can catch that interrupt and give the one line every other interrupt gets.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
EXIT_TERMINATED = 143  # ... and by SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM while the package imports (the package takes it over once loaded)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main() -> int:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from mine_vae.cli import main as run_command
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, _Terminated):
            print("mine-vae: terminated (SIGTERM) while starting.", file=sys.stderr)
            return EXIT_TERMINATED
        print("mine-vae: interrupted while starting.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return run_command()


if __name__ == "__main__":
    sys.exit(main())
