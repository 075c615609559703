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

Every method that writes or reads is collective: in a multi-process run all
processes call it (orbax synchronises them and has each write its own shards).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE, META, CONFIG = "state", "meta", "config"


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

    # ---- queries ----

    def latest_step(self) -> int | None:
        """The newest finished (or, in this process, in-flight async) step; None when there is none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    # ---- saving ----

    def maybe_save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None) -> bool:
        """Saves when `step` is a multiple of `save_every`; returns whether it saved."""
        if step % self.save_every:
            return False
        return self.save(step, state, meta)

    def save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
        """Saves `state` and `meta` as `step` (every step, whatever `save_every` says).

        `force` is accepted for the call sites that mean "save now regardless" (SIGTERM,
        end of training); a step that already exists is never overwritten, and saving it
        again returns False instead of raising.
        """
        del force  # the save_every policy lives in maybe_save; here every call saves
        step = int(step)
        if step in self._mngr.all_steps():
            log.info("checkpoint for step %d already exists in %s; not saving again", step, self.directory)
            return False
        meta = _jsonable(dict(meta or {}), "checkpoint meta")
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                META: ocp.args.JsonSave(meta),
                CONFIG: ocp.args.JsonSave(self.fingerprint),
            }
        )
        # force=True: the decision was made above, and orbax's own policy would skip a
        # step while an earlier async save is still in flight.
        saved = self._mngr.save(step, args=args, force=True)
        if saved:
            log.info("saving checkpoint for step %d to %s", step, self.directory)
        return saved

    def wait(self) -> None:
        """Blocks until async saves have finished (and raises their errors, if any)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- restoring ----

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Returns `(state, meta)` of `step` (the latest when None), arrays on `abstract_state`'s shardings.

        Raises FileNotFoundError when the step does not exist and ValueError when the
        checkpoint does not fit the current config or `abstract_state`.
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoints in {self.directory}")
            step = steps[-1]
        step = int(step)
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; found steps {steps}")
        where = f"checkpoint at {self.directory / str(step)}"

        abstract_state = jax.tree.map(_to_abstract, abstract_state)
        for name, leaf in _flat_leaves(abstract_state).items():
            if leaf.sharding is None:
                raise ValueError(
                    f"abstract_state leaf {name} has no sharding; pass jax.ShapeDtypeStruct(shape, dtype, "
                    "sharding=...) so the checkpoint can be placed on the current mesh"
                )

        self._check_fingerprint(step, where)
        self._check_shapes(step, where, abstract_state)

        restored = self._mngr.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], dict(restored[META] or {})

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

    def _check_shapes(self, step: int, where: str, abstract_state: Any) -> None:
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
        extra = [name for name in stored if name not in wanted]
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
