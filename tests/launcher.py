"""Start a real perfd with fakes at its boundaries (perfd.parts.Boundaries):

    python -m tests.launcher --nvml-control FILE -- --config perfd.toml --runtime-dir DIR

runs perfd's own ``perfd.daemon.main`` with the arguments after ``--``; its GPU probe is the
real ``perfd.probes.nvml.GpuProbe`` over a ``tests.fakenvml.ControlledNvml`` reading FILE
(written by ``NvmlControl.set`` while perfd runs), retrying nvmlInit every
``--nvml-retry`` seconds (0.2) instead of every minute after the driver went away.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from perfd import daemon
from perfd.config import MonitorConfig
from perfd.monitor.sampler import GpuProbe
from perfd.parts import Boundaries


def controlled_gpu_probe(
    control: str, retry_interval: float
) -> Callable[[MonitorConfig], GpuProbe]:
    """The GPU probe factory of a perfd whose NVML a test scripts through ``control``."""

    def build(cfg: MonitorConfig) -> GpuProbe:
        from perfd.probes import nvml
        from tests.fakenvml import ControlledNvml

        return nvml.GpuProbe(
            nvml=ControlledNvml(control), timeout=cfg.nvml_timeout, retry_interval=retry_interval
        )

    return build


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own options, and perfd's arguments (those after ``--``)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m tests.launcher", description="perfd with fakes at its boundaries"
    )
    parser.add_argument("--nvml-control", metavar="FILE", help="a ControlledNvml's script")
    parser.add_argument("--nvml-retry", type=float, default=0.2, metavar="SECONDS")
    args = parser.parse_args(argv[:cut])
    if cut == len(argv):
        parser.error("give perfd's arguments after --")
    return args, argv[cut + 1 :]


def main(argv: list[str] | None = None) -> int:
    args, perfd_args = parse(sys.argv[1:] if argv is None else argv)
    boundaries = Boundaries(
        gpu_probe=(
            controlled_gpu_probe(args.nvml_control, args.nvml_retry) if args.nvml_control else None
        )
    )
    return daemon.main(perfd_args, boundaries=boundaries)


if __name__ == "__main__":
    sys.exit(main())
