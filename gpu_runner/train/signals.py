"""Stop requests (SIGTERM, SIGINT): how a cancel or pause reaches a run. Light (no torch), so it can be
installed before the heavy imports."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any


class StopRequested(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt, not an error
    """SIGTERM/SIGINT arrived before training began; nothing to checkpoint yet."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@dataclass
class StopSwitch:
    """SIGTERM/SIGINT handling. Before training begins a signal ends the run at once (`StopRequested`);
    from then on (`deferred`) the signal only raises a flag that `RunCallback` reads at the next step
    boundary, where it checkpoints and stops. After training, outputs are finished first."""

    signum: int | None = None
    deferred: bool = False
    _previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        if not self.deferred and first:
            raise StopRequested(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None
