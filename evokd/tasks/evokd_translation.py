"""Translation with a frozen teacher, for word-level knowledge distillation."""

import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from evokd.core.checkpoint import check_exists, copy_weights
from evokd.teachers.cache import TeacherCache
from evokd.teachers.live import LiveTeacher

logger = logging.getLogger(__name__)


@dataclass
class EvoKDTranslationConfig(TranslationConfig):
    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "fairseq checkpoint of the teacher. Loaded once, frozen and in eval mode, "
            "on the student's device and dtype; never trained or saved with the student. Its "
            "architecture comes from the checkpoint; its dictionaries must equal the data's"
        },
    )
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "folder written by `evokd cache-teacher`: the teacher's top-K predictions "
            "for every training token, read instead of running a live teacher. Must match "
            "the training data, --teacher-path when given, and hold K >= --kd-topk (> 0)"
        },
    )
    teacher_dropout: Optional[float] = field(
        default=None,
        metadata={
            "help": "run the live teacher in train mode with its dropout (the --dropout it was "
            "trained with) set to this value, as the EKD authors' code does (0.3), still "
            "without gradients; attention and activation dropout stay as trained. Off "
            "(eval mode, no dropout) by default; refused with --teacher-cache, which holds "
            "eval-mode outputs"
        },
    )
    init_student_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "checkpoint of an earlier stage whose model weights initialise the "
            "student (same architecture and shapes). Optimizer, LR schedule and meters start "
            "fresh. Ignored in effect when the run resumes from its own checkpoint_last.pt"
        },
    )


def check_teacher_dropout(p, teacher_cache):
    from evokd.errors import EvokdError

    if not 0 <= p < 1:
        raise EvokdError(f"--teacher-dropout {p}: expected a probability in [0, 1)")
    if teacher_cache:
        raise EvokdError(
            f"--teacher-dropout {p} with --teacher-cache {teacher_cache}: a cache holds the "
            "teacher's eval-mode outputs; drop the cache to distil from a teacher with dropout"
        )


@register_task("evokd_translation", dataclass=EvoKDTranslationConfig)
class EvoKDTranslationTask(TranslationTask):
    """Translation whose training batches carry the teacher's predictions.

    Used for word-level KD (Hinton et al., 2015; Kim and Rush, 2016) and the stage-wise
    chains of Evolving KD (Zhang, Huang and Zhang, ICTAI 2025, arXiv 2605.09924) and TAKD
    (Mirzadeh et al., AAAI 2020): each stage names its teacher and, optionally, the
    earlier stage whose weights the student starts from.
    """

    cfg: EvoKDTranslationConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.teacher = None

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        # Cheap checks first, before dictionaries or data are read.
        if cfg.teacher_path:
            check_exists(cfg.teacher_path, "--teacher-path")
        if cfg.init_student_from:
            check_exists(cfg.init_student_from, "--init-student-from")
        if cfg.teacher_dropout is not None:
            check_teacher_dropout(cfg.teacher_dropout, cfg.teacher_cache)
        task = super().setup_task(cfg, **kwargs)
        if cfg.teacher_cache:
            task.teacher = TeacherCache(cfg.teacher_cache, pad=task.target_dictionary.pad())
        return task

    @property
    def has_teacher(self):
        return bool(self.cfg.teacher_path or self.cfg.teacher_cache or self.teacher)

    def build_criterion(self, cfg, from_checkpoint=False):
        from evokd.errors import EvokdError

        criterion = super().build_criterion(cfg, from_checkpoint)
        vocab = len(self.target_dictionary)
        if getattr(criterion, "needs_teacher", False) and criterion.kd_topk > vocab:
            raise EvokdError(
                f"--kd-topk {criterion.kd_topk}: larger than the target vocabulary ({vocab} "
                f"symbols in {self.cfg.data}); use 1 <= K <= {vocab}, or 0 for the full "
                "distribution"
            )
        if isinstance(self.teacher, TeacherCache) and getattr(criterion, "needs_teacher", False):
            self.teacher.check(
                self.cfg.teacher_path,
                self.cfg.data,
                self.cfg.train_subset,
                self.cfg.source_lang,
                self.cfg.target_lang,
                criterion.kd_topk,
            )
        return criterion

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if from_checkpoint:  # loading a trained student (generation, evaluation)
            return model
        if self.cfg.init_student_from:
            copy_weights(model, self.cfg.init_student_from)
        if self.cfg.teacher_path and self.teacher is None:  # a cache, if given, replaces it
            self.teacher = LiveTeacher(self.cfg.teacher_path, self, self.cfg.teacher_dropout)
        return model

    def get_batch_iterator(self, dataset, *args, epoch=1, **kwargs):
        """As fairseq's, but the mini-batches are always formed as for epoch 1.

        fairseq forms the batches once, with the seed of the epoch the run starts in, and
        reuses them in later epochs, so a run resumed in epoch N would batch differently
        from one never interrupted. Forming them as for epoch 1 makes a resumed stage
        train update for update like an uninterrupted one. Batch order is still shuffled
        every epoch.
        """
        fresh = dataset not in self.dataset_to_epoch_iter
        itr = super().get_batch_iterator(dataset, *args, epoch=1, **kwargs)
        if fresh and epoch > 1:
            itr.epoch = epoch
            dataset.set_epoch(epoch)
        return itr

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if getattr(criterion, "needs_teacher", False):
            if ignore_grad and isinstance(self.teacher, TeacherCache):
                # fairseq's dummy batch for a process that ran out of batches: any example
                # (even a validation one); its loss is multiplied by 0, so no cache lookup
                sample["teacher"] = self.teacher.placeholder(sample, model)
            else:
                sample["teacher"] = self.teacher(sample, model)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
