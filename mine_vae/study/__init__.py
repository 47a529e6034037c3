"""The posterior-collapse study: MINE-VAE against the standard baselines, side by side (`mine-vae study`).

Every method trains the model of one preset (`small` by default: word-level BERT 2x128 encoder, GPT-2 3x256 decoder,
latent 32, built by `mine_vae.presets.build_from_scratch`) on the same data, for the same number of steps, from the
same initial weights per seed; only the β / λ schedules differ. Each method still trains the critic (λ = 0 for the
baselines), so the critic's bound is reported for every method. Each run is evaluated on the test split with
`mine_vae.evaluation.evaluate_vae` (IW-NLL, PPL, KL, MI, active units, the bound; BLEU on a subset).

* `methods`: the methods table, `NAME@key=value,...` variants, budgets and the presets that have a study;
* `runner`: data, model, training and resuming one run, evaluating it, and the resumable multi-run driver;
* `report`: results summarised over seeds, the claims check, plots and the Markdown section of a page.
"""

from .methods import (
    CRITIC_WARMUP_RATIO,
    DEFAULT_PRESET,
    FULL,
    METHODS,
    QUICK,
    STUDY_PRESETS,
    Budget,
    Method,
    StudyPreset,
    get_study_preset,
    resolve_method,
)
from .record import cpu_model, machine_description, read_meta, run_and_record
from .report import (
    Claim,
    Summary,
    check_claims,
    load_results,
    plot,
    read_section,
    report,
    section_key,
    section_markdown,
    summarize,
    write_section,
)
from .runner import (
    DataSettings,
    StudyData,
    StudyPaths,
    build_model,
    check_method,
    complete_splits,
    evaluate_run,
    prepare_data,
    quiet_libraries,
    run_one,
    run_study,
    training_kwargs,
)

__all__ = [
    "CRITIC_WARMUP_RATIO",
    "DEFAULT_PRESET",
    "FULL",
    "METHODS",
    "QUICK",
    "STUDY_PRESETS",
    "Budget",
    "Claim",
    "DataSettings",
    "Method",
    "StudyData",
    "StudyPaths",
    "StudyPreset",
    "Summary",
    "build_model",
    "check_claims",
    "check_method",
    "complete_splits",
    "cpu_model",
    "machine_description",
    "evaluate_run",
    "get_study_preset",
    "load_results",
    "plot",
    "prepare_data",
    "quiet_libraries",
    "read_meta",
    "read_section",
    "report",
    "resolve_method",
    "run_and_record",
    "run_one",
    "run_study",
    "section_key",
    "section_markdown",
    "summarize",
    "training_kwargs",
    "write_section",
]
