"""The EKD roles as named fairseq architectures of the ``transformer`` model.

Evolving KD (Zhang, Huang and Zhang, ICTAI 2025, arXiv 2605.09924) uses
``transformer_iwslt_de_en`` (6+6 layers, FFN 1024, 4 heads) for every role; only the
embedding width differs: student 128, junior teacher 256, senior teacher 512. The
``tiny`` variants keep those ratios (1 : 2 : 4, and the same embedding : FFN ratios of
1:8, 1:4 and 1:2) at CPU size: 3+3 layers, FFN 512, embeddings 64 / 128 / 256.

The fast students move the student's layers to the encoder, which runs once per sentence,
away from the decoder, which runs once per output token (deep encoder, shallow decoder:
Kasai et al., ICLR 2021). ``transformer_evokd_student_6_1`` is the EKD student with one
decoder layer; ``transformer_evokd_tiny_student_5_1`` the tiny student with 5+1 layers,
which has fewer parameters than its 3+3 (a decoder layer holds one attention block more
than an encoder layer). The split was chosen by measurement: docs/benchmarks.md.
``transformer_evokd_tiny_student_5_1_prenorm`` is that student with its layer norms before
each block (pre-norm), the shape to deploy: distilled for the same wall-clock budget as the
3+3 tiny student it ends 0.47 BLEU below it (post-norm, the 5+1 had lost 6.92 with equal
epochs), and in CTranslate2 int8 with a vocabulary shortlist it meets the speed targets
(docs/benchmarks.md, "The front").

Every value is a default: command-line flags (``--encoder-layers 2``) override it.
"""

from fairseq.models import register_model_architecture
from fairseq.models.transformer.transformer_legacy import transformer_iwslt_de_en
from fairseq.utils import safe_getattr


def _evokd_architecture(args, embed_dim, ffn_dim=1024, layers=6, heads=4, decoder_layers=None):
    """Both sides ``embed_dim`` wide with ``layers`` layers each, unless ``decoder_layers``."""
    for side in ("encoder", "decoder"):
        depth = decoder_layers if side == "decoder" and decoder_layers else layers
        for name, value in (
            ("embed_dim", embed_dim),
            ("ffn_embed_dim", ffn_dim),
            ("layers", depth),
            ("attention_heads", heads),
        ):
            key = f"{side}_{name}"
            setattr(args, key, safe_getattr(args, key, value))
    transformer_iwslt_de_en(args)


@register_model_architecture("transformer", "transformer_evokd_student")
def transformer_evokd_student(args):
    _evokd_architecture(args, embed_dim=128)


@register_model_architecture("transformer", "transformer_evokd_junior")
def transformer_evokd_junior(args):
    _evokd_architecture(args, embed_dim=256)


@register_model_architecture("transformer", "transformer_evokd_senior")
def transformer_evokd_senior(args):
    _evokd_architecture(args, embed_dim=512)


@register_model_architecture("transformer", "transformer_evokd_student_6_1")
def transformer_evokd_student_6_1(args):
    _evokd_architecture(args, embed_dim=128, layers=6, decoder_layers=1)


TINY = dict(ffn_dim=512, layers=3, heads=4)


@register_model_architecture("transformer", "transformer_evokd_tiny_student")
def transformer_evokd_tiny_student(args):
    _evokd_architecture(args, embed_dim=64, **TINY)


@register_model_architecture("transformer", "transformer_evokd_tiny_junior")
def transformer_evokd_tiny_junior(args):
    _evokd_architecture(args, embed_dim=128, **TINY)


@register_model_architecture("transformer", "transformer_evokd_tiny_senior")
def transformer_evokd_tiny_senior(args):
    _evokd_architecture(args, embed_dim=256, **TINY)


@register_model_architecture("transformer", "transformer_evokd_tiny_student_5_1")
def transformer_evokd_tiny_student_5_1(args):
    _evokd_architecture(args, embed_dim=64, **{**TINY, "layers": 5}, decoder_layers=1)


@register_model_architecture("transformer", "transformer_evokd_tiny_student_5_1_prenorm")
def transformer_evokd_tiny_student_5_1_prenorm(args):
    for side in ("encoder", "decoder"):
        key = f"{side}_normalize_before"
        setattr(args, key, safe_getattr(args, key, True))
    transformer_evokd_tiny_student_5_1(args)
