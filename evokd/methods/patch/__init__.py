"""Teacher-feedback patching (after MT-Patcher, Li et al., NAACL 2024), with a fairseq teacher,
or with an LLM as the paper runs it (:mod:`.llm_steps`, :mod:`.llm`, :mod:`.demonstrations`).

Plain KD retrains the student on everything. Patching finds where the student is far from
its teacher and fine-tunes it on that, in six steps, each resumable:

1. ``translate`` (:mod:`.translate`): the student and the teacher translate a source pool
   (DATA's training source, or ``--pool FILE`` encoded like DATA); the teacher with hard
   alignments. Per sentence: the student's NLL of the teacher's translation and chrF
   between the two, and the error words (:mod:`.feedback`).
2. ``select`` (:mod:`.select`): the ``--select`` fraction farthest from the teacher.
3. ``synthesize`` (:mod:`.synthesize`): other sentences holding each error word (from
   DATA's training source or ``--mono FILE``), translated by the teacher, kept when the
   translation holds the corrected word.
4. ``analogy`` (:mod:`.analogy`): sentences holding the words nearest to each error word
   in the teacher's source embeddings, translated by the teacher.
5. ``build`` (:mod:`.build`): a binarized training folder of the patch pairs plus
   ``--replay-ratio`` replayed training pairs per patch pair.
6. ``train`` (:mod:`.finetune`): the student fine-tuned on it as a chain stage, evaluated.

:func:`run_patch` runs them; ``evokd patch`` is its command line.
"""

FILES = """
Output folder DIR (each step skipped when finished, resumed when interrupted):

  DIR/patch.json           the inputs (student, teacher, data, pool, mono), fixed by the
                           first step: later steps may leave them out, not change them
  DIR/steps/STEP.json      each step's record: key (settings, sha256 of what it read),
                           finished, stats. Rerunning a step with another key is an error
                           naming the differences and the files to remove to redo it
  DIR/pool/, DIR/mono/     --pool / --mono FILE tokenized, BPE'd and binarized like DATA
  DIR/translations.jsonl   translate: one line per pool sentence, in id order; built in
                           DIR/translations.jsonl.partial/ chunk by chunk (the chunks that
                           a killed run finished are kept), written when complete
  DIR/selected.jsonl       select: the selected sentences, worst first
  DIR/synthesis.jsonl      synthesize: one line per retrieved sentence (built in chunks)
  DIR/analogy_words.json   analogy: error word -> [[related word, cosine], ...]
  DIR/analogy.jsonl        analogy: one line per retrieved sentence (built in chunks)
  DIR/patch.jsonl          build: every training pair of DIR/data, in dataset order
  DIR/data/                build: binarized training folder (train = patch + replay;
                           DATA's dictionaries, valid and test copied unchanged)
  DIR/checkpoints/         train: the fine-tuned student (a chain stage folder)
  DIR/results/, DIR/results.json
                           train: evaluation of the student and the patched student

Keys of the JSON Lines (text fields: tokenized, lowercased, BPE removed; *_bpe: as fairseq
reads them):

  translations.jsonl  id (example number in the pool: DATA's training example, or the
                      0-based line of --pool FILE), source, student, teacher, source_bpe,
                      student_bpe, teacher_bpe, alignment ([source piece, teacher piece]
                      pairs: the teacher's hard alignment), nll (the student's mean NLL per
                      token of the teacher's translation, EOS included, nats), chrf (the
                      student's translation against the teacher's, 0-100), error_words
                      (list of {source, source_pieces, source_position, student, teacher}:
                      a source word, the student's word(s) there and the teacher's word)
  selected.jsonl      id, origin ("selected"), rank (1 = farthest from the teacher), score
                      (badness in (0, 1]: the NLL percentile, the chrF percentile or their
                      mean, per --score), nll, chrf, nll_percentile, chrf_percentile,
                      source, student, teacher, error_words, source_bpe, student_bpe,
                      teacher_bpe
  synthesis.jsonl     id (in the mono pool), origin ("synthesis"), source, teacher, words
                      (the error words it holds), corrected (their teacher words), kept
                      (the translation holds a corrected word), source_bpe, teacher_bpe
  analogy.jsonl       id (in the mono pool), origin ("analogy"), source, teacher, words
                      (the related words it holds), related_to (their error words), kept
                      (the translation is not empty and holds no <unk>), source_bpe,
                      teacher_bpe
  patch.jsonl         id (pair number in DIR/data's train), origin (selected | synthesis |
                      analogy | replay), from (the id in selected/synthesis/analogy.jsonl,
                      or DATA's training example for replay), source, target, source_bpe,
                      target_bpe
With an LLM teacher (:mod:`.llm_steps`), also:

  DIR/replies/             every LLM reply, by the sha256 of (model, prompt, settings,
                           sample): kept when a step is redone (--reply-cache elsewhere)
  DIR/report.json          judged, flagged, unparsed (per kind of reply), contexts and
                           analogies (written, kept), calls (calls, cached, seconds,
                           prompt_tokens, completion_tokens), bleu (before, after)
  DIR/demonstrations/      `evokd patch demonstrations`: prompts.jsonl (id, source, student,
                           prompt), pairs.jsonl (id, prompt, reply, messages)

and these keys instead:

  translations.jsonl  id, source, student, source_bpe, student_bpe, parsed (the feedback
                      reply was read), errors (list of {source, student, correction}),
                      correction (the LLM's translation, raw), teacher, teacher_bpe (that
                      translation encoded like DATA; empty when unparsed)
  selected.jsonl      origin ("selected"), rank, and the keys of translations.jsonl
  synthesis.jsonl     id, origin ("synthesis"), sentence (the LLM's, raw), source, teacher,
                      words (the error word), corrected (its correction), problem (of the
                      translation: empty, unparsed, cut, or null), kept (the sentence holds
                      the word and its translation is usable), source_bpe, teacher_bpe
  analogy.jsonl       as synthesis.jsonl, origin "analogy", words (the analogy word),
                      related_to (its error word) instead of corrected
  analogy_words.json  error word -> {"category": [words], "semantic": [words]}
"""

__doc__ += FILES

from .config import PatchConfig  # noqa: E402
from .demonstrations import write_demonstrations  # noqa: E402
from .pipeline import run_patch  # noqa: E402
from .workspace import STEPS  # noqa: E402

__all__ = ["FILES", "STEPS", "PatchConfig", "run_patch", "write_demonstrations"]
