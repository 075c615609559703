"""Training checkpoints: an orbax `CheckpointManager` that saves the train state with its data position.

Each step directory holds three orbax items:

    <dir>/<step>/state   the train state (params, optimizer state, step, rng key data), StandardSave
    <dir>/<step>/meta    a JSON dict from the trainer (data position, rng seed, ...), JsonSave
    <dir>/<step>/config  the config fingerprint it was trained with, JsonSave

orbax writes a step to `<step>.orbax-checkpoint-tmp` and renames it only once every
process has finished, so a killed save never shows up as a step; leftover temp
directories are removed when the next `Checkpointer` opens the directory.

Restoring takes an abstract state (`jax.ShapeDtypeStruct`s with shardings) and
puts every array straight onto those shardings, so a run saved on one mesh
resumes on another. Before any array is read, the stored config fingerprint and
the stored shapes are compared with the current ones, and a mismatch stops with
one sentence naming the key or the parameter.

Integrity. Once orbax has committed a step, process 0 writes `<dir>/<step>/sha256_manifest.json`
(the sha256 of every other file in the step folder). "Committed" is only known on the main
thread when orbax's background save has finished, so the manifest of an async save is written
by the first of: `maybe_save` on a later step that finds the save finished (a cheap poll),
the next `save` (which has to wait for the previous one anyway), `wait` and `close`. The same
poll surfaces a failed background write (a full disk) as one OSError at the next step, instead
of training on without checkpoints. Hashing reads the step back once, on the main thread.

`restore` checks, in this order: the manifest (a file missing or with another sha256), orbax's
and our JSON metadata (a file that does not parse is named), the config fingerprint and shapes
(a mismatch is an error, never a fallback), the arrays themselves, and that every floating
array is finite (`save` refuses a non-finite state, so one restored non-finite was corrupted on
disk). With `step=None` a corrupted step falls back to the next older one, printing one line
saying which step and file failed; when none is intact it stops with one sentence naming the
file. An explicit `step` never falls back.

A committed step WITHOUT a manifest is what a process killed between orbax's commit and the
manifest write leaves (only ever the newest step), or a step saved before manifests existed.
It is restored without the sha256 check, after the other checks above, with one line saying
so; it is never given a manifest afterwards, since that would vouch for bytes nobody checked.

Every method that writes or reads is collective: in a multi-process run all
processes call it (orbax synchronises them and has each write its own shards). Every
process reads the same files, so all reach the same verdict on which step is intact.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from o1_jax.files import atomic_write_json

log = logging.getLogger(__name__)

STATE, META, CONFIG = "state", "meta", "config"
MANIFEST = "sha256_manifest.json"
# orbax's JSON files in a step folder, in the order a bad one is looked for.
_JSON_FILES = ("_CHECKPOINT_METADATA", f"{META}/metadata", f"{CONFIG}/metadata", f"{STATE}/_METADATA",
               f"{STATE}/_sharding")


class _OneLineOrbaxErrors(logging.Filter):
    """Drops the traceback from orbax's ERROR records: every save failure reaches the caller as one
    OSError anyway, and a full disk otherwise prints hundreds of lines of the same traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE_ORBAX_ERRORS = _OneLineOrbaxErrors()


def _quiet_closed_loop_callbacks(unraisable) -> None:
    """sys.unraisablehook that drops asyncio's "Event loop is closed" from tensorstore's callbacks.

    When a background save fails (a full disk), orbax closes its event loop while tensorstore's
    pending writes still report back to it; each late report is an unraisable RuntimeError whose
    traceback would be printed after (or in the middle of) the one OSError the caller reports.
    Every other unraisable exception goes to the previous hook.
    """
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
        log.debug("dropped a late tensorstore callback to orbax's closed event loop")
        return
    sys.__unraisablehook__(unraisable)


class _Corrupt(Exception):
    """A step that cannot be trusted; the message names the file and what is wrong with it."""


def _files(folder: epath.Path, prefix: str = "") -> list[str]:
    """Every file under `folder` as a '/'-joined relative path, sorted (local or remote)."""
    out = []
    for child in folder.iterdir():
        rel = f"{prefix}{child.name}"
        out += _files(child, rel + "/") if child.is_dir() else [rel]
    return sorted(out)


def _sha256(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _finite_flags_fn(out_sharding):
    # One bool per leaf; the result is replicated so every process can read it.
    return jax.jit(lambda leaves: jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]), out_shardings=out_sharding)


