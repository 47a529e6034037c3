"""Parsing a command's arguments: flags over config file (JSON or YAML) over preset over dataclass defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from ..presets import DEFAULT_PRESET, Preset, get_preset
from .commands import COMMANDS, PROG, CliError, Command

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# A config file is a flat mapping of flag names, some values a list or a small mapping (--lr_scheduler_kwargs): these
# bounds are far above any real one, and far below what would exhaust the parser's recursion or the memory.
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_DEPTH = 32
MAX_INTEGER = 2**63 - 1  # the largest whole number torch takes


# A default the help text states itself, e.g. "(default: the preset's)": one group, nested parentheses allowed.
_STATED_DEFAULT = re.compile(r"\s*\(default: ((?:[^()]|\([^()]*\))*)\)")
# transformers' help texts mark a value as "(default)" ("If True (default), ..."), which is not always MINE-VAE's.
_MARKED_DEFAULT = re.compile(r" \(default\)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default once in its help, and the examples epilog printed as written.

    argparse appends "(default: VALUE)" to every help; where the help already says what its default is, the value is
    put in that statement instead (or left out when it is None, which the statement explains). transformers' own
    "(default)" marks go: the value shown is the one this command uses. The `--no_*` twin of a switch shows none: its
    stored default is the switch's opposite, not the setting's."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = _MARKED_DEFAULT.sub("", action.help or "")
        shows_default = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if (
            "%(default)" in text
            or action.default is argparse.SUPPRESS
            or not shows_default
            or isinstance(action, argparse._StoreFalseAction)
        ):
            return text
        stated = _STATED_DEFAULT.search(text)
        if stated is None:
            return f"{text} (default: %(default)s)"
        if action.default is None:
            return text
        return f"{text[: stated.start()]} (default: %(default)s, {stated.group(1)}){text[stated.end() :]}"


class _Parser(HfArgumentParser):
    """An `HfArgumentParser` whose usage errors are one `CliError` line instead of usage text and `sys.exit`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _make_parser(command: Command) -> _Parser:
    parser = _Parser(
        command.dataclasses,
        prog=f"{PROG} {command.name}",
        usage=command.usage,
        description=command.summary,
        epilog=command.examples,
        formatter_class=_HelpFormatter,
    )
    # Fields of dataclasses without a group name (the Trainer's arguments) land in argparse's default group.
    has_training_arguments = any(issubclass(cls, TrainingArguments) for cls in command.dataclasses)
    parser._optionals.title = (
        "training arguments (MineVaeTrainingArguments) and help" if has_training_arguments else "help"
    )
    _bare_switches(parser)
    if command.positionals is not None:
        command.positionals(parser)
    elif command.positional_config:
        parser.add_argument("config_file", nargs="?", default=None, help="JSON or YAML file of flag values.")
    return parser


def _bare_switches(parser: argparse.ArgumentParser) -> None:
    """Let `--NAME` alone mean true for a `bool | None` setting too, as it does for a plain `bool`.

    HfArgumentParser gives an optional boolean (None: the preset's or the config's value) a required true/false value;
    a preset's settings are all optional, so without this `--latent_vocab_bias` would need `true` after it.
    """
    for action in parser._actions:
        if action.type is string_to_bool and action.nargs is None:
            action.nargs = "?"
            action.const = True


def parse_command(command: Command, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse `argv` into the command's dataclasses (plus a Namespace of positionals when it has any)."""
    config_path = _config_path(command, argv)
    file_values = _read_config(config_path) if config_path else {}
    parser = _make_parser(command)
    dests = {action.dest for action in parser._actions}
    if command.preset_defaults:
        preset = _preset_from(argv, file_values)
        parser.set_defaults(**{k: v for k, v in preset.defaults().items() if k in dests})
    unknown = sorted(set(file_values) - _all_dests())
    if unknown:
        raise CliError(f"{config_path}: unknown setting(s) {', '.join(unknown)}; see `{PROG} {command.name} --help`.")
    parser.set_defaults(**_converted_config_values(parser, file_values, str(config_path)))
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=list(argv), return_remaining_strings=True, look_for_args_file=False
        )
    except (ValueError, TypeError, ImportError) as error:  # a dataclass's own checks (MineVaeTrainingArguments)
        raise CliError(str(error)) from error
    if remaining:
        raise CliError(f"unrecognized arguments: {' '.join(remaining)} (see `{PROG} {command.name} --help`)")
    _check_integer_range(parsed)
    return tuple(parsed)


def _check_integer_range(parsed: Sequence[Any]) -> None:
    """Whole numbers beyond 64 bits, refused naming the flag: torch and numpy fail on them with an overflow message
    that names none (`--per_device_train_batch_size 1e30` typed as digits, a pasted number)."""
    for values in parsed:
        if not dataclasses.is_dataclass(values):
            continue
        for spec in dataclasses.fields(values):
            value = getattr(values, spec.name, None)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
                raise CliError(f"--{spec.name} {value} is too large; at most {MAX_INTEGER:,}.")


