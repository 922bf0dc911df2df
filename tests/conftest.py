"""Test configuration: four forced CPU devices, set before JAX is imported."""

import os

FORCED_DEVICES = 4

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FORCED_DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU runs a step's collectives (the all-reduce of a data-parallel step) on its
# intra-op thread pool, one thread per core by default. On a 2-core machine two
# forced devices blocked in an all-reduce hold both threads while a third device's
# work waits behind them in the same pool: the rendezvous never completes and XLA
# aborts the process after 40 s ("only 3 of them arrived"). Reproduced at will with
# the digits run at batch 8 on 4 devices while the cores are busy; PJRT_NPROC sizes
# that pool (xla/pjrt/utils.cc, DefaultThreadPoolSize), so give it two threads a device.
os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 2 * FORCED_DEVICES)))
