"""Orbax checkpoints of a run: named pytree items plus the configuration as JSON.

A checkpoint ``checkpoints/<step>/`` holds one orbax item per name given to
:meth:`Checkpointer.save` (the train state, and whatever else rebuilds the run, such as a
grammar's rules) and a ``config`` item, the run's configuration as JSON: a checkpoint alone
rebuilds its run. Saves are synchronous and committed atomically by orbax (written under a
temporary name, renamed when complete), so a checkpoint directory that exists is whole.
"""

from __future__ import annotations

from pathlib import Path

import jax

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save and restore the checkpoints in one ``checkpoints/`` folder.

    Args:
      directory: the ``checkpoints/`` folder.
      max_to_keep: checkpoints kept (older ones are deleted after a newer one is saved).
      create: create ``directory`` when missing (a reader passes ``False``).
    """

    def __init__(self, directory, *, max_to_keep: int = 2, create: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (``None`` when there is none)."""
        return self.manager.latest_step()

    def save(self, step: int, items: dict, config: dict) -> None:
        """Save ``items`` (name -> pytree) and ``config`` (JSON) as checkpoint ``step``."""
        import orbax.checkpoint as ocp

        args = {name: ocp.args.StandardSave(item) for name, item in items.items()}
        self.manager.save(step, args=ocp.args.Composite(**args,
                                                        config=ocp.args.JsonSave(config)))
        self.manager.wait_until_finished()

    def restore_config(self, step: int) -> dict:
        """The configuration stored in checkpoint ``step``."""
        import orbax.checkpoint as ocp

        return self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]

    def restore(self, step: int, templates: dict) -> dict:
        """The items of checkpoint ``step``, restored into the shapes and dtypes of
        ``templates`` (name -> pytree of arrays, as given to :meth:`save`)."""
        import orbax.checkpoint as ocp

        abstract = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, item)
                    for name, item in templates.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(item) for name, item in abstract.items()}))
        return {name: restored[name] for name in templates}