def _converted_config_values(parser: argparse.ArgumentParser, values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The config file's settings of this command, each converted and checked exactly as its flag would be: the value
    is turned into the text of a command line and given to the flag's own argparse conversion (its type and choices).
    A file's values are JSON/YAML objects of any type; taken as they are, `overwrite: [false]` would count as true
    and `max_steps: 2.5` would reach the Trainer as a float."""
    actions = _actions_by_dest(parser)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:  # a setting of another command (a config file may serve several)
            continue
        if value is None:
            if action.default is not None:
                raise CliError(f"config file {path!r}: setting {key!r} is empty (null); give it a value or remove it.")
            continue
        multiple = action.nargs in ("+", "*")
        if isinstance(value, list) and not multiple:
            raise CliError(
                f"config file {path!r}: setting {key!r} takes one value, not a list ({value!r}); e.g. "
                f"{key}: {_as_argument(value[0]) if value else '...'}."
            )
        words = [_as_argument(item) for item in value] if isinstance(value, list) else [_as_argument(value)]
        try:
            converted[key] = parser._get_values(action, words if multiple else words[:1])
        except argparse.ArgumentError as error:
            raise CliError(
                f"config file {path!r}: setting {key!r}: {error.message.rstrip('.')}; give a value that "
                f"{action.option_strings[0]} takes on the command line."
            ) from error
    return converted


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flag of each setting: `--NAME` (a boolean that defaults to true also has a `--no_NAME` with its dest)."""
    return {action.dest: action for action in parser._actions if f"--{action.dest}" in action.option_strings}


def _as_argument(value: Any) -> str:
    """A JSON/YAML value as the text a user would type after the flag."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)  # e.g. --lr_scheduler_kwargs '{"min_lr": 1e-5}'
    return str(value)


def _config_path(command: Command, argv: Sequence[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(list(argv))
    if known.config:
        return known.config
    if command.positional_config and rest and not rest[0].startswith("-") and rest[0].endswith(CONFIG_SUFFIXES):
        return rest[0]
    return None


def _read_config(path: str) -> dict[str, Any]:
    """A flat mapping of flag names (dashes or underscores) from a JSON or YAML file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"config file {path!r} does not exist; check the path.")
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise CliError(
                f"config file {path!r} is over {MAX_CONFIG_BYTES:,} bytes; a config file holds flag values (is it the "
                "right file?)."
            )
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the settings
    except UnicodeDecodeError as error:
        raise CliError(
            f"config file {path!r} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8."
        ) from error
    except OSError as error:
        raise CliError(f"config file {path!r} cannot be read ({error.strerror}); check its permissions.") from error
    depth = _bracket_depth(text)
    if depth > MAX_CONFIG_DEPTH:
        raise CliError(
            f"config file {path!r} nests lists or mappings {depth} deep; at most {MAX_CONFIG_DEPTH} levels are read."
        )
    try:
        if file.suffix.lower() == ".json":
            values = json.loads(text, object_pairs_hook=_mapping_without_duplicates) if text.strip() else {}
        else:
            values = _load_yaml(text)
    except ValueError as error:
        raise CliError(f"config file {path!r} is not valid {file.suffix[1:].upper()}: {error}") from error
    except RecursionError:  # nested by indentation, which the bracket count above does not see
        raise CliError(
            f"config file {path!r} nests lists or mappings too deep to read; at most {MAX_CONFIG_DEPTH} levels are "
            "read."
        ) from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CliError(
            f"config file {path!r} must hold a mapping of flag names to values, not {type(values).__name__}."
        )
    settings: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in settings:  # max-steps and max_steps: one setting given twice, the last one would win silently
            raise CliError(
                f"config file {path!r} sets {spelled[name]!r} and {str(key)!r}, which are the same setting; keep one."
            )
        settings[name], spelled[name] = value, str(key)
    return settings


def _bracket_depth(text: str) -> int:
    """How deep the `[`/`{` of `text` nest outside quoted strings (JSON, and YAML's flow style): measured before
    parsing, which would recurse once per level."""
    depth = deepest = 0
    quote = ""
    escaped = False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _mapping_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (json.loads would keep the last of a repeated key silently)."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"the key {key!r} appears twice; keep one")
        mapping[key] = value
    return mapping


def _load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as error:
        raise CliError("YAML config files need PyYAML: `pip install pyyaml`, or write the config as JSON.") from error

    class Loader(yaml.SafeLoader):
        """safe_load without aliases (`*name`: a few hundred bytes of nested aliases expand to gigabytes, the
        "billion laughs") and without repeated keys (the last one would win silently)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases (*{event.anchor}) are not allowed in a config file; write the value out",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice; keep one", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ValueError(" ".join(str(error).split())) from error


def _preset_from(argv: Sequence[str], file_values: Mapping[str, Any]) -> Preset:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(list(argv))
    name = known.preset or file_values.get("preset") or DEFAULT_PRESET
    try:
        return get_preset(str(name))
    except ValueError as error:
        raise CliError(f"{error} (`--preset NAME`)") from error


def _all_dests() -> set[str]:
    """Every setting any command takes: a shared config file may hold settings of other commands."""
    names = {"config_file"}
    for command in COMMANDS.values():
        for cls in command.dataclasses:
            names.update(f.name for f in dataclasses.fields(cls) if f.init)
    return names
