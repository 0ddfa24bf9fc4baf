"""The command line's error contract: every user mistake in one line, every fault an exit
status a scheduler can act on.

``python -m hobs_jax.main`` parses its flags with absl and ml_collections'
``config_flags`` (``--config=configs/X.py[:arg]``, ``--config.a.b=value``). Their own
reports of a bad config file or a misspelled option are several tracebacks long, so
:func:`parse_flags` first loads the config file itself and checks every override
against the config's keys and value types, and turns whatever absl still rejects into
one line. :func:`run_job` maps the errors of the job to one line and an exit status:

=====================================================  ==================================
error                                                  exit status
=====================================================  ==================================
usage: bad flag, config file or value, workdir that    2
cannot be created or is in use by another run, a
finished stage made with another config, a missing or
corrupt dataset or initial-weights file
(``ValueError``, :class:`hobs_jax.data.DatasetError`)
a save that failed (full disk; previous copy intact)   1  (:class:`hobs_jax.errors.WriteError`)
SIGTERM / SIGINT: stopped at a safe point, resumable   143 / 130 (128 + signal number)
anything else (a bug)                                  1, with the traceback
=====================================================  ==================================

``--verbose`` (or ``HOBS_JAX_TRACEBACK=1``) adds the traceback and the libraries' log
messages to any of these, for bug reports.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

ENV_TRACEBACK = "HOBS_JAX_TRACEBACK"
USAGE_EXIT, FAULT_EXIT = 2, 1
_HELP = ("--help", "-h", "--helpshort", "--helpfull", "--helpxml", "-?")


class UsageError(ValueError):
    """A command-line mistake, said in one line."""


def verbose(argv: Sequence[str] = ()) -> bool:
    """Whether the user asked for tracebacks (``--verbose`` or $HOBS_JAX_TRACEBACK)."""
    flag = any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)
    return flag or os.environ.get(ENV_TRACEBACK, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (its type name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def fail(message: str, code: int = USAGE_EXIT) -> None:
    """Print ``error: message`` to stderr and exit with ``code``.

    Unless tracebacks were asked for, nothing is printed after that line: the libraries'
    late complaints while the interpreter shuts down (orbax's background writes that
    failed, asyncio's "exception was never retrieved") are dropped; the line said it.
    A failed save also leaves write coroutines that orbax created and never started, held
    by the frames of the exception being handled (which ``SystemExit`` keeps as its
    context until exit) or by reference cycles. Freed at the interpreter's last clean-up,
    where warning filters no longer apply, each printed "coroutine ... was never awaited";
    so those frames are cleared and the cycles collected here, with warnings off.
    """
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    if not verbose(sys.argv):
        import gc
        import logging
        import threading
        import warnings

        logging.disable(logging.CRITICAL)
        sys.unraisablehook = lambda *_: None
        threading.excepthook = lambda *_: None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _clear_frames(sys.exc_info()[1])
            gc.collect()
    sys.exit(code)


def _clear_frames(exc: BaseException | None) -> None:
    """``traceback.clear_frames`` on every traceback of ``exc``'s cause/context chain: their
    finished frames drop their locals (the frames still running are left alone)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]


# --- the config file and its overrides -------------------------------------------------

