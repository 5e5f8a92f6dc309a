"""The one exception type a user sees: a message that says what is wrong and what to do.

Messages name an input the way the caller gave it: ``-m/--model`` and ``--unrank_hops=abc`` on
the command line, ``model=`` and ``config_dict['unrank_hops']`` from Python
(:func:`recbole_unrank.run_unrank`). :func:`arg`, :func:`option` and :func:`setting` write those names;
the command line switches them with :func:`cli_names`.
"""

from __future__ import annotations

import contextlib
import contextvars

__all__ = ["UnrankError", "arg", "option", "setting", "cli_names"]

_CLI = contextvars.ContextVar("recbole_unrank_cli_names", default=False)

# Python argument of recbole_unrank.run_unrank -> its command-line option.
_CLI_OPTIONS = {
    "model": "-m/--model",
    "dataset": "-d/--dataset",
    "config_file_list": "--config_files",
    "checkpoint": "--checkpoint",
    "preset": "--preset",
}


class UnrankError(Exception):
    """Bad input or a refused result. The command line prints it as one line and exits 2."""


@contextlib.contextmanager
def cli_names():
    """Inside this block, messages name command-line options instead of Python arguments."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def arg(name: str) -> str:
    """How to name the input ``name`` (a :func:`recbole_unrank.run_unrank` argument)."""
    return _CLI_OPTIONS.get(name, f"--{name}") if _CLI.get() else f"{name}="


def option(name: str, value) -> str:
    """The input ``name`` given as ``value``: ``--algo bayes`` on the command line,
    ``algo='bayes'`` from Python."""
    return f"{_CLI_OPTIONS.get(name, f'--{name}')} {value}" if _CLI.get() else f"{name}={value!r}"


def setting(key: str, value=None, source: str | None = None) -> str:
    """How to name the setting ``key`` given as ``value`` in ``source`` (cmd, dict or file;
    None: the way the caller gives settings, ``--key=value`` or ``config_dict['key']=value``)."""
    if source is None:
        source = "cmd" if _CLI.get() else "dict"
    if source == "file":
        return f"'{key}: {value}' in {arg('config_file_list').rstrip('=')}"
    if source == "dict":
        return f"config_dict['{key}']={value!r}"
    return f"--{key}={value}"
