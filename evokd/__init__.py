"""evokd: knowledge distillation for fairseq translation models.

Loaded by fairseq (``fairseq-train --user-dir evokd``), or imported after fairseq, the
package registers the ``evokd_translation`` task, the ``word_kd`` criterion and the
``transformer_evokd_*`` architectures, and lets torch >= 2.6 load fairseq checkpoints (see
:mod:`evokd.core.checkpoint`). Imported before fairseq (the ``evokd`` command does, to answer
``--help`` without loading torch), it registers them the moment fairseq is imported.
"""

import importlib.abc
import importlib.util
import logging
import sys

__version__ = "0.1.0"
__all__ = ["register"]

_registered = False
# fairseq logs an INFO line about tensorboardX on import; it concerns speech tasks only.
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)


def register():
    """Register evokd's components with fairseq (once; importing fairseq is enough)."""
    global _registered
    if _registered:
        return
    _registered = True
    from .core.checkpoint import register_safe_globals

    register_safe_globals()
    from . import criterions, models, tasks  # noqa: F401


class _RegisterAfterFairseq(importlib.abc.MetaPathFinder):
    """Finds ``fairseq`` as Python would, and runs :func:`register` once it is loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "fairseq":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register()

        spec.loader.exec_module = exec_then_register
        return spec


if "fairseq" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterAfterFairseq())
