"""The ``pyvmm`` process: signals, the one ``except``, and exit statuses.

Imported by the console script before anything else, so that it stays small: Ctrl-C while
the rest of pyvmm is still being imported is already handled.  SIGINT, SIGTERM and SIGHUP
stop a run alike (the vCPUs are kicked out, guest output flushed, one line, status
128 + the signal); a :class:`~pyvmm.errors.PyvmmError` becomes one line and its status; a
closed stdout pipe ends quietly with 141; anything else is a pyvmm bug: status 125, and
the traceback with ``-v``.
"""

import _signal  # type: ignore[import-not-found]  # the C module: ``signal`` builds enums first
import sys

# no other import here, not even ``from __future__`` (annotations naming what is not
# imported are strings): this module's body runs before any handler of pyvmm's exists (the
# console script imports it, then calls main), so it only defines names
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

    from pyvmm.errors import Interrupted

_NAMES = {2: "SIGINT", 15: "SIGTERM", 1: "SIGHUP"}
#: pyvmm.errors.Interrupted once main() has imported it (the handler imports nothing)
_INTERRUPTED: "type[Interrupted] | None" = None


def _name(signum: int) -> str:
    return _NAMES.get(signum) or f"signal {signum}"


def _raise_interrupted(signum: int, frame: "FrameType | None") -> None:
    # no import here: a signal that lands while a module is half imported would make that
    # import fail ("partially initialized module") instead of raising Interrupted
    assert _INTERRUPTED is not None  # installed only after it is set
    raise _INTERRUPTED(signum, _name(signum))


def _signals() -> list[int]:
    """SIGINT (unless it is ignored, as under ``nohup`` or ``&``, or someone else's), SIGTERM
    and SIGHUP: the signals pyvmm takes; SIGHUP last, so all are in place once it is."""
    sigs = [_signal.SIGTERM, _signal.SIGHUP]
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        sigs.insert(0, _signal.SIGINT)
    return sigs


#: signals noted while pyvmm is still importing (see main)
_PENDING: list[int] = []


def _note(signum: int, frame: "FrameType | None") -> None:
    _PENDING.append(signum)


def main(argv: list[str] | None = None) -> None:
    """The console script ``pyvmm``; ``python -m pyvmm`` is the same.

    The very first thing it does is to take SIGINT, SIGTERM and SIGHUP: while pyvmm is
    still being imported they are only noted (nothing is raised in the middle of an
    import, where Python may wrap it into another error), and then acted on as one line
    and 128 + the signal.  Ctrl-C a few milliseconds after the start was a
    KeyboardInterrupt traceback from these imports."""
    global _INTERRUPTED
    sigs = _signals()
    for sig in sigs:
        _signal.signal(sig, _note)
    try:
        from pyvmm.errors import Interrupted

        _INTERRUPTED = Interrupted
        from pyvmm.console import guard_standard_fds

        guard_standard_fds()
    except BaseException as e:  # not a signal (noted, not raised): re-raised
        sys.exit(_interrupted(e))
    args = sys.argv[1:] if argv is None else argv
    status = _run(args, sigs)
    if argv is None:  # the process is ours (console script, python -m pyvmm)
        _exit_now(status)
    sys.exit(status)


