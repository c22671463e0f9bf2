"""evokd: knowledge distillation for fairseq translation models.

Importing the package (``fairseq-train --user-dir evokd`` does) registers the
``evokd_translation`` task, the ``word_kd`` criterion and the ``transformer_evokd_*``
architectures, and lets torch >= 2.6 load fairseq checkpoints (see
:mod:`evokd.core.checkpoint`).
"""

import logging

# fairseq logs an INFO line about tensorboardX on import; it concerns speech tasks only.
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)

from .core.checkpoint import register_safe_globals  # noqa: E402

register_safe_globals()

from . import criterions, models, tasks  # noqa: E402

__version__ = "0.1.0"
__all__ = ["criterions", "models", "tasks", "register_safe_globals"]
