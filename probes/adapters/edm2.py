"""EDM2 (NVlabs) network pickles: already denoisers on the sigma axis (EDM preconditioning).

The "pipeline" here is the loaded network (see :func:`probes.models.edm2.load_edm2`), optionally
with an unconditional network for guidance; the loading, conditioning and latent decoding code
lives in :mod:`probes.models.edm2`.
"""

from __future__ import annotations

from probes.adapters.base import Family


class EDM2(Family):
    name = "edm2"
    parameterisation = "x0 (EDM precond)"
    conditioning = "class"
    description = "NVlabs EDM2 pickles (ImageNet-512 latents or pixels), D(x, sigma) directly"

    def denoiser(self, net, uncond_net=None):
        from probes.models.edm2 import EDM2Denoiser

        return EDM2Denoiser(net, uncond_net)

    def decoder(self, net, call_kwargs: dict | None = None, encoder=None):
        from probes.models.edm2 import EDM2LatentDecoder, is_pixel_space

        if is_pixel_space(net, encoder):
            return lambda x: x.float().clamp(-1, 1)
        return EDM2LatentDecoder(encoder)

    def conditioner(self, net, taxonomy):
        from probes.models.edm2 import edm2_conditioner

        return edm2_conditioner(taxonomy, label_dim=int(net.label_dim))
