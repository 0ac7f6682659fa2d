"""The textbook's cells (what the field says about each family) and the checks of those claims
against the measured table."""

from __future__ import annotations

# What the textbook says, per family, printed beside the measurements.
TEXTBOOK = {
    "gan": {"group": "GAN", "latent": "yes", "stability": "unstable", "quality": "high", "speed": "fast",
            "trait": "adversarial training"},
    "vae": {"group": "VAE", "latent": "yes", "stability": "stable", "quality": "medium", "speed": "fast",
            "trait": "structured latent space"},
    "augvae": {"group": "VAE", "latent": "yes", "stability": "stable", "quality": "medium", "speed": "fast",
               "trait": "conditional VAE on augmented views (more data of a chosen class)"},
    "vqvae": {"group": "VAE", "latent": "yes (discrete)", "stability": "stable", "quality": "medium", "speed": "fast",
              "trait": "discrete latent via a codebook, autoregressive prior"},
    "flow": {"group": "Flow", "latent": "exact (invertible)", "stability": "fairly stable", "quality": "medium",
             "speed": "fast", "trait": "exact density"},
    "ddpm": {"group": "Diffusion", "latent": "none (data space)", "stability": "very stable", "quality": "high",
             "speed": "slow", "trait": "step-by-step denoising"},
    "ldm": {"group": "Diffusion", "latent": "autoencoder latent", "stability": "very stable", "quality": "high",
            "speed": "fast-ish", "trait": "diffusion on a compressed latent"},
    "score": {"group": "Diffusion", "latent": "none (data space); the probability-flow ODE gives an exact one",
              "stability": "very stable", "quality": "high", "speed": "slow",
              "trait": "score matching over noise levels; SDE/ODE samplers, exact likelihood"},
}



def textbook_claims(report: dict) -> list[dict]:
    """The textbook's cells turned into checks against the measured table (where both sides exist)."""
    ms = [m for m in report["models"] if m["family"] not in (None, "images")]
    claims = []

    def speed(m):
        return m["cells"]["speed"].get("images_per_s")

    def kid(m):
        return m["cells"]["quality"].get("kid")

    diff = [m for m in ms if m["family"] == "ddpm" and speed(m)]
    one = [m for m in ms if m["family"] != "ddpm" and speed(m)]
    if diff and one:
        slow = min(diff, key=speed)
        fast = min(one, key=speed)
        claims.append({"claim": "diffusion samples slowly, the others fast",
                       "verdict": "holds" if speed(slow) < speed(fast) else "does not hold",
                       "evidence": f"slowest diffusion ({slow['source']}) {speed(slow):.2f} images/s vs slowest other "
                                   f"({fast['source']}) {speed(fast):.1f} images/s ({speed(fast) / speed(slow):.0f}x)"})
    scored = [m for m in ms if kid(m) is not None]
    if len(scored) >= 2:
        order = sorted(scored, key=kid)
        claims.append({"claim": "GAN and diffusion give the best samples, VAE and flow medium",
                       "verdict": "see ranking",
                       "evidence": "ranking by KID (lower is better): " + ", ".join(f"{m['source']} {kid(m):.4f}" for m in order)})
    lik = [m for m in ms if "value" in m["cells"]["likelihood"]]
    if lik:
        claims.append({"claim": "flows have an exact density",
                       "verdict": "holds" if any(m["family"] == "flow" and "exact" in m["cells"]["likelihood"]["text"] for m in lik)
                       else "only bounds measured",
                       "evidence": "; ".join(f"{m['source']}: {m['cells']['likelihood']['text']}" for m in lik)})
    stab = [m for m in ms if "tail_cv" in m["cells"]["stability"] or "seeds" in m["cells"]["stability"]]
    if stab:
        claims.append({"claim": "GANs train unstably, VAEs stably, diffusion very stably",
                       "verdict": "see evidence",
                       "evidence": "; ".join(f"{m['source']}: {m['cells']['stability']['text']}" for m in stab)})
    return claims

