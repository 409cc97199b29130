"""EDM2 (NVlabs) network pickles: already denoisers on the sigma axis (EDM preconditioning).

The "pipeline" here is the loaded network (see :func:`probes.models.edm2.load_edm2`), optionally
with an unconditional network for guidance; the loading, conditioning and latent decoding code
lives in :mod:`probes.models.edm2`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from probes.classifiers.sections import build_image_classifier
from probes.errors import ProbesError
from probes.estimators.base import ProbeContext
from probes.families.base import BuildSpec, Family, uniform_prior
from probes.models import edm2
from probes.models.stable_diffusion import DecodedClassifier
from probes.schema import Strict


class EDM2Model(Strict):
    """An EDM2 network pickle from NVlabs' release (unpickling needs their code on PYTHONPATH)."""

    kind: Literal["edm2"]
    path: str
    uncond_path: str | None = Field(None, description="unconditional network: plain reads and guidance")
    key: str = "ema"
    vae: str | None = Field(None, description="diffusers VAE (hub id or folder) instead of the pickle's encoder")
    decode_size: int | None = Field(None, gt=0, description="latent side length before decoding")


class EDM2(Family):
    name = "edm2"
    parameterisation = "x0 (EDM precond)"
    conditioning = "class"
    description = "NVlabs EDM2 pickles (ImageNet-512 latents or pixels), D(x, sigma) directly"
    recipe_models = (EDM2Model,)

    def build(self, spec: BuildSpec) -> ProbeContext:
        cfg, device, taxonomy = spec.model, spec.device, spec.taxonomy
        net, encoder = edm2.load_edm2(cfg.path, key=cfg.key)
        uncond = edm2.load_edm2(cfg.uncond_path, key=cfg.key)[0] if cfg.uncond_path else None
        if uncond is None and net.label_dim and spec.needs_unconditional:
            # EDM2's class-conditional networks have no unconditional mode: say so before sampling.
            raise ProbesError(f"model.uncond_path: the EDM2 network {cfg.path} is class-conditional and has no "
                              f"unconditional mode, but {spec.needs_unconditional}; give model.uncond_path (an EDM2 "
                              "edm2-img512-*-uncond-*.pkl) or use sampling.condition: leaf with the bayes estimator")
        denoiser = edm2.EDM2Denoiser(net.to(device), uncond.to(device) if uncond is not None else None)
        classifier = decode = None
        if spec.classifier is not None:
            clean_classifier = build_image_classifier(spec.classifier, taxonomy, device)
            if edm2.is_pixel_space(net, encoder):
                if cfg.vae is not None:
                    raise ProbesError(f"model.vae: {cfg.path} works on pixels, not VAE latents; remove model.vae")
                classifier = clean_classifier
                decode = self.decoder(net, encoder=encoder)
            else:
                decode = self._latent_decoder(cfg, encoder, device)
                classifier = DecodedClassifier(decode, clean_classifier)
        conditioner = edm2.edm2_conditioner(taxonomy, net.label_dim) if net.label_dim else None
        # A class-conditional network knows label_dim classes, trained in about equal numbers (ImageNet):
        # leaves that name fewer of them leave the rest of its world, and that share of its samples, outside.
        n_inside = len(set(conditioner.class_of_leaf.values())) if conditioner is not None else 0
        n_outside = net.label_dim - n_inside if conditioner is not None else 0
        return ProbeContext(
            taxonomy=taxonomy, denoiser=denoiser, conditioner=conditioner, classifier=classifier,
            prior=uniform_prior(taxonomy), shape=denoiser.shape, sigma_max=edm2.SIGMA_MAX, sigma_min=edm2.SIGMA_MIN,
            device=device, partial_taxonomy=n_outside > 0,
            outside_mass=n_outside / net.label_dim if conditioner is not None else 0.0, decode=decode)

    @staticmethod
    def _latent_decoder(cfg: EDM2Model, encoder, device):
        if cfg.vae is not None:
            vae = edm2.load_vae(cfg.vae, device=device)  # a folder or a hub id
            scale, bias = getattr(encoder, "scale", None), getattr(encoder, "bias", None)
            return edm2.EDM2LatentDecoder(vae=vae, scale=scale, bias=bias, decode_size=cfg.decode_size)
        if encoder is not None:
            edm2.init_encoder(encoder, device)
            return edm2.EDM2LatentDecoder(encoder, decode_size=cfg.decode_size)
        raise ProbesError(f"model.vae: {cfg.path} works in VAE latents but holds no encoder; set model.vae to "
                          f"{edm2.VAE_NAME} (a hub id or a local copy)")

    def denoiser(self, net, uncond_net=None):
        return edm2.EDM2Denoiser(net, uncond_net)

    def decoder(self, net, call_kwargs: dict | None = None, decode_size=None, encoder=None):
        if edm2.is_pixel_space(net, encoder):
            return lambda x: x.float().clamp(-1, 1)
        return edm2.EDM2LatentDecoder(encoder, decode_size=decode_size)

    def conditioner(self, net, taxonomy):
        return edm2.edm2_conditioner(taxonomy, label_dim=int(net.label_dim))
