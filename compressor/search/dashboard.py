"""`compressor dashboard`: optuna-dashboard on the store's database."""

from __future__ import annotations

import errno
import logging
import socket

from rich.console import Console

from compressor.errors import CompressorError
from compressor.search.storage import open_storage, printable_url
from compressor.store import resolve_db_url

log = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve_dashboard(
    db_url: str | None = None,
    study_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    console: Console | None = None,
) -> None:
    """Serve optuna-dashboard for every study in the database until interrupted.

    Binds to 127.0.0.1 unless ``host`` names another address. With ``study_name``, the printed
    address opens that study's page. Raises :class:`CompressorError` when the study is
    not found or the port is in use.
    """
    from optuna_dashboard import run_server

    console = console or Console()
    url = resolve_db_url(db_url)
    storage = open_storage(url)

    page = f"http://{host}:{port}/dashboard/"
    if study_name is not None:
        try:
            study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            names = ", ".join(s.study_name for s in storage.get_all_studies()) or "none"
            raise CompressorError(
                f"study {study_name!r} not found in {printable_url(url)}; studies there: {names}"
            ) from None
        page += f"studies/{study_id}"

    _check_port_free(host, port)
    if host not in _LOOPBACK:
        log.warning("the dashboard listens on %s, so other machines can reach it; it has no authentication", host)

    console.print(f"optuna-dashboard on {printable_url(url)}: [link={page}]{page}[/link] (Ctrl-C stops it)")
    try:
        run_server(storage, host=host, port=port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CompressorError(_port_message(host, port)) from None
        raise


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The server sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CompressorError(_port_message(host, port)) from None
            raise CompressorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _port_message(host: str, port: int) -> str:
    return f"port {port} on {host} is already in use; pass a free one with --port, for example --port {port + 1}"
