"""Pictures for the README gallery that need no weights: schedules drawn by the pack's own plot.

    python -m tools.make_gallery      # writes docs/img/*.png
"""

from __future__ import annotations

from tools import host
from tools.comfy_server import REPO

OUT = REPO / "docs" / "img"
SDXL_SIGMA_MIN, SDXL_SIGMA_MAX = 0.0292, 14.6146  # the SDXL / SD1.5 discrete schedule's ends


def main() -> None:
    host.use_host_python()  # PIL and numpy come with the host's venv
    from sd35wb import sigma_plot, sigmas

    OUT.mkdir(parents=True, exist_ok=True)
    steps = 28
    base = sigmas.karras(steps, SDXL_SIGMA_MIN, SDXL_SIGMA_MAX)
    hi = sigmas.karras(steps, SDXL_SIGMA_MIN, sigmas.scaled_sigma_max(SDXL_SIGMA_MAX, 2048, 2048, 1024)[0])
    zt = sigmas.ztsnr_sigmas(steps)
    img = sigma_plot.render([
        sigma_plot.Series("SDXL karras, 1024 px (sigma_max 14.6)", base),
        sigma_plot.Series("High-sigma, 2048 px (NovelAI rule: 29.2)", hi),
        sigma_plot.Series("ZTSNR trailing (terminal 4518.8)", zt),
    ], title=f"Sigma schedules, {steps} steps")
    img.save(OUT / "sigma_schedules.png")
    print(f"wrote {(OUT / 'sigma_schedules.png').relative_to(REPO)}")


if __name__ == "__main__":
    main()
