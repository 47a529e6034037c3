"""The study's report: the finished runs' results summarised over seeds (mean ± std), the claims checked, the plots,
and the Markdown section that a page (`docs/benchmarks.md`) holds between `<!-- BEGIN key -->` and `<!-- END key -->`.

Everything here reads the results JSON files alone, so a report is rebuilt from a study's folder without training.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configuration_mine_vae import MineVaeConfig
from ..estimators import MI_SATURATION_MARGIN
from .methods import EVAL_SPLIT, checked_fields
from .record import machine_description
from .runner import FINISHED, REPORTED_ARGS

# The recorded settings that the settings table and the budget line read, by name: checked against the dataclasses
# and against what a run records, so that a renamed field fails on import instead of in a finished study's report.
_MODEL_KEYS = checked_fields(MineVaeConfig, ("kl_weight", "mi_weight", "xi", "free_bits"))
_TRAINING_KEYS = (
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "kl_schedule",
    "kl_warmup_ratio",
    "kl_cycles",
    "critic_learning_rate",
    "critic_steps",
    "critic_warmup_steps",
    "mi_warmup_steps",
)
if not set(_TRAINING_KEYS) <= set(REPORTED_ARGS):
    raise TypeError(f"Runs do not record {sorted(set(_TRAINING_KEYS) - set(REPORTED_ARGS))}, which the report reads.")

PLOTS_HINT = "pip install 'mine-vae[plots]'"


def load_results(out: Path) -> list[dict[str, Any]]:
    """The results of every finished run in the study folder `out`, in file-name order."""
    return [json.loads(path.read_text()) for path in sorted((out / FINISHED).glob("*.json"))]


# --------------------------------------------------------------------------------------------------------------------
# Summary and claims
# --------------------------------------------------------------------------------------------------------------------
TABLE_METRICS = (
    ("nll", "IW-NLL ↓", 2),
    ("decoder_nll", "decoder alone", 2),
    ("ppl", "PPL (token) ↓", 1),
    ("ppl_word", "PPL (word) ↓", 1),
    ("kl", "KL", 2),
    ("mi", "MI ↑ (ceiling log N)", 2),
    ("au", "AU ↑", 1),
    ("bleu", "BLEU ↑", 1),
    ("mi_bound", "bound", 2),
    ("reconstruction", "rec.", 1),
)


@dataclass
class Summary:
    """Mean and standard deviation over seeds of each metric, per method (in the order methods were given)."""

    label: str
    role: str
    seeds: list[int]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)


def _nan_to_none(values: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a standard deviation over one seed is written as null."""
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def summarize(results: Sequence[Mapping[str, Any]], order: Sequence[str] | None = None) -> dict[str, Summary]:
    """One `Summary` per method: those of `order` first, in that order, then the others by name."""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_method.setdefault(result["method"], []).append(result)
    names = [m for m in (order or []) if m in by_method] + sorted(set(by_method) - set(order or []))
    summaries = {}
    for name in names:
        runs = by_method[name]
        summary = Summary(runs[0]["label"], runs[0]["role"], sorted(r["seed"] for r in runs))
        for key in sorted({k for r in runs for k in r["metrics"]}):  # sorted: the same file from the same results
            values = [float(r["metrics"][key]) for r in runs if key in r["metrics"]]
            summary.mean[key] = statistics.fmean(values)
            summary.std[key] = statistics.stdev(values) if len(values) > 1 else math.nan
        summaries[name] = summary
    return summaries


@dataclass(frozen=True)
class Claim:
    """Whether one MINE-VAE method beats the collapse-prone baselines, criterion by criterion."""

    method: str
    au: bool
    mi: bool
    bleu: bool
    nll: bool
    detail: str

    @property
    def holds(self) -> bool:
        return self.au and self.mi and self.bleu and self.nll


def _above(summary: Summary, rival: Summary, key: str) -> bool:
    """`summary`'s mean above `rival`'s by more than the spread over seeds (the larger of the two standard deviations;
    no margin with one seed)."""
    spreads = [s.std.get(key, math.nan) for s in (summary, rival)]
    spread = max((value for value in spreads if not math.isnan(value)), default=0.0)
    return summary.mean[key] - rival.mean[key] > spread


