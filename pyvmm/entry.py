"""The ``pyvmm`` process: signals, the one ``except``, and exit statuses.

Imported by the console script before anything else, so that it stays small: Ctrl-C while
the rest of pyvmm is still being imported is already handled.  SIGINT, SIGTERM and SIGHUP
stop a run alike (the vCPUs are kicked out, guest output flushed, one line, status
128 + the signal); a :class:`~pyvmm.errors.PyvmmError` becomes one line and its status; a
closed stdout pipe ends quietly with 141; anything else is a pyvmm bug: status 125, and
the traceback with ``-v``.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: ``signal`` builds enums first
import sys
from types import FrameType

from pyvmm.errors import Interrupted  # before any handler exists (see _raise_interrupted)

_NAMES = {2: "SIGINT", 15: "SIGTERM", 1: "SIGHUP"}


def _name(signum: int) -> str:
    return _NAMES.get(signum) or f"signal {signum}"


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # no import here: a signal that lands while a module is half imported would make that
    # import fail ("partially initialized module") instead of raising Interrupted
    raise Interrupted(signum, _name(signum))


def main(argv: list[str] | None = None) -> None:
    """The console script ``pyvmm``; ``python -m pyvmm`` is the same."""
    try:
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not ignored
            # Ctrl-C as our own exception: click turns a KeyboardInterrupt into a stray
            # newline on stderr and Abort before the one line below
            _signal.signal(_signal.SIGINT, _raise_interrupted)
        for sig in (_signal.SIGTERM, _signal.SIGHUP):  # SIGHUP last: all are in place then
            _signal.signal(sig, _raise_interrupted)
        from pyvmm.console import guard_standard_fds

        guard_standard_fds()
    except BaseException as e:  # a signal between the handlers and _run's own handling
        sys.exit(_interrupted(e))
    args = sys.argv[1:] if argv is None else argv
    sys.exit(_run(args))


def _interrupted(e: BaseException) -> int:
    """The status for a KeyboardInterrupt or Interrupted (one line said); re-raise others."""
    signum = int(_signal.SIGINT) if isinstance(e, KeyboardInterrupt) else getattr(e, "signum", None)
    if signum is None:
        raise e
    _stderr(f"pyvmm: interrupted ({_name(int(signum))})\n")
    return 128 + int(signum)


def _run(args: list[str]) -> int:
    verbose = "-v" in args or "--verbose" in args
    try:
        import click

        from pyvmm.cli import main as cli
        from pyvmm.errors import ExitStatus, Interrupted, PyvmmError

        try:
            rv = cli.main(args, prog_name="pyvmm", standalone_mode=False)
            return int(rv) if isinstance(rv, int) else 0
        except click.exceptions.Exit as e:
            return int(e.exit_code)
        except click.ClickException as e:
            from pyvmm.console import say

            say(_one_line(e))
            return int(e.exit_code)
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
        except PyvmmError as e:
            from pyvmm.console import say

            say(str(e))
            return int(e.status)
        except BrokenPipeError:
            from pyvmm.console import silence_stdout

            silence_stdout()
            return int(ExitStatus.BROKEN_PIPE)
        except Interrupted as e:
            from pyvmm.console import say

            say(f"interrupted ({e.name})")
            return 128 + e.signum
        except Exception as e:
            import traceback

            from pyvmm.console import err, say

            if verbose:
                err(traceback.format_exc())
            say(f"internal error: {type(e).__name__}: {e}"
                + ("" if verbose else " (run with -v for the traceback)"))
            return int(ExitStatus.VMM_ERROR)
    except BaseException as e:  # a signal while importing, before the handling above
        return _interrupted(e)


def _one_line(e: Exception) -> str:
    """A click error as one line (click's own is four: usage, a hint, a blank, the error),
    ending with where the full usage is."""
    import click

    text = " ".join(e.format_message().split()) if isinstance(e, click.ClickException) else str(e)
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError):  # click gives some (a missing value) no context
        text += f" (see '{ctx.command_path if ctx is not None else 'pyvmm'} --help')"
    return text


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