def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` / ``--name V`` / ``-name=V`` in argv (last one wins)."""
    value = None
    for i, a in enumerate(argv):
        for prefix in (f"--{name}", f"-{name}"):
            if a.startswith(prefix + "="):
                value = a[len(prefix) + 1:]
            elif a == prefix and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def overrides(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``[(dotted name, value or None)]`` of the ``--config.a.b[=v]`` / ``--noconfig.a.b``
    arguments (``--config.a.b v`` takes the next argument as the value)."""
    out = []
    for i, a in enumerate(argv):
        for prefix, negated in (("--config.", False), ("-config.", False), ("--noconfig.", True),
                                ("-noconfig.", True)):
            if a.startswith(prefix):
                name, eq, value = a[len(prefix):].partition("=")
                if negated:
                    value = "false"
                elif not eq:
                    nxt = argv[i + 1] if i + 1 < len(argv) else None
                    is_flag = nxt is not None and nxt.startswith("-") and not _parses(float, nxt)
                    value = None if nxt is None or is_flag else nxt
                out.append((name, value))
                break
    return out


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of ``path[:arg]``, as config_flags would call it; one-line
    :class:`UsageError` naming the file for a missing file, a file that does not import,
    and a ``get_config`` that raises or returns no ConfigDict."""
    path, colon, arg = spec.partition(":")
    where = f"--config={spec}"
    if not path:
        raise UsageError(f"{where}: give the path of a config file, e.g. configs/quickstart.py")
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        near = []
        if os.path.isdir(folder):
            names = [n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")]
            near = [os.path.join(os.path.dirname(path), n)
                    for n in difflib.get_close_matches(os.path.basename(path), names, n=3, cutoff=0.6)]
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise UsageError(f"{where}: no such file {path}{hint}")
    if os.path.isdir(path):
        raise UsageError(f"{where}: {path} is a directory; give a config file (a .py with get_config)")
    module_spec = importlib.util.spec_from_file_location("hobs_jax_cli_config", path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{where}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"{where}: {path} does not load: SyntaxError: {e.msg} (line {e.lineno})") from e
    except Exception as e:
        raise UsageError(f"{where}: {path} does not load: {type(e).__name__}: {one_line(e)}"
                         f"{_line_in(e, path)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"{where}: {path} defines no get_config()")
    try:
        config = module.get_config(arg) if colon else module.get_config()
    except ValueError as e:
        raise UsageError(f"{where}: {one_line(e)}") from e
    except Exception as e:
        raise UsageError(f"{where}: get_config() failed: {type(e).__name__}: {one_line(e)}"
                         f"{_line_in(e, path)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"{where}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


def _line_in(exc: BaseException, path: str) -> str:
    """`` (path line N)`` of the deepest traceback frame inside ``path``, if any."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return f" ({path} line {line})" if line else ""


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k in config.keys():
        v = config[k]
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_keys(v, prefix + k + "."))
    return out


def _suggest(name: str, config: ml_collections.ConfigDict) -> list[str]:
    """Known dotted names close to ``name``: in its own section if any are, else anywhere
    (close spellings, then the same last part in another section)."""
    keys = [k for k in _keys(config) if not name.startswith(k + ".")]  # not its own sections
    section, _, leaf = name.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == section]
    near = difflib.get_close_matches(name, siblings, n=3, cutoff=0.75)
    if near:
        return near
    close = difflib.get_close_matches(name, keys, n=3, cutoff=0.75)
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf and k not in close]
    return (close + same_leaf)[:3]


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def check_override(config: ml_collections.ConfigDict, name: str, value: str | None) -> None:
    """One-line :class:`UsageError` for an unknown option (with the closest known names)
    or a value that cannot have the option's type."""
    if "[" in name:  # indexed fields: left to config_flags
        return
    node: Any = config
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            near = _suggest(name, config)
            if near:
                hint = "; did you mean " + " or ".join(f"--config.{k}" for k in near) + "?"
            else:
                section = ".".join(parts[:i])
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                hint = (f"; {'--config.' + section if section else '--config'} has "
                        f"{', '.join(known[:10])}{', ...' if len(known) > 10 else ''}" if known else "")
            raise UsageError(f"--config.{name}: no such option{hint}")
        node = node[part]
    if value is None:
        if isinstance(node, bool):
            return  # --config.a.flag alone sets it
        raise UsageError(f"--config.{name}: give a value (--config.{name}=VALUE)")
    kind = None
    if isinstance(node, bool):
        ok, kind = value.lower() in _BOOLS, "true or false"
    elif isinstance(node, int):
        ok, kind = _parses(int, value), "an int"
    elif isinstance(node, float):
        ok, kind = _parses(float, value), "a number"
    elif isinstance(node, ml_collections.ConfigDict):
        ok, kind = False, "a section; set its fields, e.g. --config." + name + "." + \
            (sorted(node.keys()) or ["x"])[0]
    else:
        ok = True
    if not ok:
        raise UsageError(f"--config.{name}={value}: expected {kind}")


def _parses(fn: Callable[[str], Any], value: str) -> bool:
    try:
        fn(value)
        return True
    except ValueError:
        return False


def check_argv(argv: Sequence[str], known: Sequence[str] = (),
               required: Sequence[str] = ("config", "workdir")) -> None:
    """Everything :func:`parse_flags` checks before absl sees ``argv`` (raises
    :class:`UsageError`): unknown flags (when ``known`` flag names are given), required
    flags, the config file, and every ``--config.*`` override."""
    args = list(argv[1:])
    if any(a in _HELP for a in args):
        return
    if known:
        for a in args:
            if not a.startswith("-") or a.lstrip("-").startswith(("config.", "noconfig.")):
                continue
            name = a.lstrip("-").partition("=")[0]
            if name in known or (name.startswith("no") and name[2:] in known):
                continue
            near = difflib.get_close_matches(name, [k for k in known if len(k) > 2], n=2, cutoff=0.7)
            hint = f"; did you mean {' or '.join('--' + k for k in near)}?" if near else ""
            raise UsageError(f"unknown option --{name}{hint}")
    for name in required:
        if _flag_value(args, name) is None:
            example = "configs/quickstart.py" if name == "config" else "runs/my_run"
            raise UsageError(f"--{name} is required (e.g. --{name}={example})")
    config_path = _flag_value(args, "config")
    if config_path is None:
        raise UsageError("--config is required (e.g. --config=configs/quickstart.py)")
    config = load_config(config_path)
    for name, value in overrides(args):
        check_override(config, name, value)


def parse_flags(argv: Sequence[str], flag_values) -> list[str]:
    """absl ``flags_parser`` for ``app.run``: :func:`check_argv`, then absl's own parse;
    any error ends the process with one line and exit status 2."""
    from absl import flags

    try:
        check_argv(argv, known=list(flag_values))
        return flag_values(list(argv))
    except (UsageError, flags.Error) as e:
        if verbose(argv):
            traceback.print_exc()
        message = one_line(e)
        fail(message[5:] if message.startswith("flag --") else message)
    except Exception as e:  # config_flags' own load errors, in case check_argv missed one
        if verbose(argv):
            traceback.print_exc()
        fail(f"{type(e).__name__}: {one_line(e)}")
    raise AssertionError("unreachable")


# --- the job ---------------------------------------------------------------------------

def quiet_libraries() -> None:
    """Keep the console to hobs_jax's own progress and its one-line errors.

    orbax logs every checkpoint step through absl at INFO and a failed save as several
    ERROR tracebacks, which hobs_jax reports in one line; when orbax closes its event loop
    after such a failure, tensorstore's remaining completion callbacks each print an
    ignored ``RuntimeError: Event loop is closed``. ``--verbose`` keeps all of it.
    """
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("jax").setLevel(logging.WARNING)
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and \
                str(unraisable.exc_value) == "Event loop is closed":
            return
        default(unraisable)

    sys.unraisablehook = hook


def run_job(job: Callable[[], Any], *, show_traceback: bool = False) -> Any:
    """Run ``job()``; map its errors to one line on stderr and an exit status (module doc)."""
    from hobs_jax.data import DatasetError
    from hobs_jax.errors import WriteError, write_failure
    from hobs_jax.interrupt import Interrupted

    try:
        return job()
    except Interrupted as e:
        _explain(show_traceback)
        fail(f"{e}; run the same command again to resume", e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside the stages' signal handling
        _explain(show_traceback)
        fail("interrupted by SIGINT", 130)
    except (ValueError, DatasetError) as e:
        _explain(show_traceback)
        fail(one_line(e))
    except WriteError as e:
        _explain(show_traceback)
        fail(one_line(e), FAULT_EXIT)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise  # a bug: the full traceback
        _explain(show_traceback)
        fail(f"a write failed ({reason}): {one_line(e)}", FAULT_EXIT)


def _explain(show: bool) -> None:
    if show:
        traceback.print_exc()
