"""What the ``mac`` commands print: progress bars only on terminals, and no third-party warnings a
user cannot act on.

* :func:`show_progress`: tqdm bars (written to stderr) are shown only when asked for AND stderr is a
  terminal, so output redirected to a log file holds no carriage returns or ANSI escapes.
* :func:`silence_harmless_warnings`: ignores the specific, known-harmless messages in
  :data:`HARMLESS_WARNINGS` (matched by message regex), nothing else. It is called where the
  environments are built (:mod:`mac.evaluate`, :mod:`mac.data.generate`, also in their spawned
  worker processes, which import those modules) and by the ``mac`` command.
"""

from __future__ import annotations

import sys
import warnings

# (message regex, category, why it is harmless). Regexes are matched from the message's start
# (gymnasium prefixes its messages with an ANSI colour code and "WARN: ").
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r".*precision lowered by casting to float32", UserWarning,
     "gymnasium Box: OGBench's manipulation envs build float64 bounds for their float32 action "
     "space, anew on every action_space access"),
    (r".*The environment is being initialised with render_mode='rgb_array' that is not in the "
     r"possible render_modes", UserWarning,
     "gymnasium: OGBench's envs render rgb_array frames but do not declare metadata['render_modes']"),
)


def silence_harmless_warnings() -> None:
    """Ignore the warnings listed in :data:`HARMLESS_WARNINGS` (idempotent)."""
    for message, category, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def show_progress(requested: bool) -> bool:
    """Whether to draw tqdm progress bars: when ``requested`` and stderr (where tqdm draws) is a
    terminal. Redirected output gets no bars, hence no ``\\r`` or ANSI escapes."""
    return bool(requested) and is_terminal(sys.stderr)


__all__ = ["HARMLESS_WARNINGS", "is_terminal", "show_progress", "silence_harmless_warnings"]
