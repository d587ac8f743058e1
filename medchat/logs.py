"""Log lines the app keeps out of its log, installed by the entry points before models load.

    from medchat.logs import quiet_start_up
    quiet_start_up(settings.profile)   # before anything imports peft

peft imports bitsandbytes whenever it is installed. On a CPU with AVX-512 bf16, bitsandbytes
then looks for a 4-bit matmul kernel on the hub (kernels-community) and, offline or without
the `kernels` package, logs "Failed to load CPU gemm_4bit_forward from kernels-community" at
every start: noise, unless the profile asks for 4-bit weights, where it says something about
the run. Only that line is dropped; every other bitsandbytes message stays.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_PROBE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def hide_bitsandbytes_probe() -> None:
    """Keep bitsandbytes' failed kernel probe out of the log (once per process)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, DropMessage) for f in logger.filters):
        logger.addFilter(DropMessage(BNB_KERNEL_PROBE))


def quiet_start_up(profile_name: str) -> bool:
    """hide_bitsandbytes_probe() unless the profile (or "auto" here) loads 4-bit weights;
    True when the line is hidden. An unknown profile is left to the loader to refuse."""
    from medchat.errors import MedchatError
    from medchat.profiles import resolve_profile

    try:
        four_bit = resolve_profile(profile_name).load_in_4bit
    except MedchatError:
        return False
    if not four_bit:
        hide_bitsandbytes_probe()
    return not four_bit
