"""What every benchmark reports about the machine and its own memory (imported by the scripts here)."""

from __future__ import annotations

import os
import platform
import resource

from o1_jax.files import atomic_write_json


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def current_rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    """This process's peak RSS: VmHWM, which exec resets (ru_maxrss would carry a forking parent's over)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def machine() -> dict:
    """The machine as the JSON results record it."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


def describe_machine() -> str:
    """The machine as each benchmark's first printed line gives it."""
    return f"machine: {cpu_model()}, {os.cpu_count()} cores; {platform.platform()}"


def write_json(path: str, obj) -> None:
    """Results to `path`, whole or not at all (o1_jax.files)."""
    atomic_write_json(path, obj)


# Short SciFact-like claims: the built-in inputs of the generation and serving benchmarks.
SENTENCES = [
    "Aspirin reduces the risk of heart attack.",
    "Vitamin D deficiency is common in northern countries during winter.",
    "Mitochondria produce most of the chemical energy that cells need.",
    "Sleep deprivation impairs working memory.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "Antibiotics do not treat viral infections.",
    "The gut microbiome of infants born by caesarean section differs from that of infants born vaginally.",
    "Smoking is the leading cause of lung cancer.",
    "CRISPR can edit genes in human embryos.",
    "Statins reduce LDL cholesterol, but their effect on mortality in people without heart disease is debated.",
    "Insulin resistance precedes type 2 diabetes.",
    "Telomeres shorten with every cell division.",
    "Measles vaccination does not cause autism.",
    "Air pollution increases hospital admissions for asthma in children living near busy roads.",
    "Caffeine improves alertness.",
    "Beta blockers reduce mortality after myocardial infarction in patients with reduced ejection fraction.",
]
