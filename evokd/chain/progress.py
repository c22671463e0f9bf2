"""The chain's progress lines: one per stage as it starts (its budget, how it is taught)
and as it ends (its time, and an estimate of the training left)."""

import time

from evokd.chain.plan import cache_spec


def clock(seconds):
    """``75`` -> ``1m15s``; under a minute, ``42s``."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def time_limit(plan, stage):
    """The seconds that fairseq's ``--stop-time-hours`` (the plan's or the stage's) allows
    the stage, or None."""
    hours = {**plan.train, **stage.flags}.get("stop-time-hours")
    return float(hours) * 3600 if hours is not None else None


def budget(stage):
    if stage.max_update:
        return f"{stage.max_update} updates"
    return f"{stage.max_epoch} epoch{'s' if stage.max_epoch != 1 else ''}"


class Progress:
    """The progress of ``stages`` trained by ``trainer`` (a
    :class:`evokd.chain.stage.StageTrainer`): the time per update measured so far gives the
    estimate of what is left."""

    def __init__(self, trainer, stages):
        self.trainer, self.stages = trainer, stages
        self.seconds, self.updates = 0.0, 0
        self.start = time.time()

    def describe(self, stage):
        """How the stage trains: resuming or not, its budget, its teacher and its start."""
        kind = "plain"
        if stage.teacher:
            kind = "KD from " + stage.teacher
            given = {**stage.kd, **stage.flags}.get("teacher-cache")  # a cache built beforehand
            if given:
                kind += f" (cache {given})"
            else:
                kind += " (cache)" if cache_spec(self.trainer.plan, stage) else " (online)"
        if stage.seqkd:
            kind += f", on {stage.seqkd['teacher']}'s translations"
        if stage.init_from:
            kind += f", from {stage.init_from} ({stage.init_from_state})"
        verb = "training"
        if (self.trainer.layout.stage_dir(stage) / "checkpoint_last.pt").is_file():
            verb = "resuming"
        return f"{verb}, {budget(stage)}, {kind}"

    def updates_per_epoch(self, stage):
        """From a finished stage on the same data, else on any data (the distilled data of a
        sequence-level stage has the same pairs)."""
        found, data = {}, self.trainer.layout.stage_data
        for other in self.stages:
            record = self.trainer.stage_record(other) or {}
            if record.get("epochs") and record.get("updates") and not record.get("start_updates"):
                same = data(other) == data(stage)
                found.setdefault(same, record["updates"] / record["epochs"])
        return found.get(True, found.get(False))

    def finished(self, stage, record, seconds):
        """The line of a stage trained in ``seconds`` into ``record``."""
        updates = record.get("updates") or 0
        self.seconds += seconds
        self.updates += updates
        line = f"done in {clock(seconds)}, {updates} updates"
        if updates and record.get("wall_seconds"):
            line += f" ({record['wall_seconds'] / updates:.2f} s/update)"
        left, known = 0.0, True
        rest = self.stages[self.stages.index(stage) + 1 :]
        for other in rest:
            if self.trainer.is_finished(other):
                continue
            per_epoch = self.updates_per_epoch(other)
            n = other.max_update or (per_epoch and other.max_epoch * per_epoch)
            limit = time_limit(self.trainer.plan, other)  # a stage on a clock ends on time
            if n and self.updates:
                seconds = n * self.seconds / self.updates
                left += min(seconds, limit) if limit else seconds
            elif limit:
                left += limit
            else:
                known = False
        line += f"; {clock(time.time() - self.start)} so far"
        if rest and known:
            line += f", about {clock(left)} of training left"
        return line
