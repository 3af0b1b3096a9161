"""The embedded multi-image grounding world (see :mod:`mirg_lib.world.tasks`)."""

from .build import DataConfig, WorldManifest, contact_sheet, run_data_synthesis
from .tasks import GENERATORS, SINGLE_TASK, Sample, WorldKnobs, generate

__all__ = ["DataConfig", "WorldManifest", "run_data_synthesis", "contact_sheet", "GENERATORS", "SINGLE_TASK", "Sample", "WorldKnobs", "generate"]
