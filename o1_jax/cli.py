"""What every command shares on its command line: how bad input is reported, `--help`, and outputs.

* Bad input (a malformed record, a config value out of range, a misspelt flag or config key, an
  output that may not be written) is one line `error: <sentence>` on stderr and exit code 2, with no
  traceback; any other exception is a bug and keeps its traceback. `--help` exits 0.
* Outputs, checked before any work by `check_output`: one that exists (a file, or a folder that is
  not empty) is refused unless the command was given `--overwrite`; a resumable output (train's
  workdir, synthesize's output) is resumed instead. The output's folder must exist or be creatable,
  and be writable.

absl commands run `cli.run_absl(main)`; argparse commands build `cli.ArgumentParser` and return
`cli.run(work, args)` from `main(argv)`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import uuid
from typing import Callable, NoReturn

from absl import app, flags
from etils import epath

from o1_jax.files import is_remote

# Exceptions that stop a command with one sentence: the input is wrong (the library names the file,
# line or key; o1_jax.data.records.RecordError is a ValueError), the machine refused a write (an
# OSError: a full disk, a read-only folder; the checkpointer names the step and folder), or training
# diverged (FloatingPointError: a non-finite loss or gradient norm, named by step).
BAD_INPUT = (ValueError, OSError, FloatingPointError, app.UsageError)
# Where to read every training config key, its default and its meaning.
CONFIG_KEYS_HINT = "every training config key, its default and meaning: python -m o1_jax.defaults"


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def report(message: object) -> None:
    """Prints `error: <message>` on stderr as one line in one write, so that a background thread's
    output cannot land in the middle of it."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def fail(message: object) -> NoReturn:
    report(message)
    sys.exit(2)


def run(work: Callable, *args, bad_input: tuple = BAD_INPUT) -> int:
    """`work(*args)`, with bad input reported as one `error:` line and 2; returns work's exit code if it
    returns an int, else 0."""
    try:
        result = work(*args)
    except bad_input as e:
        report(e)
        return 2
    return result if isinstance(result, int) else 0


# ----------------------------------------------------------------------------- argparse commands


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line (exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- absl commands


def _unknown_config_key(argv: list[str], e: Exception) -> str:
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    key = re.search(r"'([^'\n]+)'", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    name = key.group(1) if key else "?"
    flag = next((a.split("=", 1)[0] for a in argv[1:] if a.startswith(("--config.", "-config."))
                 and name in a.split("=", 1)[0].split(".")), f"--config....{name}")
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return f"{flag}: the config has no key {name!r}{hint}; its keys are those of the config file"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors as one `error:` line (exit 2) and `--help` exiting 0."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:  # unknown flag, missing --config, a value of the wrong type
        message = str(e)
        if "Traceback (most recent call last)" in message:  # ml_collections: get_config raised; keep its sentence
            flag = message.split(": Error whilst parsing config file", 1)[0]
            message = f"{flag}: {message.strip().splitlines()[-1].split(': ', 1)[-1]}"
        fail(message)
    except (AttributeError, KeyError) as e:
        # ml_collections: a `--config.a.b=v` override naming no key of the locked config.
        if isinstance(e, KeyError) or isinstance(e.__context__, KeyError):
            fail(_unknown_config_key(argv, e))
        raise
    except SystemExit as e:
        # absl's --help / --helpfull print the usage and exit 1; asking for help is not a failure.
        if e.code == 1 and any(a.lstrip("-").split("=")[0] in ("help", "helpshort", "helpfull", "h", "?")
                               for a in argv[1:]):
            sys.exit(0)
        raise
    for name in flags.FLAGS:  # ml_collections defers a config file that cannot be read to its first use
        value = flags.FLAGS[name].value
        if type(value).__name__ == "_ErrorConfig":
            fail(f"--{name}: cannot read the config file ({str(vars(value)['_error']).strip().splitlines()[-1].strip()})")
    return rest


def run_absl(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """`app.run(main)` under this module's rules; exits the process with main's code."""

    def checked(args):
        if len(args) > 1:
            fail(f"unexpected arguments {args[1:]} (every option is a --flag; see --help)")
        return run(main, args)

    app.run(checked, argv=argv, flags_parser=parse_flags)


# ----------------------------------------------------------------------------- outputs


def check_writable(folder: str | os.PathLike, output: str | os.PathLike | None = None) -> None:
    """Raises unless `folder` exists or can be created, and a file can be written in it.

    Nothing is created: the probe is a temporary file in the nearest folder that exists, removed at
    once. `output` (default: `folder`) is the path the message names.
    """
    folder = os.path.abspath(os.fspath(folder))
    output = os.fspath(output) if output is not None else folder
    existing = folder
    while not os.path.exists(existing):  # the nearest ancestor that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{output}: cannot be written, as {existing} is a file, not a folder")
    try:  # os.access is not enough: root ignores permissions, but not a read-only file system
        fd, probe = tempfile.mkstemp(prefix=f".o1_jax-write-check-{uuid.uuid4().hex[:8]}", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{output}: cannot be written, as the folder {existing} refuses new files "
                         f"({e.strerror})") from None


def check_output(path: str | os.PathLike, overwrite: bool = False, *, folder: bool = False,
                 resumable: bool = False, flag: str = "--overwrite") -> None:
    """Before any work: raises (touching nothing) when the output `path` may not be written.

    An existing file, or a folder that is not empty, is refused unless `overwrite`; a `resumable`
    output is accepted (the command resumes it). `folder`: the output is a folder, not a file.
    A URL (gs://...) is checked for existence only.
    """
    text = os.fspath(path)
    if not text:
        raise ValueError("the output path is empty: expected a file or folder to write")
    p = epath.Path(text)
    exists = p.exists()
    if exists:
        if p.is_dir() and not folder:
            raise IsADirectoryError(f"{text}: is a folder (expected a file to write)")
        if folder and not p.is_dir():
            raise NotADirectoryError(f"{text}: exists and is not a folder (expected a folder to write)")
        if not (overwrite or resumable):
            if not folder:
                raise FileExistsError(f"{text}: already exists; pass {flag} to replace it")
            if any(p.iterdir()):  # an empty folder is as good as none
                raise FileExistsError(f"{text}: exists and is not empty; pass {flag} to replace it")
    if is_remote(text):
        return
    check_writable(text if (exists and folder and resumable) else os.path.dirname(os.path.abspath(text)), text)
