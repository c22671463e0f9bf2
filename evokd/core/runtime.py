"""Setting fairseq objects up in-process, through fairseq's own command-line parser.

Building fairseq's config dataclasses directly shares nested objects between instances in
ve-fairseq and leaves their ``II(...)`` interpolations unresolved; the parser does neither.
"""

from pathlib import Path

USER_DIR = str(Path(__file__).resolve().parents[1])  # the evokd package: fairseq's --user-dir


def parse_config(argv, parser="training", default_task="translation"):
    """An OmegaConf FairseqConfig from command-line flags (``--user-dir`` not needed)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if parser == "training":
        p = options.get_training_parser(default_task=default_task)
    else:
        p = options.get_generation_parser(default_task=default_task)
    args = options.parse_args_and_arch(p, input_args=[str(a) for a in argv])
    return convert_namespace_to_omegaconf(args)


def translation_task(data, subsets=(), src=None, tgt=None, extra=()):
    """fairseq's translation task on ``data`` with ``subsets`` loaded."""
    from fairseq import tasks

    argv = [data, "--task", "translation", *extra]
    if src:
        argv += ["--source-lang", src]
    if tgt:
        argv += ["--target-lang", tgt]
    cfg = parse_config(argv, parser="generation")
    task = tasks.setup_task(cfg.task)
    for subset in subsets:
        task.load_dataset(subset)
    return task
