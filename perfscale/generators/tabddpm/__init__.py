"""TabDDPM (Kotelnikov et al. 2023): diffusion models for mixed-type tables, registered as "tabddpm".

Modules: `config` (hyperparameters), `transform` (table <-> model space), `diffusion` (Gaussian and
multinomial diffusion), `model` (the MLP denoiser), `train` (batches, loss, optimizer step, checkpoints,
loop), `sample` (reverse process and inpainting), `generator` (the `Generator` subclass). Only `config` and
`generator` are imported here: they need no torch at import time.
"""

from perfscale.generators.tabddpm.generator import TabDDPMGenerator

__all__ = ["TabDDPMGenerator"]
