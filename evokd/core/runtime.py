"""Setting fairseq objects up in-process, through fairseq's own command-line parser.

Building fairseq's config dataclasses directly shares nested objects between instances in
ve-fairseq and leaves their ``II(...)`` interpolations unresolved; the parser does neither.
"""

import threading
from pathlib import Path

USER_DIR = str(Path(__file__).resolve().parents[1])  # the evokd package: fairseq's --user-dir

# fairseq composes its configs through Hydra's one global instance (``initialize`` in
# ``convert_namespace_to_omegaconf``, also reached from checkpoint loading): two threads
# doing it at once fail with "GlobalHydra is already initialized". A chain running several
# jobs runs its teacher steps in threads of one process, so every such call holds this.
FAIRSEQ_CONFIG_LOCK = threading.RLock()


def parse_config(argv, parser="training", default_task="translation"):
    """An OmegaConf FairseqConfig from command-line flags (``--user-dir`` not needed)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    with FAIRSEQ_CONFIG_LOCK:
        if parser == "training":
            p = options.get_training_parser(default_task=default_task)
        else:
            p = options.get_generation_parser(default_task=default_task)
        args = options.parse_args_and_arch(p, input_args=[str(a) for a in argv])
        return convert_namespace_to_omegaconf(args)


def translation_config(data, src=None, tgt=None, extra=()):
    """fairseq-generate's configuration of the translation task on ``data``; ``extra``:
    more generation flags (decoding settings)."""
    argv = [data, "--task", "translation", *extra]
    if src:
        argv += ["--source-lang", src]
    if tgt:
        argv += ["--target-lang", tgt]
    return parse_config(argv, parser="generation")


def translation_task(data, subsets=(), src=None, tgt=None, extra=(), cfg=None):
    """fairseq's translation task on ``data`` with ``subsets`` loaded. ``cfg``: the
    configuration of :func:`translation_config` when the caller has parsed it already."""
    from fairseq import tasks

    cfg = cfg or translation_config(data, src, tgt, extra)
    task = tasks.setup_task(cfg.task)
    for subset in subsets:
        task.load_dataset(subset)
    return task
