"""Upper bounds on numbers a user can pass: refuse what this machine cannot do, and say why.

    python -c "from sparsepipe.limits import machine_memory_bytes, usable_cpu_count; print(machine_memory_bytes(), usable_cpu_count())"

``benchmark --threads 100000`` ran until killed, ``export --batch 100000`` and ``--imgsz 100000``
died in out-of-memory tracebacks trying to allocate 30-120 GB. Step configs call these checks in
``__post_init__``, so such values are a :class:`~sparsepipe.errors.ConfigError` before any work.
The memory check is a lower bound (never refuses a run that could fit): the float32 input batch
plus the first convolution's output, 28 bytes per input pixel for yolov8n, the smallest YOLO.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsepipe.errors import ConfigError

#: Largest square input side accepted. YOLO models are trained at 320-1536 px; one 8192 px image
#: already needs gigabytes of activations.
MAX_IMGSZ = 8192
#: Longest training schedule accepted (a yolov8n epoch on 128 images takes seconds; 10,000 of COCO
#: would take years on a CPU): more is a typo.
MAX_EPOCHS = 10_000
#: Threads per CPU core accepted for engines: beyond it threads only contend.
THREADS_PER_CPU = 4
#: Bytes per input pixel of one image that any YOLO needs at least: 3 float32 channels of input
#: plus 16 float32 channels at half resolution out of the first convolution (yolov8n's).
MIN_BYTES_PER_PIXEL = 3 * 4 + 16 * 4 // 4


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def machine_memory_bytes() -> int:
    """Physical memory available to this process: the cgroup limit in a container, else the RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_threads(name: str, value: int) -> None:
    """Refuse more engine threads than :data:`THREADS_PER_CPU` per usable CPU."""
    cpus = usable_cpu_count()
    if value > THREADS_PER_CPU * cpus:
        raise ConfigError(
            f"{name}={value} is more than {THREADS_PER_CPU} threads per CPU ({cpus} usable here): threads beyond the "
            f"cores only wait for each other. Use --{name.replace('_', '-')} {cpus} or fewer."
        )


def check_epochs(name: str, value: int) -> None:
    """Refuse schedules longer than :data:`MAX_EPOCHS`."""
    if value > MAX_EPOCHS:
        raise ConfigError(
            f"{name}={value} is above the {MAX_EPOCHS} epochs sparsepipe accepts (that many would take years on a "
            f"CPU); use e.g. --epochs 30, or split the training into resumed runs."
        )


def check_input_size(batch: int, imgsz: int, what: str) -> None:
    """Refuse an image size above :data:`MAX_IMGSZ`, or a batch of images that cannot fit in memory.

    ``what`` names the step's work in the message ("training", "export").
    """
    if imgsz > MAX_IMGSZ:
        raise ConfigError(
            f"imgsz={imgsz} is above the {MAX_IMGSZ} px sparsepipe accepts (YOLO models are trained at 320-1536 px; "
            f"one {imgsz} px image would need {_gib(imgsz * imgsz * MIN_BYTES_PER_PIXEL)} GiB). Use --imgsz 640 or less."
        )
    need = batch * imgsz * imgsz * MIN_BYTES_PER_PIXEL
    have = machine_memory_bytes()
    if need > have:
        raise ConfigError(
            f"batch={batch} at imgsz={imgsz}: {what} needs at least {_gib(need)} GiB for the input and first layer "
            f"alone, more than the {_gib(have)} GiB of memory here. Lower --batch (or --imgsz)."
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f}"
