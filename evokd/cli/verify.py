"""Check a built output against the checksums recorded when it was built.

PATH is a teacher cache (made by `evokd cache-teacher`: DIR/cache.json) or a distilled
dataset (made by `evokd distill-data`: DIR/distill.json); the kind is read from the record
in the folder. Every file the step published is read once and its sha256 compared with the
recorded one; a teacher cache's token ids are also checked against its vocabulary and its
index against its examples, a distilled dataset's pairs counted. Training and the builders'
reruns run the same checks when they open the output; this command runs them by hand (after
a copy, a disk fault, a move between machines).

Exit 0 when intact; exit 2 with a line naming the damaged file otherwise.

example:
  evokd verify cache/senior_top8
  evokd verify data-bin/iwslt14.distilled.de-en
"""

from pathlib import Path

CACHE, DISTILLED = "cache.json", "distill.json"


def add_arguments(parser):
    parser.add_argument(
        "path", metavar="PATH", help="a teacher cache or a distilled dataset folder to check"
    )


def run(args):
    from evokd.errors import EvokdError

    path = Path(args.path)
    if (path / CACHE).is_file():
        from evokd.teachers.cache import TeacherCache

        kind, record = "teacher cache", TeacherCache(path).meta
    elif (path / DISTILLED).is_file():
        from evokd.distill.seqkd import open_distilled

        kind, record = "distilled dataset", open_distilled(path, "verify")
    else:
        raise EvokdError(
            f"{path}: not a teacher cache or a distilled dataset (neither {CACHE} nor "
            f"{DISTILLED} in it)"
        )
    digests = record.get("payload_sha256")
    if not digests:
        print(f"{path}: {kind} built without checksums: only its structure was checked")
        return 0
    size = sum((path / name).stat().st_size for name in digests) / 2**20
    print(
        f"{path}: {kind} intact: {len(digests)} files ({size:.1f} MiB) match their recorded sha256"
    )
    return 0