def check_claims(summaries: Mapping[str, Summary], tolerance: float = 0.02) -> list[Claim]:
    """MINE-VAE's claim, for each MINE method: more AU, higher MI and higher reconstruction BLEU than the VAE and
    β-annealing, each by more than the spread over seeds, and an IW-NLL within `tolerance` of the best baseline's (the
    baselines being VAE, β-annealing, Optimus and the autoencoder warm start)."""
    rivals = [summaries[name] for name in ("vae", "beta-anneal") if name in summaries]
    baselines = [s for s in summaries.values() if s.role == "baseline"]
    if not rivals or not baselines:
        return []
    best_nll = min(s.mean["nll"] for s in baselines)
    claims = []
    for name, summary in summaries.items():
        if summary.role != "mine":
            continue
        au, mi, bleu = (all(_above(summary, rival, key) for rival in rivals) for key in ("au", "mi", "bleu"))
        gap = summary.mean["nll"] / best_nll - 1
        detail = (
            f"AU {summary.mean['au']:.1f} vs {_joined(r.mean['au'] for r in rivals)}; "
            f"MI {summary.mean['mi']:.2f} vs {_joined((r.mean['mi'] for r in rivals), 2)}; "
            f"BLEU {summary.mean['bleu']:.1f} vs {_joined(r.mean['bleu'] for r in rivals)}; "
            f"NLL {gap:+.1%} vs the best baseline ({best_nll:.2f})"
        )
        claims.append(Claim(name, au, mi, bleu, gap <= tolerance, detail))
    return claims


def _joined(values: Iterable[float], digits: int = 1) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


# --------------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------------
def import_pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend; an ImportError saying how to install it (it is optional)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"The study's plots need matplotlib: {PLOTS_HINT}.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curves(results: Sequence[Mapping[str, Any]], method: str, key: str) -> tuple[list[float], list[float]]:
    runs = [r["curves"] for r in results if r["method"] == method]
    steps = runs[0]["step"]
    values = [statistics.fmean(run[key][i] for run in runs) for i in range(min(len(run["step"]) for run in runs))]
    return steps[: len(values)], values


BOUND_FLOOR = -1.0  # the bound's axis is cut here: an exploding ξ = 1 bound (-1e9) would flatten every other curve
Styles = Mapping[str, Mapping[str, str]]


def plot(results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], out: Path) -> list[Path]:
    """`curves.png`: KL, the bound and the probe's MI, AU and BLEU over training per method; `active_units.png`: final
    AU per method."""
    plt = import_pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {
        name: {"color": colors[i % len(colors)], "linestyle": "-" if i < len(colors) else "--"}
        for i, name in enumerate(summaries)
    }
    return [
        _plot_curves(plt, results, summaries, styles, out),
        _plot_active_units(plt, results, summaries, styles, out),
    ]


def key_has_values(result: Mapping[str, Any], key: str) -> bool:
    """Whether a run's curves hold any (non-NaN) value of `key`."""
    return any(not math.isnan(value) for value in result.get("curves", {}).get(key, []))


def _plot_curves(
    plt: Any, results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], styles: Styles, out: Path
) -> Path:
    probe = results[0]["budget"]["probe_examples"]
    # KL and the bound always; the probe's MI, AU and BLEU where the runs logged them (older studies lack some).
    titles = {
        "kl": "KL (nats, training batches; symlog)",
        "mi_bound": "critic's bound (nats, training batches)",
        "probe_mi": f"MI, aggregate posterior ({probe} validation sentences)",
        "probe_au": f"active units ({probe} validation sentences)",
        "probe_bleu": f"reconstruction BLEU ({results[0]['budget'].get('probe_bleu_examples')} validation sentences, "
        "greedy)",
    }
    panels = [key for key in titles if key in ("kl", "mi_bound") or any(key_has_values(r, key) for r in results)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
    lowest, highest = math.inf, -math.inf
    for name, summary in summaries.items():
        for axis, key in zip(axes, panels):
            steps, values = _mean_curves(results, name, key)
            axis.plot(steps, values, label=summary.label, **styles[name])
            if key == "mi_bound":
                lowest, highest = min([lowest, *values]), max([highest, *values])
    if lowest < BOUND_FLOOR:
        titles["mi_bound"] += f"; axis cut at {BOUND_FLOOR:g}"
    if "probe_mi" in panels:  # no estimate without its ceiling: the aggregate-posterior MI cannot exceed log N
        axes[panels.index("probe_mi")].axhline(math.log(probe), color="grey", linestyle=":", linewidth=1)
        titles["probe_mi"] += f"; dotted: ceiling log {probe}"
    titles = [titles[key] for key in panels]
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=0.1)
    if lowest < BOUND_FLOOR:
        axes[panels.index("mi_bound")].set_ylim(BOUND_FLOOR, highest + 0.1 * (highest - BOUND_FLOOR))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4), 1, 1))
    path = out / "curves.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


