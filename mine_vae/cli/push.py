"""`mine-vae push FOLDER REPO_ID`: upload a trained model folder (weights, code, both tokenizers, a model card)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from ..hub import push_folder
from ..modelcard import DEFAULT_LICENSE
from .commands import CliError


@dataclass
class PushArguments:
    """How `mine-vae push` uploads a folder."""

    _argument_group_name = "push"

    revision: str | None = field(
        default=None, metadata={"help": "Branch to commit to (created from main if missing); default: main."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo private (no effect if it exists)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License in the generated model card."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Training corpus named in the generated card (a Hub dataset id is linked)."}
    )
    base_models: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the encoder and decoder (default: read from config.json)."}
    )
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})


def push_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="Folder written by `mine-vae train` or `save_pretrained`.")
    parser.add_argument("repo_id", help="Hub repo, `user/name` (created if missing).")


def run_push(options: PushArguments, extra: argparse.Namespace) -> int:
    try:
        commit = push_folder(
            extra.folder,
            extra.repo_id,
            revision=options.revision,
            commit_message=options.commit_message,
            private=options.private or None,
            license=options.license,
            dataset_name=options.dataset_name,
            base_models=options.base_models,
        )
    except (ValueError, OSError) as error:  # OSError covers the client's HTTP errors (auth, missing repo)
        raise CliError(str(error)) from error
    result = {"command": "push", "folder": extra.folder, "repo_id": extra.repo_id, "revision": commit.oid}
    result["url"] = commit.commit_url
    if options.json_output:
        print(json.dumps(result, indent=2))
    else:
        print(f"Pushed {extra.folder} to {extra.repo_id}: commit {commit.oid} ({commit.commit_url}).")
        print(f"Load it with MineVaeModel.from_pretrained({extra.repo_id!r}, revision={commit.oid!r}).")
    return 0
