"""Prepare a parallel corpus (placeholder, replaced by the data preparation module)."""


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError
