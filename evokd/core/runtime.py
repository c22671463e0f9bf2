"""Setting fairseq objects up in-process, through fairseq's own command-line parser.

Building fairseq's config dataclasses directly shares nested objects between instances in
ve-fairseq and leaves their ``II(...)`` interpolations unresolved; the parser does neither.
A translation task and its beam search need no whole FairseqConfig: they are set up from the
parser's namespace (:func:`generation_args`), as fairseq's legacy path does, which gives the
same task and generation settings as the composed config (tests/test_distill_data.py).
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


def generation_args(argv, default_task="translation"):
    """fairseq-generate's flags ``argv`` as its parser reads and checks them: an argparse
    namespace, which fairseq's ``tasks.setup_task`` and ``build_generator`` take (its legacy
    path: the task's config dataclass filled from the namespace). Composing the whole
    FairseqConfig through Hydra, as :func:`parse_config` does, costs about 0.25 s a call."""
    from fairseq import options

    with FAIRSEQ_CONFIG_LOCK:
        p = options.get_generation_parser(default_task=default_task)
        return options.parse_args_and_arch(p, input_args=[str(a) for a in argv])


def translation_args(data, src=None, tgt=None, extra=()):
    """:func:`generation_args` of the translation task on ``data``; ``extra``: more
    generation flags (decoding settings)."""
    argv = [data, "--task", "translation", *extra]
    if src:
        argv += ["--source-lang", src]
    if tgt:
        argv += ["--target-lang", tgt]
    return generation_args(argv)


def translation_task(data, subsets=(), src=None, tgt=None, extra=(), args=None):
    """fairseq's translation task on ``data`` with ``subsets`` loaded. ``args``: the flags of
    :func:`translation_args` when the caller has parsed them already."""
    from fairseq import tasks

    task = tasks.setup_task(args or translation_args(data, src, tgt, extra))
    for subset in subsets:
        task.load_dataset(subset)
    return task
