"""Progress bars: live on a terminal, a line every 15 s in logs (DVC, CI)."""

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar showing rate and ETA, quiet enough for non-interactive logs."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
        mininterval=0.1 if interactive else 15.0, ascii=not interactive,
    )  # fmt: skip