def _exit_now(status: int) -> None:
    """End the process with ``status`` without the interpreter's finalization, when it
    would do nothing the kernel does not: tearing down ~160 modules and collecting their
    objects costs ~15 ms of CPU on every ``pyvmm run`` (bench/run.py, row 3), memory and fds
    the kernel frees at exit anyway.  Only when stdout and stderr flush (else the normal
    exit reports the failure as it always did), no thread that Python would wait for is
    running and no ``atexit`` handler is registered; returns otherwise."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # the normal exit says it (status 120), or a signal came
        return
    threading = sys.modules.get("threading")
    if threading is not None:
        main = threading.main_thread()
        if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
            return
    import atexit

    if atexit._ncallbacks():  # a library's exit handler: let the interpreter run it
        return
    import os

    os._exit(status & 0xFF)  # what the kernel keeps of sys.exit's value; os._exit takes a C int


def _signum(e: BaseException) -> int | None:
    """The signal behind ``e``: a KeyboardInterrupt or Interrupted, also one that Python
    wrapped into another error (a signal during a class's ``__set_name__`` becomes a
    RuntimeError whose cause it is)."""
    cause: BaseException | None = e
    for _ in range(16):
        if cause is None:
            break
        if isinstance(cause, KeyboardInterrupt):
            return int(_signal.SIGINT)
        signum = getattr(cause, "signum", None)
        if isinstance(signum, int):
            return signum
        cause = cause.__cause__ or cause.__context__
    return None


def _interrupted(e: BaseException) -> int:
    """The status for an exception that a signal caused (one line said); anything else is
    re-raised."""
    signum = _signum(e)
    if signum is None:
        raise e
    _stderr(f"pyvmm: interrupted ({_name(signum)})\n")
    return 128 + signum


def _run(args: list[str], sigs: list[int]) -> int:
    verbose = "-v" in args or "--verbose" in args
    try:
        from pyvmm.errors import ExitStatus, Interrupted, PyvmmError
        from pyvmm.runargs import quick_run_args

        # a plain `pyvmm run GUEST` goes without click (pyvmm.runargs says why)
        quick = quick_run_args(args)
        if quick is None:
            import pyvmm.cli  # noqa: F401 - imported now, while a signal is only noted
        else:
            from pyvmm.runcmd import run_guest

            del quick["gdb_default"]  # -s: never set on this path

        # from here on a signal is our own exception (click would turn a KeyboardInterrupt
        # into a stray newline and Abort): the run is stopped where it is
        for sig in sigs:
            _signal.signal(sig, _raise_interrupted)
        if _PENDING:
            raise Interrupted(_PENDING[0], _name(_PENDING[0]))
        try:
            if quick is not None:
                return run_guest(**quick)  # type: ignore[arg-type]
            return _click_main(args)
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
            if _signum(e) is not None:  # a signal that Python wrapped into another error
                return _interrupted(e)
            import traceback

            from pyvmm.console import err, say

            if verbose:
                err(traceback.format_exc())
            say(f"internal error: {type(e).__name__}: {e}"
                + ("" if verbose else " (run with -v for the traceback)"))
            return int(ExitStatus.VMM_ERROR)
    except BaseException as e:  # a signal while importing, before the handling above
        from pyvmm.errors import PyvmmError  # main() imported it

        if isinstance(e, PyvmmError) and _signum(e) is None:  # pyvmm.cli's imports refused
            from pyvmm.console import say  # to run (a stale C extension): one line

            say(str(e))
            return int(e.status)
        return _interrupted(e)


def _click_main(args: list[str]) -> int:
    """The command line as click reads it: the command's status, or click's own error as
    one line and its status."""
    import click

    from pyvmm.cli import main as cli

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
    except OSError as e:  # click's own output (--help, --version) to a full or failing stdout
        if isinstance(e, BrokenPipeError) or not _click_echo_to_stdout(e):
            raise
        from pyvmm.console import silence_stdout
        from pyvmm.errors import OutputError

        silence_stdout()  # what click left buffered goes nowhere, not into a second error
        raise OutputError(f"cannot write output: {e.strerror}") from None


def _click_echo_to_stdout(e: OSError) -> bool:
    """Whether ``e`` came from click's ``echo`` writing to fd 1 (its help, version and
    usage text), not from a command's own file: only the former is an output error."""
    tb = e.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "echo" and frame.f_globals.get("__name__") == "click.utils":
            try:
                return bool(frame.f_locals["file"].fileno() == 1)
            except (KeyError, AttributeError, OSError, ValueError):
                return False
        tb = tb.tb_next
    return False


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
