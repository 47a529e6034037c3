"""Reconstruction BLEU: corpus BLEU (sacrebleu) of a VAE's reconstructions against its inputs.

An ``evaluate`` metric module meant to be loaded by path, so it works offline:

    >>> import evaluate
    >>> bleu = evaluate.load("/path/to/mine_vae/metrics/reconstruction_bleu")
    >>> bleu.compute(predictions=["the cat sat"], references=["the cat sat"])["score"]
    100.0

(or ``mine_vae.metrics.load_metric("reconstruction_bleu")``).
"""

# One import per line: evaluate scans this file's import statements to check requirements,
# and a combined ``import a, b`` line makes it report a spurious ImportError.
import datasets
import evaluate
import sacrebleu

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU (Papineni et al. 2002) as computed by sacrebleu's ``corpus_bleu``, used to
score how well a text VAE reconstructs its input: predictions are the decoder's
reconstructions, references are the input sentences. Scores are on a 0-100 scale.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the reconstructed sentences.
    references (list of str, or list of list of str): the input sentence for each prediction
        (or several references per prediction; every prediction needs the same number).
    tokenize (str): sacrebleu tokenizer, default "13a".
    lowercase (bool): lowercase before scoring, default False.
    smooth_method (str): "exp" (default), "floor", "add-k" or "none".
    smooth_value (float or None): value for "floor" / "add-k" smoothing.
    use_effective_order (bool): default False.
Returns:
    score (float): corpus BLEU, 0-100.
    precisions (list of float): the 1- to 4-gram precisions, 0-100.
    brevity_penalty (float): the brevity penalty, in (0, 1].
    counts, totals (list of int): matched / total n-grams per order.
    sys_len, ref_len (int): hypothesis and reference lengths in tokens.
Examples:
    >>> bleu = evaluate.load("mine_vae/metrics/reconstruction_bleu")
    >>> bleu.compute(predictions=["a b c d"], references=["a b c d"])["score"]
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReconstructionBleu(evaluate.Metric):
    """sacrebleu corpus BLEU of reconstructions against their inputs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                # One reference per prediction (the usual reconstruction case) ...
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
                # ... or several.
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://aclanthology.org/W18-6319/"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[str] | list[list[str]],
        tokenize: str = "13a",
        lowercase: bool = False,
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        use_effective_order: bool = False,
    ) -> dict:
        if len(references) == 0:
            raise ValueError("reconstruction_bleu needs at least one prediction/reference pair.")
        if isinstance(references[0], str):
            reference_streams = [list(references)]
        else:
            num_refs = len(references[0])
            if any(len(refs) != num_refs for refs in references):
                raise ValueError("reconstruction_bleu needs the same number of references for every prediction.")
            # sacrebleu wants one stream per reference position, each as long as the predictions.
            reference_streams = [[refs[i] for refs in references] for i in range(num_refs)]
        result = sacrebleu.corpus_bleu(
            list(predictions),
            reference_streams,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            lowercase=lowercase,
            tokenize=tokenize,
            use_effective_order=use_effective_order,
        )
        return {
            "score": float(result.score),
            "precisions": [float(p) for p in result.precisions],
            "brevity_penalty": float(result.bp),
            "counts": [int(c) for c in result.counts],
            "totals": [int(t) for t in result.totals],
            "sys_len": int(result.sys_len),
            "ref_len": int(result.ref_len),
        }
