"""Where a chain's files live, in one place::

CHECKPOINTS/RUN/STAGE/              a stage's folder (or the folder given for it)
CHECKPOINTS/RUN/STAGE/evokd_stage.json   the stage's record
CHECKPOINTS/RUN/STAGE/train.log     fairseq's output
CHECKPOINTS/RUN/caches/TEACHER.DATA.topK   a teacher cache of a (teacher, data) pair
CHECKPOINTS/RUN/shared/STAGE, .../shared/caches/   with --seeds: the stages all seeds share,
                                    and the caches of those teachers
CHECKPOINTS/RUN/steps/KIND-NAME.json       the record of a teacher step
CHECKPOINTS/RUN/jobs/KIND-NAME.json        when and in which job slot a step last ran
CHECKPOINTS/RUN/jobs/slurm.json            the Slurm job id of every submitted step
CHECKPOINTS/RUN/jobs/KIND-NAME.sbatch, .log   a step's Slurm job script and its output
DATA.seqkd-RUN-TEACHER[.ENGINE-QUANTIZATION][+refs]   sequence-level KD data, beside the
                                    plan's data (ENGINE: ctranslate2 where installed,
                                    none for fairseq's own beam search; TEACHER:
                                    a stage, a checkpoint's folder-stem, or for a model
                                    folder or server URL its name and a digest)
RESULTS/RUN/stages/STAGE.json        a stage's evaluation
RESULTS/RUN/results.{json,md,png}    the report
"""

import hashlib
import re
from pathlib import Path

from evokd.chain.plan import cache_spec

STAGE_RECORD = "evokd_stage.json"


class Layout:
    """The paths of one run of ``plan`` named ``run_name`` (default: the plan's name).

    ``stage_dirs``: stage name -> folder, for stages kept elsewhere (a recipe's
    ``--save-dir``, the teachers shared by the seeds of a plan).
    """

    def __init__(self, plan, run_name=None, checkpoints="checkpoints", results="results",
                 stage_dirs=None):  # fmt: skip
        self.plan = plan
        self.run_name = run_name or plan.name
        self.checkpoints = Path(checkpoints) / self.run_name
        self.results = Path(results) / self.run_name
        self.stage_dirs = dict(stage_dirs or {})

    def stage_dir(self, stage):
        return Path(self.stage_dirs.get(stage.name, self.checkpoints / stage.name))

    def stage_record_path(self, stage):
        return self.stage_dir(stage) / STAGE_RECORD

    def train_log(self, stage):
        return self.stage_dir(stage) / "train.log"

    def best_checkpoint(self, name_or_path):
        """A stage's best checkpoint, or a checkpoint file given directly."""
        if name_or_path in self.plan.stage_names:
            return self.stage_dir(self.plan.stage(name_or_path)) / "checkpoint_best.pt"
        return Path(name_or_path)

    def model_name(self, ref, model=None):
        """A stage's name; for a checkpoint file its folder and stem (two files called
        checkpoint_best.pt name different models); for a model folder or a server URL (with
        the served ``model``) a readable name and the digest of what it is, as a folder
        name."""
        if ref in self.plan.stage_names:
            return ref
        text = str(ref)
        if is_url(text):
            readable = re.sub(r"^https?://|/v1/?$", "", text) + (f"-{model}" if model else "")
        elif Path(text).suffix == ".pt" or Path(text).is_file():
            return f"{Path(ref).parent.name}-{Path(ref).stem}".lstrip("-")
        else:  # a model folder: by where it is, wherever the plan is run from
            text = str(Path(text).resolve())
            readable = Path(text).name
        digest = hashlib.sha256(f"{text}\n{model or ''}".encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', readable).strip('-.')}-{digest}"

    def teacher_path(self, ref):
        """What a teacher is read from: a stage's best checkpoint, a checkpoint file, or the
        model folder or server URL as the plan gives it."""
        if is_url(ref) or (ref not in self.plan.stage_names and Path(ref).is_dir()):
            return str(ref)
        return str(self.best_checkpoint(ref))

    def stage_data(self, stage):
        """The binarized folder a stage trains on."""
        if stage.data:
            return stage.data
        if stage.seqkd:
            spec = stage.seqkd
            suffix = "+refs" if spec.get("keep-references") else ""
            if spec.get("loop-fallback"):  # other targets: another folder
                suffix += f"+loop-fallback{spec['loop-fallback']}"
            engine = self.seqkd_engine(spec)
            if engine != "fairseq":  # another engine, other data
                suffix = f".{engine}-{spec.get('ct2-quantization', 'float32')}{suffix}"
            teacher = self.model_name(spec["teacher"], spec.get("teacher-model"))
            run = self.run_name.replace("/", "-")  # tiny/seed2 -> tiny-seed2
            return f"{self.plan.data.rstrip('/')}.seqkd-{run}-{teacher}{suffix}"
        return self.plan.data

    def seqkd_engine(self, spec):
        """The engine that decodes a ``seqkd:`` teacher: ``engine:`` if given; for a fairseq
        checkpoint :func:`evokd.distill.ct2.default_engine`; a model folder or a server
        decodes with its own (``fairseq`` stands for it: no suffix)."""
        ref = spec["teacher"]
        if is_url(ref) or (ref not in self.plan.stage_names and Path(ref).is_dir()):
            return spec.get("engine", "fairseq")
        from evokd.distill.ct2 import default_engine

        return spec.get("engine") or default_engine()

    def cache_dir(self, stage):
        """The cache of the stage's (teacher, training data) pair, shared by every stage with
        the same pair; None for a stage that reads its teacher online."""
        spec = cache_spec(self.plan, stage)
        if spec is None:
            return None
        teacher = self.model_name(stage.teacher)
        data = Path(self.stage_data(stage)).name
        root = self.checkpoints
        if stage.teacher in self.plan.shared and stage.teacher in self.stage_dirs:
            root = self.stage_dir(self.plan.stage(stage.teacher)).parent  # shared by the seeds
        return root / "caches" / f"{teacher}.{data}.top{spec['topk']}"

    @property
    def steps_dir(self):
        return self.checkpoints / "steps"

    def step_record_path(self, kind, name):
        """The record of a teacher step (``cache`` or ``distill``) that made ``name``."""
        return self.steps_dir / f"{kind}-{name}.json"

    @property
    def jobs_dir(self):
        return self.checkpoints / "jobs"

    def job_path(self, key, suffix=".json"):
        """A step's file in the jobs folder: ``stage:NAME`` -> ``jobs/stage-NAME.json``."""
        return self.jobs_dir / (key.replace(":", "-", 1) + suffix)

    @property
    def slurm_jobs_path(self):
        return self.jobs_dir / "slurm.json"

    def evaluation_path(self, stage):
        return self.results / "stages" / f"{stage.name}.json"


def is_url(ref):
    return str(ref).startswith(("http://", "https://"))
