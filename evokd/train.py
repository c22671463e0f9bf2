"""``fairseq-train`` that also runs under ``torchrun`` without GPUs.

On GPUs this is exactly ``fairseq-train``: fairseq reads torchrun's environment itself.
Without CUDA, fairseq's torchrun support divides by the GPU count; here the rank and world
size are taken from torchrun's environment instead, and each process trains on the CPU
(use ``--cpu --distributed-backend gloo --ddp-backend legacy_ddp``). ``--bf16`` means bf16
on the GPU (fairseq 0.12's own parser turns it into ``--tpu``). Started as
``torchrun --nproc-per-node N -m evokd.train DATA ...`` or ``evokd-train DATA ...``.
"""

import os
import sys

import torch

from evokd.core.checkpoint import register_safe_globals

TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def cpu_torchrun_overrides(cfg, environ=None):
    """Point fairseq at torchrun's process group when there is no GPU to count."""
    environ = os.environ if environ is None else environ
    if torch.cuda.is_available() or not all(k in environ for k in TORCHRUN_ENV):
        return
    dist = cfg.distributed_training
    if dist.distributed_init_method is not None:
        return
    dist.distributed_init_method = "env://"
    dist.distributed_world_size = int(environ["WORLD_SIZE"])
    dist.distributed_rank = int(environ["RANK"])
    dist.distributed_no_spawn = True
    dist.device_id = 0


def cli_main(argv=None):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli import train

    register_safe_globals()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    given = sys.argv[1:] if argv is None else argv
    if args.bf16 and "--tpu" not in given:
        args.tpu = False  # fairseq 0.12 turns --bf16 into --tpu (its issue #4696)
    cfg = convert_namespace_to_omegaconf(args)
    cpu_torchrun_overrides(cfg)
    distributed_utils.call_main(cfg, train.main)


if __name__ == "__main__":
    cli_main()