def nonfinite_leaves(tree: Any) -> list[str]:
    """Names (as `_flat_leaves` spells them) of the floating arrays in `tree` that hold a NaN or inf."""
    flat = {k: x for k, x in _flat_leaves(tree).items()
            if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)}
    if not flat:
        return []
    first = next(iter(flat.values())).sharding
    out = NamedSharding(first.mesh, PartitionSpec()) if isinstance(first, NamedSharding) else None
    flags = _finite_flags_fn(out)(list(flat.values()))
    flags = np.asarray(flags.addressable_data(0))
    return [name for name, ok in zip(flat, flags) if not ok]


def _jsonable(obj: Any, what: str) -> Any:
    """A JSON round trip of `obj` (numpy scalars become Python numbers), or one clear error."""

    def default(x):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) == 0:
            return np.asarray(x).item()
        raise TypeError(f"{type(x).__name__} {x!r}")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers); found {e}") from None


def _flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_leaves(tree: Any) -> dict[str, Any]:
    """`{"params.layers.q_proj.kernel": leaf}`; namedtuple fields by name, the way orbax names them."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(_key_str(k) for k in path): leaf for path, leaf in leaves}


class Checkpointer:
    """Keep-N, optionally asynchronous checkpoints of a train state plus a JSON meta dict.

    Args:
      directory: where step directories go (local path or any `etils.epath` URL, e.g. gs://).
      save_every: `maybe_save` saves on steps that are multiples of this.
      keep: how many of the most recent steps to keep; older ones are deleted.
      async_save: write in a background thread after a blocking device->host copy,
        so the caller may donate or overwrite the state as soon as `save` returns.
      config_fingerprint: JSON-able (nested) dict of the config values that fix
        parameter shapes; saved with every step and compared on restore.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep: int = 3,
        async_save: bool = True,
        config_fingerprint: Mapping[str, Any] | None = None,
    ):
        if save_every < 1:
            raise ValueError(f"save_every={save_every}: expected a positive number of steps")
        if keep < 1:
            raise ValueError(f"keep={keep}: expected at least 1 checkpoint to keep")
        if "://" not in str(directory):  # orbax wants absolute local paths
            directory = os.path.abspath(os.fspath(directory))
        self.directory = epath.Path(directory)
        self.save_every = save_every
        self.fingerprint = _jsonable(dict(config_fingerprint or {}), "config_fingerprint")

        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add(STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
        registry.add(STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
        # The same files read as a plain PyTree: only it can restore a part of the state.
        registry.add(STATE, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
        for item in (META, CONFIG):
            registry.add(item, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
            registry.add(item, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # remove what killed saves left behind
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)
        logging.getLogger("absl").addFilter(_ONE_LINE_ORBAX_ERRORS)  # once: the same filter object
        if sys.unraisablehook is sys.__unraisablehook__:  # a hook someone else installed is kept
            sys.unraisablehook = _quiet_closed_loop_callbacks
        self._async = async_save
        self._unfinished: list[int] = []  # saved by this process, not yet known committed + manifested

    # ---- queries ----

    def latest_step(self) -> int | None:
        """The newest finished (or, in this process, in-flight async) step; None when there is none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    # ---- saving ----

    def maybe_save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None) -> bool:
        """Saves when `step` is a multiple of `save_every`; returns whether it saved.

        On other steps it checks, without blocking, whether an async save has finished, so its
        manifest is written and a failed write stops the caller at once (an OSError).
        """
        if step % self.save_every:
            if self._unfinished and not self._mngr.is_saving_in_progress():
                self._finish()
            return False
        return self.save(step, state, meta)

    def save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
        """Saves `state` and `meta` as `step` (every step, whatever `save_every` says).

        `force` is accepted for the call sites that mean "save now regardless" (SIGTERM,
        end of training); a step that already exists is never overwritten, and saving it
        again returns False instead of raising. Raises FloatingPointError (saving nothing)
        when a floating array of `state` is not finite, and OSError when the write fails.
        """
        del force  # the save_every policy lives in maybe_save; here every call saves
        step = int(step)
        self._finish()  # orbax would wait for the previous save here anyway
        if step in self._mngr.all_steps():
            log.info("checkpoint for step %d already exists in %s; not saving again", step, self.directory)
            return False
        bad = nonfinite_leaves(state)
        if bad:
            raise FloatingPointError(
                f"{self.directory}: not saving step {step}, its state has non-finite values in {bad[0]}"
                + (f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""))
        meta = _jsonable(dict(meta or {}), "checkpoint meta")
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                META: ocp.args.JsonSave(meta),
                CONFIG: ocp.args.JsonSave(self.fingerprint),
            }
        )
        self._unfinished.append(step)
        # force=True: the decision was made above, and orbax's own policy would skip a
        # step while an earlier async save is still in flight.
        try:
            saved = self._mngr.save(step, args=args, force=True)
        except Exception as e:  # a synchronous save (or its blocking part) that failed
            raise self._save_error(e) from None
        if saved:
            log.info("saving checkpoint for step %d to %s", step, self.directory)
        else:
            self._unfinished.remove(step)
        if not self._async:
            self._finish()
        return saved

    def _finish(self) -> None:
        """Waits for the save in flight, raises its failure as one OSError, writes the manifests."""
        if not self._unfinished:
            return
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            raise self._save_error(e) from None
        steps, self._unfinished = self._unfinished, []
        if jax.process_index() != 0:
            return
        for step in steps:
            folder = self.directory / str(step)
            if folder.is_dir():  # not already removed by keep-N
                files = [f for f in _files(folder) if f != MANIFEST]
                atomic_write_json(folder / MANIFEST, {"step": step, "sha256": {f: _sha256(folder / f) for f in files}})

    def _save_error(self, e: Exception) -> OSError:
        code = getattr(e, "errno", None)
        found = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore reports the OS error in its message
        code = code or (int(found.group(1)) if found else None)
        reason = f"{os.strerror(code)} (errno {code})" if code else (str(e).splitlines() or [type(e).__name__])[0][:300]
        steps = self._unfinished
        self._unfinished = []
        intact = [s for s in self.all_steps() if s not in steps and (self.directory / str(s)).is_dir()]
        err = OSError(f"{self.directory}: saving the checkpoint for step {steps[-1] if steps else '?'} failed: "
                      f"{reason}; the steps saved before it ({', '.join(map(str, intact)) or 'none'}) are intact")
        err.errno = code
        return err

    def wait(self) -> None:
        """Blocks until async saves have finished (and raises their errors, if any)."""
        self._finish()

    def close(self) -> None:
        try:
            self._finish()
        finally:
            self._mngr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- restoring ----

    def restore(self, step: int | None, abstract_state: Any, partial: bool = False) -> tuple[Any, dict[str, Any]]:
        """Returns `(state, meta)` of `step` (the latest intact one when None), arrays on `abstract_state`'s shardings.

        `partial=True`: `abstract_state` names only some of the saved top-level entries (e.g. just
        `{"params": ...}`), and only those arrays are read; the others (the optimizer state) are not.
        Raises FileNotFoundError when the step does not exist and ValueError when the
        checkpoint is corrupted (with `step=None`: when no step is intact) or does not fit
        the current config or `abstract_state`.
        """
        _, state, meta = self.restore_step(step, abstract_state, partial)
        return state, meta

    def restore_step(self, step: int | None, abstract_state: Any,
                     partial: bool = False) -> tuple[int, Any, dict[str, Any]]:
        """`(step, state, meta)`: `restore`, also saying which step it restored (after a fallback, an older one)."""
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoints in {self.directory}")
            candidates = steps[::-1]
        else:
            if int(step) not in steps:
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; found steps {steps}")
            candidates = [int(step)]

        abstract_state = jax.tree.map(_to_abstract, abstract_state)
        for name, leaf in _flat_leaves(abstract_state).items():
            if leaf.sharding is None:
                raise ValueError(
                    f"abstract_state leaf {name} has no sharding; pass jax.ShapeDtypeStruct(shape, dtype, "
                    "sharding=...) so the checkpoint can be placed on the current mesh"
                )
        for i, s in enumerate(candidates):
            try:
                state, meta = self._restore_one(s, abstract_state, partial)
                return s, state, meta
            except _Corrupt as e:
                if i + 1 == len(candidates):
                    older = "" if step is not None else f", and no older intact step remains in {self.directory}"
                    raise ValueError(f"{e}{older}") from None
                if jax.process_index() == 0:
                    print(f"{e}; falling back to step {candidates[i + 1]}", flush=True)
        raise AssertionError("unreachable")

    def set_aside(self, step: int) -> epath.Path:
        """Renames a (corrupted) step folder to `<step>.corrupt`, out of orbax's sight; returns the new path.

        A run that fell back to an older step calls this for the newer ones, so that it saves
        those steps afresh instead of skipping them as existing, and keep-N never counts them.
        """
        folder, aside = self.directory / str(step), self.directory / f"{step}.corrupt"
        if jax.process_index() == 0:
            if aside.exists():
                aside.rmtree()
            folder.rename(aside)
        if jax.process_count() > 1:  # every process must see the rename before it reloads
            multihost_utils.sync_global_devices(f"o1_jax_set_aside_{step}")
        self._mngr.reload()
        return aside

    def _restore_one(self, step: int, abstract_state: Any, partial: bool) -> tuple[Any, dict[str, Any]]:
        folder = self.directory / str(step)
        where = f"checkpoint at {folder}"
        self._verify_manifest(step, folder)
        try:
            self._check_fingerprint(step, where)
            self._check_shapes(step, where, abstract_state, partial)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._corrupt_json(folder, e) from None
        if partial:
            restore_args = jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), abstract_state)
            state_args = ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args, partial_restore=True)
        else:
            state_args = ocp.args.StandardRestore(abstract_state)
        try:
            restored = self._mngr.restore(
                step, args=ocp.args.Composite(**{STATE: state_args, META: ocp.args.JsonRestore()}))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._corrupt_json(folder, e) from None
        except (OSError, ValueError) as e:  # tensorstore's read or decode errors are ValueErrors
            first = (str(e).splitlines() or [type(e).__name__])[0][:300]
            raise _Corrupt(f"{folder}: the arrays could not be read ({first})") from None
        bad = nonfinite_leaves(restored[STATE])
        if bad:
            raise _Corrupt(f"{folder / STATE}: {bad[0]} is not finite, though a non-finite state is never saved, "
                           "so the step is corrupted")
        return restored[STATE], dict(restored[META] or {})

    def _verify_manifest(self, step: int, folder: epath.Path) -> None:
        path = folder / MANIFEST
        if not path.exists():
            if jax.process_index() == 0:
                print(f"{folder}: no {MANIFEST} (saved before manifests, or killed before it was written), "
                      f"so step {step} is restored without the sha256 check", flush=True)
            return
        try:
            want = json.loads(path.read_text())["sha256"]
            assert isinstance(want, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise _Corrupt(f"{path}: not a JSON object with a 'sha256' mapping, so step {step} is corrupted") from None
        for rel, digest in want.items():
            f = folder / rel
            if not f.exists():
                raise _Corrupt(f"{f}: missing, though {MANIFEST} lists it, so step {step} is corrupted")
            if _sha256(f) != digest:
                raise _Corrupt(f"{f}: its sha256 differs from the one in {MANIFEST}, so step {step} is corrupted")

    @staticmethod
    def _corrupt_json(folder: epath.Path, e: Exception) -> _Corrupt:
        for rel in _JSON_FILES:
            f = folder / rel
            try:
                if f.exists():
                    json.loads(f.read_text())
            except (ValueError, UnicodeDecodeError) as bad:
                return _Corrupt(f"{f}: not valid JSON ({bad}), so step {folder.name} is corrupted")
        return _Corrupt(f"{folder}: a metadata file is not valid JSON ({e}), so step {folder.name} is corrupted")

    def _check_fingerprint(self, step: int, where: str) -> None:
        if not (self.directory / str(step) / CONFIG).exists():
            log.warning("%s has no config fingerprint; only shapes are checked", where)
            return
        stored = self._mngr.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
        old, new = _flatten_config(stored or {}), _flatten_config(self.fingerprint)
        diffs = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in new:
                diffs.append(f"{key}={json.dumps(old[key])}, which the config does not have")
            elif key not in old:
                diffs.append(f"no {key}, but the config says {json.dumps(new[key])}")
            elif old[key] != new[key]:
                diffs.append(f"{key}={json.dumps(old[key])}, but the config says {json.dumps(new[key])}")
        if diffs:
            raise ValueError(f"{where} was trained with " + "; ".join(diffs))

    def _check_shapes(self, step: int, where: str, abstract_state: Any, partial: bool) -> None:
        stored_tree = self._mngr.metadata(step).item_metadata[STATE]
        stored_tree = getattr(stored_tree, "tree", stored_tree)  # TreeMetadata wraps the tree
        stored = _flat_leaves(stored_tree)
        wanted = _flat_leaves(abstract_state)
        missing = [name for name in wanted if name not in stored]
        if missing:
            raise ValueError(
                f"{where} has no {missing[0]} (shape {tuple(wanted[missing[0]].shape)}), which the state expects"
                + (f" ({len(missing)} arrays missing in all)" if len(missing) > 1 else "")
            )
        differ = [name for name, leaf in wanted.items() if tuple(stored[name].shape) != tuple(leaf.shape)]
        if differ:
            name = differ[0]
            raise ValueError(
                f"{where} has {name} with shape {tuple(stored[name].shape)}, but the state expects "
                f"{tuple(wanted[name].shape)}" + (f" ({len(differ)} arrays differ in all)" if len(differ) > 1 else "")
            )
        wanted_tops = {name.split(".")[0] for name in wanted}
        extra = [name for name in stored if name not in wanted and not (partial and name.split(".")[0] not in wanted_tops)]
        if extra:
            raise ValueError(
                f"{where} has {len(extra)} parameter(s) the state does not expect, the first {extra[0]} "
                f"(shape {tuple(stored[extra[0]].shape)})"
            )


def _to_abstract(x: Any) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    raise ValueError(f"abstract_state leaves must be jax.ShapeDtypeStruct or jax.Array, found {type(x).__name__}")
