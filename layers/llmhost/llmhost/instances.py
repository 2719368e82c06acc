"""SageMaker hosting instance types llmhost can size and price models for (pure data).

Prices are On-Demand, Real-Time Inference, US East (N. Virginia), in US dollars per
instance-hour; other regions cost more or less, and Savings Plans less. They are
estimates for choosing between instance types and telling people what a deployment will
roughly cost, not a bill: see ``PRICE_SOURCE`` for where they come from and re-check them
there before quoting them to anyone.

GPU memory is the marketed size per GPU in GiB (an "A10G 24 GB" reports about 22.5 GiB
to CUDA); ``llmhost.sizing.fit`` keeps a margin for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

PRICE_SOURCE = (
    "AWS 'Amazon SageMaker AI pricing' page (https://aws.amazon.com/sagemaker/ai/pricing/), "
    "On-Demand > Real-Time Inference > US East (N. Virginia), prices as published in "
    "early 2025, transcribed 2026-11-21 without a live fetch; ml.g6, ml.g6e and ml.p5 "
    "prices are the least certain. Re-check before quoting."
)
PRICE_REGION = "us-east-1"
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class InstanceType:
    """One SageMaker instance type: its accelerators, host resources and hourly price.

    ``gpu_memory_gib`` is per GPU; ``memory_gib`` is host RAM; ``price_per_hour`` is USD.
    """

    name: str
    gpu_count: int
    gpu_model: str | None
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int
    price_per_hour: float

    @property
    def is_gpu(self) -> bool:
        return self.gpu_count > 0

    @property
    def family(self) -> str:
        """'ml.g5' for 'ml.g5.12xlarge'."""
        return self.name.rsplit(".", 1)[0]

    @property
    def total_gpu_memory_gib(self) -> int:
        return self.gpu_count * self.gpu_memory_gib

    @property
    def supports_bfloat16(self) -> bool:
        # Turing (T4) has no bfloat16 tensor cores; Ampere and newer do.
        return self.gpu_model not in (None, "T4")

    @property
    def supports_fp8(self) -> bool:
        # FP8 weights need Ampere or newer (Marlin kernels); native FP8 is Ada/Hopper.
        return self.gpu_model not in (None, "T4")

    def describe(self) -> str:
        """Short human summary, e.g. 'ml.g5.12xlarge (4x A10G 24 GiB, $7.09/h)'."""
        if self.is_gpu:
            return (
                f"{self.name} ({self.gpu_count}x {self.gpu_model} {self.gpu_memory_gib} GiB, "
                f"${self.price_per_hour:.2f}/h)"
            )
        return (
            f"{self.name} ({self.vcpus} vCPU, {self.memory_gib} GiB, ${self.price_per_hour:.3f}/h)"
        )


def _family(
    prefix: str, gpu: str, gpu_gib: int, rows: tuple[tuple[str, int, int, int, float], ...]
) -> tuple[InstanceType, ...]:
    return tuple(
        InstanceType(f"{prefix}.{size}", gpus, gpu, gpu_gib, vcpus, mem, price)
        for size, gpus, vcpus, mem, price in rows
    )


# (size, GPUs, vCPUs, host GiB, $/hour)
_TYPES: tuple[InstanceType, ...] = (
    # NVIDIA T4 (Turing), 16 GiB
    *_family(
        "ml.g4dn",
        "T4",
        16,
        (
            ("xlarge", 1, 4, 16, 0.736),
            ("2xlarge", 1, 8, 32, 0.94),
            ("4xlarge", 1, 16, 64, 1.505),
            ("8xlarge", 1, 32, 128, 2.72),
            ("12xlarge", 4, 48, 192, 4.89),
            ("16xlarge", 1, 64, 256, 5.44),
        ),
    ),
    # NVIDIA A10G (Ampere), 24 GiB
    *_family(
        "ml.g5",
        "A10G",
        24,
        (
            ("xlarge", 1, 4, 16, 1.408),
            ("2xlarge", 1, 8, 32, 1.515),
            ("4xlarge", 1, 16, 64, 2.03),
            ("8xlarge", 1, 32, 128, 3.06),
            ("12xlarge", 4, 48, 192, 7.09),
            ("16xlarge", 1, 64, 256, 5.12),
            ("24xlarge", 4, 96, 384, 10.18),
            ("48xlarge", 8, 192, 768, 20.36),
        ),
    ),
    # NVIDIA L4 (Ada Lovelace), 24 GiB
    *_family(
        "ml.g6",
        "L4",
        24,
        (
            ("xlarge", 1, 4, 16, 1.0064),
            ("2xlarge", 1, 8, 32, 1.222),
            ("4xlarge", 1, 16, 64, 1.654),
            ("8xlarge", 1, 32, 128, 2.518),
            ("12xlarge", 4, 48, 192, 5.752),
            ("16xlarge", 1, 64, 256, 4.246),
            ("24xlarge", 4, 96, 384, 8.344),
            ("48xlarge", 8, 192, 768, 16.688),
        ),
    ),
    # NVIDIA L40S (Ada Lovelace), 48 GiB
    *_family(
        "ml.g6e",
        "L40S",
        48,
        (
            ("xlarge", 1, 4, 32, 2.326),
            ("2xlarge", 1, 8, 64, 2.803),
            ("4xlarge", 1, 16, 128, 3.755),
            ("8xlarge", 1, 32, 256, 5.661),
            ("12xlarge", 4, 48, 384, 13.116),
            ("16xlarge", 1, 64, 512, 9.471),
            ("24xlarge", 4, 96, 768, 18.832),
            ("48xlarge", 8, 192, 1536, 37.664),
        ),
    ),
    InstanceType("ml.p4d.24xlarge", 8, "A100", 40, 96, 1152, 37.688),
    InstanceType("ml.p4de.24xlarge", 8, "A100", 80, 96, 1152, 47.11),
    InstanceType("ml.p5.48xlarge", 8, "H100", 80, 192, 2048, 113.07),
    # CPU types, for the Hugging Face inference toolkit on small models.
    InstanceType("ml.m5.large", 0, None, 0, 2, 8, 0.115),
    InstanceType("ml.m5.xlarge", 0, None, 0, 4, 16, 0.23),
    InstanceType("ml.m5.2xlarge", 0, None, 0, 8, 32, 0.461),
    InstanceType("ml.m5.4xlarge", 0, None, 0, 16, 64, 0.922),
    InstanceType("ml.c5.xlarge", 0, None, 0, 4, 8, 0.204),
    InstanceType("ml.c5.2xlarge", 0, None, 0, 8, 16, 0.408),
    InstanceType("ml.c5.4xlarge", 0, None, 0, 16, 32, 0.816),
)


@cache
def _by_name() -> dict[str, InstanceType]:
    return {t.name: t for t in _TYPES}


def get(name: str) -> InstanceType | None:
    """The instance type called ``name`` (e.g. 'ml.g5.2xlarge'), or None if unknown."""
    return _by_name().get(name.strip().lower())


def is_gpu(name: str) -> bool:
    """True for a known GPU instance type, and for an unknown type of a GPU family.

    Unknown names are judged by family prefix (ml.g*, ml.p*) so that a newer GPU type
    llmhost has no row for is still recognised as one.
    """
    known = get(name)
    if known is not None:
        return known.is_gpu
    family = name.strip().lower().removeprefix("ml.").split(".", 1)[0]
    return family[:1] in ("g", "p")


def gpu_instances() -> tuple[InstanceType, ...]:
    """Every known GPU instance type, cheapest first."""
    return tuple(sorted((t for t in _TYPES if t.is_gpu), key=lambda t: t.price_per_hour))


def cpu_instances() -> tuple[InstanceType, ...]:
    """Every known CPU-only instance type, cheapest first."""
    return tuple(sorted((t for t in _TYPES if not t.is_gpu), key=lambda t: t.price_per_hour))


def all_instances() -> tuple[InstanceType, ...]:
    """Every known instance type, in table order."""
    return _TYPES
