"""Pictures for the README gallery that need no weights: schedules drawn by the pack's own plot, and
the SLG sensitivity map of a random-weight SD3.5-Medium-structured model (its layout, not real findings).

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


def slg_sensitivity_map() -> None:
    """The map node, run in-process on the host over a random-weight 24-block model (width 64)."""
    import importlib
    import importlib.util
    import sys

    from tools.comfy_server import host_env

    sys.path.insert(0, host_env()["COMFYUI_DIR"])
    sys.path.insert(0, str(REPO / "tests"))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import torch
    from PIL import Image
    from testnodes import make_conditioning

    from tools.tiny_models import sd3_model_patcher

    spec = importlib.util.spec_from_file_location("sd35wb_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["sd35wb_pack"] = pack
    spec.loader.exec_module(pack)
    node = importlib.import_module("sd35wb_pack.nodes.slg_explorer").SLGSensitivityMapNode
    torch.set_num_threads(1)
    with torch.inference_mode():
        out = node.execute(model=sd3_model_patcher(num_blocks=24, depth=1), positive=make_conditioning("sd3", 1),
                           negative=make_conditioning("sd3", 2), latent_image={"samples": torch.zeros(1, 16, 32, 32)},
                           seed=42, steps=50, cfg=4.0, sampler_name="dpmpp_2m", scheduler="sgm_uniform", start=0.01,
                           end=0.2, gating="steps", probes=2, candidates="each")
    chart = out.result[0][0].numpy()
    Image.fromarray((chart * 255).round().astype("uint8")).save(OUT / "slg_sensitivity_map.png")
    print(f"wrote {(OUT / 'slg_sensitivity_map.png').relative_to(REPO)}")


if __name__ == "__main__":
    main()
    slg_sensitivity_map()
