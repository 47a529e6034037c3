"""`mine-vae explore MODEL`: a local web page for a trained model's latent space (reconstruct, interpolate, sample,
attribute vectors, analogies), served by `mine_vae.explorer` until Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field

from ..text_latent import DEFAULT_MAX_NEW_TOKENS, generation_limit
from .arguments import NUM_THREADS_HELP
from .commands import CliError, inform, quiet_library_logs, set_threads
from .loading import load_trained
from .output import describe_os_error


@dataclass
class ExploreArguments:
    """Where `mine-vae explore` serves its page."""

    _argument_group_name = "explore"

    port: int = field(default=0, metadata={"help": "TCP port (0: a free one; the URL printed names it)."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to listen on. The page has no login: keep it on this machine (127.0.0.1)."},
    )
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Most tokens per sentence."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})


def explore_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Folder written by `mine-vae train` (or a checkpoint-N in it, or a Hub id).")


def run_explore(options: ExploreArguments, extra: argparse.Namespace) -> int:
    quiet_library_logs(show_progress=False)
    set_threads(options.num_threads)
    if not 0 <= options.port <= 65535:
        raise CliError(f"--port must be between 0 and 65535 (0: a free one), got {options.port}.")
    if options.max_new_tokens < 1:
        raise CliError(f"--max_new_tokens must be at least 1, got {options.max_new_tokens}.")
    from ..explorer import make_server

    model, processor = load_trained(extra.model, options.device)
    try:
        server = make_server(
            model,
            processor,
            options.host,
            options.port,
            name=extra.model,
            max_new_tokens=min(options.max_new_tokens, generation_limit(model)),
        )
    except OSError as error:  # port taken, address not of this machine, permission denied below 1024
        raise CliError(
            f"cannot listen on {options.host}:{options.port} ({describe_os_error(error)}); choose another --port "
            "(0: a free one) or --host."
        ) from error
    if not _is_loopback(options.host):
        inform(f"warning: serving on {options.host}: anyone who can reach this address can use the page.")
    print(f"mine-vae explorer for {extra.model}: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the way to stop a server: not an error
        inform("Stopped.")
    finally:
        server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
