"""Training on a GPU node (or the CPU): SFT and DPO recipes on TRL + PEFT with a bitsandbytes-quantized base.

The torch stack is imported only when a run starts (`gpu_runner.train.runner.run`), so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_runner.events import EventWriter, ExitCode
    from gpu_runner.train.runner import RunOptions


def run(
    options: RunOptions, events: EventWriter, *, is_writer: bool = True, restore_signals: bool = True
) -> ExitCode:
    """Run one training job (see `gpu_runner.train.runner.run`)."""
    from gpu_runner.train.runner import run as _run

    return _run(options, events, is_writer=is_writer, restore_signals=restore_signals)


def __getattr__(name: str) -> Any:
    if name == "RunOptions":
        from gpu_runner.train.runner import RunOptions

        return RunOptions
    raise AttributeError(name)
