"""The teacher's feedback on one student translation: chrF and the error words.

Pure functions on BPE pieces (subword-nmt style: every piece but the last of a word ends
in ``@@``, as ``evokd prepare`` writes them; text without BPE is one piece per word).

Error words. The student's and the teacher's translations are compared word by word
(BPE removed) with ``difflib.SequenceMatcher``. Every teacher word in a ``replace`` or
``insert`` block (a word the teacher wrote where the student wrote something else, or
nothing) is a corrected word; the source words it is aligned to by the teacher's hard
alignment (pieces merged to words on both sides) are the error words. Each error is
``{"source", "source_pieces", "source_position", "student", "teacher"}``: the source word,
its BPE pieces and word position, the student's word(s) there (one to one when both sides
of a ``replace`` block have the same length, else the block's whole student span; ``""``
for an insertion) and the teacher's word. ``delete`` blocks (words only the student
wrote) have no corrected word and give no error. Words without a letter or digit
(punctuation) are skipped on both sides; an error (source word, teacher word) is listed
once per sentence.
"""

import difflib
from collections import defaultdict

from evokd.core.metrics import sentence_chrf

CONTINUATION = "@@"


def merge_pieces(pieces):
    """(words, word index of every piece) of a list of BPE pieces."""
    words, piece_word, current = [], [], []
    for piece in pieces:
        piece_word.append(len(words))
        if piece.endswith(CONTINUATION):
            current.append(piece[: -len(CONTINUATION)])
        else:
            words.append("".join(current) + piece)
            current = []
    if current:  # a last piece with "@@" (a truncated hypothesis)
        words.append("".join(current))
    return words, piece_word


def is_word(word):
    """True for a word holding a letter or a digit (not punctuation alone)."""
    return any(c.isalnum() for c in word)


def error_words(source, student, teacher, alignment):
    """The error words of one sentence (see the module doc).

    ``source``, ``student``, ``teacher``: lists of BPE pieces (no EOS); ``alignment``:
    the teacher's hard alignment, ``(source piece, teacher piece)`` index pairs.
    """
    src_words, src_of = merge_pieces(source)
    stu_words, _ = merge_pieces(student)
    tea_words, tea_of = merge_pieces(teacher)
    pieces_of = defaultdict(list)
    for piece, w in zip(source, src_of):
        pieces_of[w].append(piece)
    aligned = defaultdict(set)  # teacher word -> source words
    for s, t in alignment:
        if 0 <= s < len(src_of) and 0 <= t < len(tea_of):
            aligned[tea_of[t]].add(src_of[s])
    matcher = difflib.SequenceMatcher(None, stu_words, tea_words, autojunk=False)
    errors, seen = [], set()
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag not in ("replace", "insert"):
            continue
        for j in range(j1, j2):
            if not is_word(tea_words[j]):
                continue
            if i2 - i1 == j2 - j1:
                said = stu_words[i1 + j - j1]
            else:
                said = " ".join(stu_words[i1:i2])
            for w in sorted(aligned[j]):
                key = (src_words[w], tea_words[j])
                if not is_word(src_words[w]) or key in seen:
                    continue
                seen.add(key)
                errors.append(
                    {
                        "source": src_words[w],
                        "source_pieces": pieces_of[w],
                        "source_position": w,
                        "student": said,
                        "teacher": tea_words[j],
                    }
                )
    return errors


def feedback(source_bpe, student_bpe, teacher_bpe, alignment):
    """chrF and error words of one sentence given as BPE'd strings."""
    student, teacher = merge_pieces(student_bpe.split())[0], merge_pieces(teacher_bpe.split())[0]
    return {
        "chrf": round(sentence_chrf(" ".join(student), " ".join(teacher)), 4),
        "error_words": error_words(
            source_bpe.split(), student_bpe.split(), teacher_bpe.split(), alignment
        ),
    }
