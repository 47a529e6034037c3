"""`mine-vae evaluate`, and the metrics of a tokenised split (also the final report of `train`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from ..data import first_examples
from .arguments import DataArguments, EvaluateArguments, LoadArguments
from .commands import CliError, format_table, print_json, quiet_library_logs, set_threads
from .loading import corpus_from_arguments, load_trained, subset_splits, tokenize_splits

METRIC_ORDER = (
    "nll",
    "decoder_nll",
    "latent_gain",
    "ppl",
    "ppl_word",
    "kl",
    "mi",
    "au",
    "mi_bound",
    "reconstruction",
    "elbo",
    "bleu",
    "bleu_greedy",
)
METRIC_HELP = {
    "nll": "negative log-likelihood per sentence (importance-weighted, nats)",
    "decoder_nll": "the decoder alone (no z) on the same tokens: the language model the VAE must beat (nats)",
    "latent_gain": "decoder alone minus the VAE's NLL: what z is worth after paying its KL (> 0: the VAE is better)",
    "ppl": "perplexity per decoder token",
    "ppl_word": "perplexity per word (+1 end-of-sentence per sentence)",
    "kl": "KL(q(z|x) || p(z)) per sentence (nats)",
    "mi": "mutual information I(x; z) under the aggregate posterior (nats); at most log N for N sentences",
    "au": "active units (latent dimensions with Var[mu] > 0.01)",
    "mi_bound": "the critic's lower bound on I(x; z) (nats)",
    "reconstruction": "-log p(x|z), one posterior sample (nats)",
    "elbo": "evidence lower bound per sentence (nats)",
    "bleu": "reconstruction BLEU from the posterior mean (beam search over 4, no repeated 4-gram)",
    "bleu_greedy": "the same with plain greedy decoding, which loops on the decoder's commonest words",
}


def evaluate_split(
    model: Any,
    processor: Any,
    dataset: Any,
    batch_size: int,
    importance_samples: int,
    bleu: bool = False,
    show_progress: bool = True,
) -> dict[str, float]:
    """`evaluate_vae` over a tokenised split (columns text, input_ids, decoder_token_ids), with word perplexity."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..evaluation import count_words, evaluate_vae
    from ..processing_mine_vae import MineVaeDataCollator

    if "length" in dataset.column_names:  # similar lengths per batch: less padding; the metrics are sums anyway
        lengths = dataset["length"]
        dataset = dataset.select(sorted(range(len(dataset)), key=lengths.__getitem__))
    loader = DataLoader(
        dataset.select_columns(["input_ids", "decoder_token_ids"]),
        batch_size=batch_size,
        collate_fn=MineVaeDataCollator(processor),
    )
    batches = tqdm(loader, desc="Evaluating", file=sys.stderr, disable=not show_progress, leave=False)
    return evaluate_vae(
        model,
        batches,
        num_importance_samples=importance_samples,
        word_counts=count_words(dataset["text"]),
        compute_bleu=bleu,
        processor=processor,
    )


def metrics_table(metrics: Mapping[str, float], title: str) -> str:
    from ..evaluation import describe_mi

    def value(name: str) -> Any:
        if name == "mi" and "mi_ceiling" in metrics:
            return describe_mi(metrics["mi"], metrics["mi_ceiling"])
        return metrics[name]

    rows = [(name, value(name), METRIC_HELP[name]) for name in METRIC_ORDER if name in metrics]
    return format_table(rows, headers=("metric", "value", "meaning"), title=title)


def run_evaluate(load: LoadArguments, data: DataArguments, options: EvaluateArguments, extra: Any) -> int:
    quiet_library_logs(show_progress=False)
    set_threads(load.num_threads)
    model, processor = load_trained(load.model, load.device)
    corpus = corpus_from_arguments(data, validation_file=options.file)
    split = _choose_split(corpus, options.split if not options.file else "validation")
    dataset = first_examples(corpus[split], data.max_eval_examples)
    max_length = data.max_length or processor.max_sentence_length
    tokenized, counts = tokenize_splits(
        subset_splits({split: dataset}, [split]), processor, max_length, data.overlength
    )
    if len(tokenized[split]) < 2:
        raise CliError("the evaluation needs at least 2 sentences (MI and active units compare sentences); give more.")
    torch.manual_seed(load.seed)
    metrics = evaluate_split(
        model,
        processor,
        tokenized[split],
        options.batch_size,
        options.importance_samples,
        bleu=options.bleu,
        show_progress=not load.json_output,
    )
    report = {
        "command": "evaluate",
        "model": load.model,
        "split": split,
        "importance_samples": options.importance_samples,
        "metrics": metrics,
        "data": counts,
    }
    if load.json_output:
        print_json(report)
    else:
        dropped = counts[f"{split}/dropped"]
        note = f", {dropped} over {max_length} tokens dropped" if dropped else ""
        title = (
            f"Metrics on {split} ({int(metrics['num_examples'])} sentences{note}, "
            f"{options.importance_samples} importance samples)"
        )
        print(metrics_table(metrics, title))
    return 0


def _choose_split(corpus: Any, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in corpus:
            raise CliError(f"the corpus has no {wanted!r} split; pass --split with one of: {', '.join(corpus)}.")
        return wanted
    for name in ("validation", "test"):
        if name in corpus:
            return name
    return next(iter(corpus))
