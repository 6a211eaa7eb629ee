"""`rp serve`: the API on uvicorn, one process, on 127.0.0.1 unless told otherwise.

One process on purpose: the rate limits, the token budgets and the recent queries feedback is checked
against live in its memory, and the machine's two cores are spent on search, not on duplicate models.
The socket is bound before the app starts, so a port in use is one clear error, not a traceback; a
non-loopback address is allowed but said out loud. SIGTERM or Ctrl-C stops accepting requests, lets
those in flight finish and drains the query log to Parquet before the process exits.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket

import click

from python_jobs.common.errors import ConfigError, ExitCode, PipelineError
from python_jobs.common.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AddressInUseError(PipelineError):
    exit_code = ExitCode.USAGE


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address this machine can bind ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AddressInUseError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another port with --port "
            "(or stop the process that holds it)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _one_model_thread() -> None:
    """One intra-op thread for the query model. A question is a few tokens: a second thread saves little,
    and while requests run concurrently its spinning OpenMP workers take the CPU the searches and the
    other requests need (measured on 2 busy cores: 120 ms per question with 2 threads, 18 ms with 1)."""
    import torch

    torch.set_num_threads(1)


def serve(settings: Settings, host: str, port: int, access_log: bool = False) -> None:
    """Run the service until SIGTERM or Ctrl-C."""
    sock = bind(host, port)  # first: a port in use is an answer in a second, before anything loads
    try:
        import uvicorn

        from python_jobs.serve.app import create_app

        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        _one_model_thread()
        app = create_app(settings)  # reads keys, prompts and the tokenizer: a broken file stops here
    except BaseException:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    if not is_loopback(host):
        click.secho(
            f"warning: serving on {host}:{bound_port}, reachable from other machines; /v1 requests still need a key",
            fg="yellow",
            err=True,
        )
    click.echo(
        f"serving on http://{host}:{bound_port} (index {settings.index_dir}, keys {settings.keys_path}, "
        f"query log {settings.serve_log_dir}); /readyz reports when the index is open",
        err=True,
    )
    config = uvicorn.Config(app, log_level="info", access_log=access_log, lifespan="on", timeout_graceful_shutdown=30)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler it replaced: this
    # one makes a requested stop exit 0 (Ctrl-C still ends as an interruption, exit 130).
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        click.echo("stopped on SIGTERM: requests in flight finished, the query log is written", err=True)
