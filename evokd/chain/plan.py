"""Chain plans: an ordered list of stages, each naming its architecture, its teacher, what
it initialises from, and its budget.

A plan is a YAML file (the presets ship in ``evokd/plans/``)::

    name: tiny                       # checkpoints/<name>/<stage>/, results/<name>/
    data: data-bin/multi30k.tiny.de-en
    prepare: {corpus: multi30k, train_size: 4000}   # optional: how to build missing data
    train: {optimizer: adam, lr: 5e-4, ...}         # fairseq flags of every stage
    kd: {kd-alpha: 0.5, kd-temperature: 1}          # word_kd flags of stages with a teacher
    evaluate: {beam: 5, subset: test}
    jobs: 2                                         # optional: steps at once (--jobs)
    slurm: {partition: gpu, time: "4:00:00", gpus: 1, mem: 32G}  # per job (a stage's over it)
    stages:
      - {name: junior_teacher, arch: transformer_evokd_tiny_junior, max_epoch: 6}
      - {name: junior_student, arch: transformer_evokd_tiny_student, max_epoch: 3,
         teacher: junior_teacher}
      - {name: master_student, arch: transformer_evokd_tiny_student, max_epoch: 3,
         teacher: senior_teacher, init_from: junior_student}

``teacher`` and ``init_from`` name a stage of the plan or a checkpoint file; a stage's
``seqkd: {teacher: ...}`` may also name a model folder or a server URL, with that teacher's
options as more keys (:mod:`evokd.chain.teachers`). Flags are written without the leading
dashes; ``true`` is a bare switch, ``false``/``null`` leaves it out, a mapping becomes a
JSON string, a list becomes several values.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from evokd.chain.teachers import check_reference, check_seqkd
from evokd.errors import EvokdError
from evokd.files import check_name

PRESET_DIR = Path(__file__).resolve().parents[1] / "plans"
STAGE_KEYS = {"name", "arch", "teacher", "init_from", "max_epoch", "max_update", "kd", "flags"}
STAGE_KEYS |= {"description", "data", "seqkd", "init_from_state", "slurm"}
INIT_STATES = ("weights", "training")
PLAN_KEYS = {"name", "description", "data", "prepare", "train", "kd", "evaluate", "stages"}
PLAN_KEYS |= {"seeds", "shared", "compare", "slurm", "jobs"}
# a job's resources under Slurm (``slurm:`` in a plan, or over it in a stage)
SLURM_KEYS = {"partition", "time", "gpus", "cpus", "mem", "nodes", "options"}


@dataclass
class Stage:
    name: str
    arch: str
    teacher: Optional[str] = None  # a stage of the plan, or a checkpoint file (word-level KD)
    init_from: Optional[str] = None  # a stage of the plan, or a checkpoint file
    max_epoch: Optional[int] = None
    max_update: Optional[int] = None
    kd: dict = field(default_factory=dict)  # word_kd flags over the plan's
    flags: dict = field(default_factory=dict)  # fairseq flags over the plan's
    description: str = ""
    data: Optional[str] = None  # train on this binarized folder instead of the plan's
    seqkd: Optional[dict] = None  # train on data translated by any teacher (Kim and Rush)
    # with init_from: "weights" (the paper: fresh optimizer, the warm-up again) or
    # "training" (the weights with the optimizer and the LR schedule's position)
    init_from_state: str = "weights"
    slurm: dict = field(default_factory=dict)  # Slurm resources over the plan's

    def references(self):
        """(what, stage-or-checkpoint) of every model this stage needs."""
        refs = [("teacher", self.teacher), ("init_from", self.init_from)]
        if self.seqkd:
            refs.append(("seqkd teacher", self.seqkd["teacher"]))
        return [(key, ref) for key, ref in refs if ref is not None]

    def dependencies(self, stage_names):
        return [ref for _, ref in self.references() if ref in stage_names]


@dataclass
class Plan:
    name: str
    data: str
    stages: list
    path: str = ""
    description: str = ""
    prepare: Optional[dict] = None
    train: dict = field(default_factory=dict)
    kd: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)  # one run per seed (evokd chain --seeds)
    shared: list = field(default_factory=list)  # stages trained once for all seeds
    compare: list = field(default_factory=list)  # [stage, baseline] pairs for significance
    slurm: dict = field(default_factory=dict)  # every job's Slurm resources
    jobs: int = 1  # steps at once on one machine (evokd chain --jobs)

    def stage(self, name):
        for stage in self.stages:
            if stage.name == name:
                return stage
        known = ", ".join(s.name for s in self.stages)
        raise EvokdError(f"plan {self.name}: no stage {name!r} (stages: {known})")

    @property
    def stage_names(self):
        return [s.name for s in self.stages]


def presets():
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def plan_path(name_or_path):
    """A preset name (``tiny``, ``paper``, ...) or the path of a plan file."""
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise EvokdError(
        f"--plan {name_or_path}: neither a plan file nor a preset (presets: {', '.join(presets())})"
    )


def load_plan(name_or_path):
    """Read and check a plan's structure (references are checked by :func:`validate`)."""
    import yaml

    path = plan_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise EvokdError(f"plan {path}: cannot read it as YAML ({exc})") from exc
    where = f"plan {path}"
    if not isinstance(raw, dict):
        raise EvokdError(f"{where}: expected a mapping with 'data' and 'stages'")
    unknown = set(raw) - PLAN_KEYS
    if unknown:
        raise EvokdError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(PLAN_KEYS)})")
    for key in ("data", "stages"):
        if not raw.get(key):
            raise EvokdError(f"{where}: '{key}' is missing")
    if not isinstance(raw["stages"], list):
        raise EvokdError(f"{where}: 'stages' must be a list")
    for key in ("train", "kd", "evaluate", "prepare"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise EvokdError(f"{where}: '{key}' must be a mapping")
    stages = [_stage(where, i, s) for i, s in enumerate(raw["stages"])]
    seeds = raw.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
        raise EvokdError(f"{where}: 'seeds' must be a list of whole numbers")
    for key in ("shared", "compare"):
        if raw.get(key) is not None and not isinstance(raw[key], list):
            raise EvokdError(f"{where}: '{key}' must be a list")
    for pair in raw.get("compare") or []:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise EvokdError(f"{where}: compare: expected [stage, baseline] pairs, got {pair!r}")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise EvokdError(f"{where}: jobs {jobs!r} must be a whole number >= 1")
    plan = Plan(
        name=check_name(f"{where}: plan name", raw.get("name") or path.stem),
        slurm=slurm_spec(where, raw.get("slurm")),
        jobs=jobs,
        description=str(raw.get("description") or ""),
        data=str(raw["data"]),
        prepare=raw.get("prepare"),
        train=dict(raw.get("train") or {}),
        kd=dict(raw.get("kd") or {}),
        evaluate=dict(raw.get("evaluate") or {}),
        stages=stages,
        path=str(path),
        seeds=seeds,
        shared=[str(x) for x in raw.get("shared") or []],
        compare=[[str(a), str(b)] for a, b in raw.get("compare") or []],
    )
    for stage in plan.stages:  # a bad cache or seqkd spec fails here, naming its stage
        cache_spec(plan, stage)
        check_seqkd(f"{where}: stage {stage.name}", stage, plan.stage_names)
    return plan


def _stage(where, index, raw):
    if not isinstance(raw, dict) or not raw.get("name"):
        raise EvokdError(f"{where}: stage {index + 1} needs a mapping with a 'name'")
    name = str(raw["name"])
    here = f"{where}: stage {name}"
    check_name(f"{where}: stage", name)
    unknown = set(raw) - STAGE_KEYS
    if unknown:
        raise EvokdError(f"{here}: unknown keys {sorted(unknown)} (allowed: {sorted(STAGE_KEYS)})")
    if not raw.get("arch"):
        raise EvokdError(f"{here}: 'arch' is missing")
    for key in ("max_epoch", "max_update"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise EvokdError(f"{here}: {key} {value!r} must be a whole number >= 1")
    if not raw.get("max_epoch") and not raw.get("max_update"):
        raise EvokdError(f"{here}: give a budget, max_epoch or max_update")
    for key in ("kd", "flags"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise EvokdError(f"{here}: '{key}' must be a mapping of flags")
    seqkd = raw.get("seqkd")
    if seqkd is not None:
        if not isinstance(seqkd, dict) or not seqkd.get("teacher"):
            raise EvokdError(f"{here}: 'seqkd' must be a mapping with a 'teacher'")
        seqkd = {str(k).replace("_", "-"): v for k, v in seqkd.items()}  # keys checked by load_plan
        if raw.get("data"):
            raise EvokdError(f"{here}: give 'data' or 'seqkd', not both")
    state = raw.get("init_from_state", "weights")
    if state not in INIT_STATES:
        raise EvokdError(f"{here}: init_from_state {state!r}: expected one of {INIT_STATES}")
    if state != "weights" and not raw.get("init_from"):
        raise EvokdError(f"{here}: init_from_state needs an init_from")
    return Stage(
        name=name,
        init_from_state=state,
        arch=str(raw["arch"]),
        teacher=_optional_str(raw.get("teacher")),
        init_from=_optional_str(raw.get("init_from")),
        max_epoch=raw.get("max_epoch"),
        max_update=raw.get("max_update"),
        kd=dict(raw.get("kd") or {}),
        flags=dict(raw.get("flags") or {}),
        description=str(raw.get("description") or ""),
        data=_optional_str(raw.get("data")),
        seqkd=seqkd or None,
        slurm=slurm_spec(here, raw.get("slurm")),
    )


def slurm_spec(where, raw):
    """A ``slurm:`` mapping, checked: ``partition``, ``time`` (minutes, or Slurm's
    ``[D-]HH:MM:SS``), ``gpus`` and ``nodes`` per job, ``cpus`` per task, ``mem`` (``16G``),
    ``options`` (more sbatch options, such as ``--account=X``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EvokdError(f"{where}: 'slurm' must be a mapping of {sorted(SLURM_KEYS)}")
    unknown = set(raw) - SLURM_KEYS
    if unknown:
        raise EvokdError(
            f"{where}: slurm: unknown keys {sorted(unknown)} (allowed: {sorted(SLURM_KEYS)})"
        )
    for key in ("gpus", "cpus", "nodes"):
        value = raw.get(key)
        least = 0 if key == "gpus" else 1
        if value is not None and (not isinstance(value, int) or value < least):
            raise EvokdError(f"{where}: slurm: {key} {value!r} must be a whole number >= {least}")
    time_limit = raw.get("time")
    if time_limit is not None and not re.match(r"^(\d+-)?\d+(:\d+){0,2}$", str(time_limit)):
        raise EvokdError(f"{where}: slurm: time {time_limit!r}: expected minutes or [D-]HH:MM:SS")
    options = raw.get("options", [])
    if not isinstance(options, list) or not all(
        isinstance(o, str) and o.startswith("--") for o in options
    ):
        raise EvokdError(f"{where}: slurm: options must be a list of '--name=value' strings")
    return dict(raw)


def slurm_resources(plan, stage):
    """A stage's Slurm resources: the plan's, then the stage's (their options added)."""
    merged = {**plan.slurm, **stage.slurm}
    merged["options"] = list(plan.slurm.get("options", [])) + list(stage.slurm.get("options", []))
    return merged


def _optional_str(value):
    return None if value in (None, "") else str(value)


def ordered(plan):
    """The stages in an order where each comes after its teacher and init stage.

    Keeps the file's order where it can; a cycle is an error naming its stages.
    """
    names = set(plan.stage_names)
    done, order = set(), []
    pending = list(plan.stages)
    while pending:
        ready = [s for s in pending if all(d in done for d in s.dependencies(names))]
        if not ready:
            cycle = ", ".join(s.name for s in pending)
            raise EvokdError(f"plan {plan.name}: the stages {cycle} depend on each other (a cycle)")
        stage = ready[0]
        order.append(stage)
        done.add(stage.name)
        pending.remove(stage)
    return order


def validate(plan, data_required=True):
    """Reject a bad plan before any training: every problem names its stage."""
    from fairseq.models import ARCH_MODEL_REGISTRY  # evokd's names registered on import

    seen = set()
    for stage in plan.stages:
        if stage.name in seen:
            raise EvokdError(f"plan {plan.name}: two stages are named {stage.name!r}")
        seen.add(stage.name)
    names = set(plan.stage_names)
    for stage in plan.stages:
        if stage.arch not in ARCH_MODEL_REGISTRY:
            raise EvokdError(
                f"plan {plan.name}: stage {stage.name}: architecture {stage.arch!r} is not "
                "known to fairseq (see `fairseq-train --help` for --arch, or the "
                "transformer_evokd_* names in the README)"
            )
        for key, ref in stage.references():
            if ref not in names and not os.path.isfile(ref):
                check_reference(f"plan {plan.name}: stage {stage.name}", key, ref, plan.stage_names)
        if stage.init_from in names and plan.stage(stage.init_from).arch != stage.arch:
            other = plan.stage(stage.init_from)
            raise EvokdError(
                f"plan {plan.name}: stage {stage.name} ({stage.arch}) cannot start from the "
                f"weights of {other.name} ({other.arch}): init_from needs the same architecture"
            )
        if stage.data and not any(Path(stage.data).glob("dict.*.txt")):
            raise EvokdError(
                f"plan {plan.name}: stage {stage.name}: data {stage.data} holds no binarized "
                "data (dict.*.txt)"
            )
        if stage.name in (ref for _, ref in stage.references()):
            raise EvokdError(f"plan {plan.name}: stage {stage.name} refers to itself")
        cache_spec(plan, stage)
    for name in plan.shared + [x for pair in plan.compare for x in pair]:
        if name not in names:
            raise EvokdError(f"plan {plan.name}: 'shared'/'compare' name no stage {name!r}")
    for name in plan.shared:
        deps = [d for d in plan.stage(name).dependencies(names) if d not in plan.shared]
        if deps:
            raise EvokdError(
                f"plan {plan.name}: shared stage {name} depends on {deps[0]}, which is not shared"
            )
    ordered(plan)
    if data_required and not plan.prepare and not any(Path(plan.data).glob("dict.*.txt")):
        raise EvokdError(
            f"plan {plan.name}: data folder {plan.data} holds no binarized data "
            "(dict.*.txt): prepare it first (evokd prepare ...) or give the plan a "
            "'prepare:' section"
        )


def kd_defaults():
    """The word_kd flags every KD stage gets unless its plan says otherwise: the defaults of
    :class:`evokd.criterions.word_kd.WordKDConfig`."""
    from dataclasses import fields

    from evokd.criterions.word_kd import WordKDConfig

    found = {f.name: f.default for f in fields(WordKDConfig)}
    return {key.replace("_", "-"): found[key] for key in ("kd_alpha", "kd_temperature")}


def kd_flags(plan, stage):
    """The stage's word_kd flags: the defaults, the plan's ``kd:``, then the stage's."""
    return {**kd_defaults(), **plan.kd, **stage.kd}


def cache_spec(plan, stage):
    """``{"topk": K}`` when the stage reads its teacher from the chain's cache, else None
    (online). A stage whose KD needs the teacher's full distribution (``kd-topk: 0``) stays
    online. A malformed spec is a plan error naming the stage."""
    if not stage.teacher:
        return None
    kd = {**plan.kd, **stage.kd}
    spec = kd.get("cache")
    if not spec:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("topk"), int) or spec["topk"] < 1:
        raise EvokdError(
            f"plan {plan.name}: stage {stage.name}: kd: cache: expected {{topk: K}} "
            f"with a whole number K >= 1, got {spec!r}"
        )
    if "kd-topk" in kd and int(kd["kd-topk"]) == 0:
        return None
    return spec


def flags_to_args(flags):
    """``{"lr": 5e-4, "share-all-embeddings": True}`` -> ``["--lr", "0.0005", ...]``."""
    args = []
    for key, value in flags.items():
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            args += [flag] + [str(v) for v in value]
        else:
            args += [flag, str(value)]
    return args