def _plot_active_units(
    plt: Any, results: Sequence[Mapping[str, Any]], summaries: Mapping[str, Summary], styles: Styles, out: Path
) -> Path:
    figure, axis = plt.subplots(figsize=(8, 3.8))
    names = list(summaries)
    means = [summaries[n].mean["au"] for n in names]
    errors = [0 if math.isnan(summaries[n].std["au"]) else summaries[n].std["au"] for n in names]
    bars = axis.bar(range(len(names)), means, yerr=errors, color=[styles[n]["color"] for n in names])
    axis.bar_label(bars, labels=[f"{m:.0f}" for m in means], fontsize=8)
    axis.set_xticks(range(len(names)), [summaries[n].label for n in names], rotation=25, ha="right", fontsize=8)
    axis.set_ylim(0, max(means) * 1.15 + 1)
    split = results[0]["budget"].get("eval_split", EVAL_SPLIT)
    axis.set_ylabel(f"active units ({split})")
    axis.set_title("Active units per method (mean ± std over seeds)", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out / "active_units.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------
def _cell(summary: Summary, key: str, digits: int) -> str:
    if key not in summary.mean:
        return "–"
    mean, std = summary.mean[key], summary.std[key]
    cell = _number(mean, digits) if math.isnan(std) else f"{_number(mean, digits)} ± {_number(std, digits)}"
    if key == "mi" and "num_examples" in summary.mean:
        # The aggregate-posterior estimate cannot exceed log N; at its ceiling it is a lower bound, not a measurement.
        ceiling = math.log(summary.mean["num_examples"])
        mark = "≥ " if mean >= ceiling - MI_SATURATION_MARGIN else ""
        cell = f"{mark}{cell} ({_number(ceiling, digits)})"
    return cell


def _number(value: float, digits: int) -> str:
    """Fixed point, or scientific notation for the values an exploding bound produces."""
    return f"{value:.2e}" if abs(value) >= 1e5 else f"{value:.{digits}f}"


def results_table(summaries: Mapping[str, Summary]) -> str:
    header = "| method | seeds | " + " | ".join(title for _, title, _ in TABLE_METRICS) + " |"
    rule = "|" + "---|" * (len(TABLE_METRICS) + 2)
    rows = [
        f"| {s.label} | {len(s.seeds)} | " + " | ".join(_cell(s, key, d) for key, _, d in TABLE_METRICS) + " |"
        for s in summaries.values()
    ]
    return "\n".join([header, rule, *rows])


def claims_text(claims: Sequence[Claim]) -> str:
    if not claims:
        return "The claims need the VAE, β-annealing and at least one MINE-VAE method in the study."
    lines = [
        "| MINE-VAE method | more AU than VAE and β-annealing | higher MI than both | higher BLEU than both | IW-NLL "
        "within 2% of the best baseline | numbers |",
        "|---|---|---|---|---|---|",
    ]
    mark = {True: "yes", False: "**no**"}
    for claim in claims:
        lines.append(
            f"| {claim.method} | {mark[claim.au]} | {mark[claim.mi]} | {mark[claim.bleu]} | {mark[claim.nll]} | "
            f"{claim.detail} |"
        )
    holding = [c.method for c in claims if c.holds]
    verdict = (
        f"**The claim holds** for {', '.join(holding)}."
        if holding
        else "**The claim does not hold** for any MINE-VAE method in this run."
    )
    margin = "Above means above by more than the spread over seeds (the larger standard deviation)."
    return "\n".join([verdict, "", *lines, "", margin])


def hardware(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The machines and library versions the runs were trained on (as each invocation recorded them; the machine
    writing the report for records older than that), threads, jobs, wall and CPU time."""
    train = sum(r["train_seconds"] for r in results)
    evaluation = sum(r["eval_seconds"] for r in results)
    cpu = sum(r.get("train_cpu_seconds", 0) + r.get("eval_cpu_seconds", 0) for r in results)
    cores = os.cpu_count() or 1
    resumed = sum(1 for r in results if r.get("resumed_from"))
    machines = "; ".join(dict.fromkeys(i["machine"] for i in meta.get("invocations", []) if "machine" in i))
    threads = sorted({r.get("threads") for r in results if r.get("threads")})
    invocations = meta.get("invocations", [])
    wall = sum(i["wall_seconds"] for i in invocations)
    stopped = sum(1 for i in invocations if i.get("interrupted"))
    loads = ", ".join(f"{i['load_start']}→{i['load_end']}" for i in invocations)
    codes = ", ".join(dict.fromkeys(i["code"] for i in invocations if "code" in i))
    code = f"; code: {codes}" if codes else ""  # recorded since the study began to note its commit
    lines = [
        f"- Hardware: {machines or machine_description()}; torch threads per run: "
        f"{', '.join(map(str, threads)) or '?'}; runs at a time: {meta.get('jobs', '?')}.",
        f"- Wall time of the study: {wall / 60:.1f} min over {len(invocations)} invocation(s)"
        + (f", {stopped} of them stopped before the end" * bool(stopped))
        + " (1-minute load "
        f"average at start→end of each: {loads or '?'}; other processes shared the machine when it exceeded the "
        f"core count){code}."
        if invocations
        else "- Wall time of the study: not recorded.",
        f"- Summed over runs: training {train / 60:.1f} min, evaluation {evaluation / 60:.1f} min of wall time; "
        f"{cpu / 60:.1f} min of CPU time (what the runs cost whatever else the machine was doing: about "
        f"{cpu / 60 / cores:.0f} min of wall time on {cores} idle cores with one run per core)"
        + (f"; {resumed} run(s) resumed from a checkpoint (time before the interruption not counted)" * bool(resumed))
        + ".",
    ]
    return "\n".join(lines)


def _architecture_text(arch: Mapping[str, Any] | None, preset: str, training: Mapping[str, Any] | None = None) -> str:
    if not arch:
        return ""
    encoder, decoder = arch["encoder"], arch["decoder"]
    # GPT-2 names its sizes n_layer / n_embd; BERT and Llama num_hidden_layers / hidden_size.
    layers = decoder.get("n_layer", decoder.get("num_hidden_layers"))
    width = decoder.get("n_embd", decoder.get("hidden_size"))
    dropout = decoder.get("resid_pdrop", decoder.get("attention_dropout", 0.0))
    injection = arch["latent_injection"]
    positions = arch.get("latent_memory_positions", 1)  # recorded since key/value positions became a setting
    if injection in ("memory", "both") and positions > 1:  # one position: the line reads as it always has
        injection += f", {positions} key/value positions per layer"
    if arch.get("latent_vocab_bias"):  # recorded since the vocabulary bias became a setting
        injection += ", plus a bias over the vocabulary"
    critic = f"{arch['critic_num_layers']}×{arch['critic_hidden_size']}"
    if arch.get("critic_score_bound"):  # recorded since bounded scores became a setting
        critic += f", scores bounded to ±{arch['critic_score_bound']:g}"
    trained = ""
    top = (training or {}).get("decoder_trainable_layers")  # recorded since a frozen decoder's top layers could train
    if top:
        encoder_part = "" if training.get("freeze_encoder") else "the encoder, "
        which, frozen = f"top {top} layers", "its lower layers, embeddings and LM head"
        if top == layers:
            which, frozen = f"{top} layers", "its embeddings and LM head"
        trained = (
            f"; trained: {encoder_part}the decoder's {which} and final norm (the decoder learns; {frozen} frozen) and "
            "the heads"
        )
    return (
        f"- Model (the `{preset}` preset's, as trained): {encoder['model_type']} {encoder.get('num_hidden_layers')}×"
        f"{encoder.get('hidden_size')} encoder (dropout {encoder.get('hidden_dropout_prob')}), {decoder['model_type']} "
        f"{layers}×{width} decoder (dropout {dropout}), vocabulary "
        f"{decoder.get('vocab_size')}, latent {arch['latent_size']} ({arch['pooling']} pooling, injected as "
        f"{injection}), critic {critic}{trained}; "
        f"{arch['parameters']:,} parameters.\n"
    )


def budget_text(results: Sequence[Mapping[str, Any]]) -> str:
    first = results[0]
    budget, training = first["budget"], first["training"]
    return (
        _architecture_text(first.get("architecture"), first.get("preset", "small"), training)
        + f"- Budget per run: {budget['steps']} optimizer steps of {training['per_device_train_batch_size']} sentences "
        f"(learning rate {training['learning_rate']}, {training['lr_scheduler_type']}, {training['warmup_steps']} "
        f"warm-up steps); critic: AdamW lr {training['critic_learning_rate']}, k = {training['critic_steps']} "
        f"update(s) per step, trained in every method.\n"
        f"- Evaluation: the first {budget['eval_examples']} sentences of {_evaluation_data(first)}, IW-NLL with "
        f"K = {budget['importance_samples']} importance samples (nats per sentence), PPL per word (+1 "
        f"end-of-sentence), KL and the critic's bound in nats, MI (aggregate posterior) and active units (Var[μ] > "
        f"0.01) over those sentences, BLEU of greedy reconstructions from the posterior mean on the first "
        f"{budget['bleu_examples']}. Curves: training-batch means every {budget['steps'] // budget['log_points']} "
        f"steps; AU on {budget['probe_examples']} validation sentences"
        + (
            f", BLEU of greedy reconstructions of the first {budget['probe_bleu_examples']} of them."
            if budget.get("probe_bleu_examples")
            else "."
        )
    )


def _evaluation_data(result: Mapping[str, Any]) -> str:
    """The evaluation split and how it was cut, e.g. "the PTB test split (after dropping sentences over 40 words)"."""
    # Runs record their data settings; the studies run before they did were all on PTB, cut at 40 words.
    data = {"corpus": "PTB", "max_length": 40, "overlength": "drop", "held_out": [], **result.get("data", {})}
    split = result["budget"].get("eval_split", EVAL_SPLIT)
    how = "cutting" if data["overlength"] == "truncate" else "dropping"
    notes = [f"after {how} sentences over {data['max_length']} words"]
    if data["held_out"]:
        notes.insert(0, f"{' and '.join(data['held_out'])} held out of the training text")
    where = f"the PTB {split} split" if data["corpus"] == "PTB" else f"the {split} split of {data['corpus']}"
    return f"{where} ({'; '.join(notes)})"


def settings_table(results: Sequence[Mapping[str, Any]], order: Sequence[str]) -> str:
    seen: dict[str, Mapping[str, Any]] = {}
    for result in results:
        seen.setdefault(result["method"], result)
    lines = [
        "| method | β (peak), schedule | free bits | λ, ξ | critic warm-up, λ ramp (steps) |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in order if n in seen] + sorted(set(seen) - set(order)):
        model, training = seen[name]["model"], seen[name]["training"]
        schedule = training["kl_schedule"]
        if schedule == "linear":
            schedule += f" over {training['kl_warmup_ratio']:.0%}"
        elif schedule == "cyclical":
            schedule += f", {training['kl_cycles']} cycles"
        lam = model.get("mi_weight", 0.0)
        xi = model.get("xi", "the preset's")
        mine = f"{lam}, {xi}" if lam else f"0 (the critic only watches, ξ = {xi})"
        warmup = f"{training['critic_warmup_steps']}, {training['mi_warmup_steps']}" if lam else "–"
        lines.append(
            f"| {seen[name]['label']} | {model.get('kl_weight', 1.0)}, {schedule} | {free_bits(seen[name])} | {mine} "
            f"| {warmup} |"
        )
    return "\n".join(lines)


def free_bits(result: Mapping[str, Any]) -> float:
    """The free bits a run trained with. They are a `MineVaeConfig` field, recorded with the method's model settings;
    results written while they were a training argument hold them among the training settings instead."""
    for settings in (result["model"], result["training"], result.get("architecture", {})):
        if "free_bits" in settings:
            return settings["free_bits"]
    return MineVaeConfig.free_bits  # a method that leaves them to the config's default


DEFAULT_COMMAND = "mine-vae study"


def section_markdown(
    name: str,
    results: Sequence[Mapping[str, Any]],
    order: Sequence[str],
    plots: Sequence[Path],
    meta: Mapping[str, Any],
    doc_dir: Path | None = None,
) -> str:
    """The page's section `name`: results table, claims, settings, budget, hardware and the plots (linked relative
    to `doc_dir`, the page's folder; the current folder by default)."""
    summaries = summarize(results, order)
    doc_dir = doc_dir or Path.cwd()
    figures = "\n".join(f"![{path.stem}]({os.path.relpath(path, doc_dir).replace(os.sep, '/')})" for path in plots)
    return "\n\n".join(
        [
            f"### Results: `{name}`",
            f"Regenerate with `{meta.get('command', DEFAULT_COMMAND)}` (finished runs are kept in "
            f"`{meta.get('out_rel', name)}/{FINISHED}/` and skipped; delete them to train again).",
            results_table(summaries),
            "IW-NLL, KL, bound and rec. (reconstruction −log p(x|z), one sample) in nats per sentence.",
            "#### The claims",
            claims_text(check_claims(summaries)),
            "#### Settings, budget and hardware",
            settings_table(results, order),
            budget_text(results),
            hardware(results, meta),
            figures,
        ]
    )


_DOC_HEAD = """# Benchmarks

Everything on this page between the `BEGIN`/`END` markers is written by a command (`mine-vae study`,
`bench/speed.py`); each section says how to regenerate it. The text outside the markers is the commentary.
"""


def write_section(doc: Path, key: str, text: str) -> None:
    """Replace the section between `<!-- BEGIN key -->` and `<!-- END key -->` in `doc` (appended when absent)."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    page = doc.read_text() if doc.is_file() else _DOC_HEAD
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    page = pattern.sub(lambda _: block, page) if pattern.search(page) else page.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(page)


def read_section(doc: Path, key: str) -> str | None:
    """The text of section `key` of `doc` (what `write_section` put there), or None when the page has none."""
    if not doc.is_file():
        return None
    begin, end = re.escape(f"<!-- BEGIN {key} -->"), re.escape(f"<!-- END {key} -->")
    match = re.search(begin + r"\n(.*?)\n" + end, doc.read_text(), re.DOTALL)
    return match.group(1) if match else None


def section_key(out: Path) -> str:
    """The section's name on the page: the results folder's path under a `bench/results/` folder, else its name."""
    resolved = out.resolve()
    for parent in resolved.parents:
        if parent.name == "results" and parent.parent.name == "bench":
            return resolved.relative_to(parent).as_posix()
    return resolved.name


def report(
    out: Path, order: Sequence[str], doc: Path | None, meta: Mapping[str, Any], plots: bool = True
) -> str | None:
    """Write the plots (unless `plots` is false), `summary.json` and, when `doc` is given, the page section from the
    results in `out`; returns the section (None without results)."""
    results = load_results(out)
    if not results:
        return None
    summaries = summarize(results, order)
    figures = plot(results, summaries, out) if plots else []
    key = section_key(out)
    text = section_markdown(key, results, order, figures, meta, doc.parent if doc is not None else None)
    (out / "summary.json").write_text(
        json.dumps(
            {
                name: {"label": s.label, "role": s.role, "seeds": s.seeds, "mean": s.mean, "std": _nan_to_none(s.std)}
                for name, s in summaries.items()
            },
            indent=1,
            allow_nan=False,
        )
        + "\n"
    )
    if doc is not None:
        write_section(doc, key, text)
    return text
