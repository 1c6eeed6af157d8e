"""Many SLG skip variants of the positive pass in one batched model call (the explorer's and the map's engine).

Every variant is identical to the positive pass up to its first skipped block, so one batched
``calc_cond_batch`` call carries the positive, the negative and the variants (sorted by first skipped
block) and ``("dit", "double_block", i)`` replace patches compute each block once per distinct prefix:
the guider's fast path (nodes/slg.py) generalised to many variants. Chunks are matched by uuid; a
variant the host split away from its positive computes its own prefix, as a separate pass would.
"""

from __future__ import annotations

import uuid

import comfy.model_management
import comfy.model_patcher
import comfy.samplers

from ..sd35wb import slg_explorer as E
from .slg import (
    _assembled,
    _call,
    _run_rows,
    public_rows_wrapper,
)

VARIANT_ROWS_KEY = "sd35wb_slg_cond_or_uncond"  # the real cond indices, as the guider's fast path names them


class VariantPass:
    """Evaluate the positive, the negative and a skip variant of the positive per candidate at one input.

    ``__call__`` returns ``(cond, uncond, skips)`` with ``skips[k]`` the positive prediction with
    ``candidates[k]`` skipped: equal (within float rounding of a larger batch) to core's separate
    SLG pass ``calc_cond_batch([positive])`` with identity patches on those blocks.
    """

    def __init__(self, model_patcher, candidates, per_call: int = 0):
        self.candidates = [tuple(c) for c in candidates]
        self.per_call = int(per_call)
        self.order = E.variant_order(self.candidates)
        dm = getattr(model_patcher.model, "diffusion_model", None)
        self.blocks = getattr(dm, "joint_blocks", None)
        self._src = None
        self.twins: list = []
        self.variants: dict = {}
        self.calls = 0  # batched calls made (for the block-row count)

    def _twins_for(self, positive):
        """Per candidate, the (sampling-processed) positive entries again under new uuids, made once per run."""
        if self._src is not positive:
            seen = [c.get("uuid") for c in positive]
            self.twins, self.variants = [], {}
            for layers in self.candidates:
                entries = []
                for c in positive:
                    twin = c.copy()
                    twin["uuid"] = uuid.uuid4()
                    # an entry whose uuid is not unique cannot be told apart: its twin computes its own prefix
                    self.variants[twin["uuid"]] = (c.get("uuid") if seen.count(c.get("uuid")) == 1 else None, layers)
                    entries.append(twin)
                self.twins.append(entries)
            self._src = positive
        return self.twins

    def per_call_for(self, model, x) -> int:
        """Variants per call: the node's setting, or (0 = auto) as many as the host's own memory
        estimate lets one batch hold beside the positive and the negative."""
        if self.per_call > 0:
            return self.per_call
        k = len(self.candidates)
        free = comfy.model_management.get_free_memory(x.device)
        while k > 1 and model.memory_required([(2 + k) * x.shape[0], *x.shape[1:]]) * 1.5 >= free:
            k = (k + 1) // 2
        return k

    def options(self, model_options, group):
        opts = model_options.copy()
        opts["transformer_options"] = dict(opts.get("transformer_options", {}))
        existing = opts["transformer_options"].get("patches_replace", {}).get("dit", {})
        chosen = [self.candidates[k] for k in group]
        variants = {u: v for u, v in self.variants.items() if v[1] in chosen}
        for j in range(E.patched_blocks(chosen)):
            prev = existing.get(("double_block", j))  # another pack's patch: called as the block, never dropped
            block = self.blocks[j] if self.blocks is not None and j < len(self.blocks) else None
            patch = _variant_patch(variants, j, prev, block)
            opts = comfy.model_patcher.set_model_options_patch_replace(opts, patch, "dit", "double_block", j)
        opts["model_function_wrapper"] = public_rows_wrapper(opts.get("model_function_wrapper"),  # variants show as 0
                                                        lambda rows: [r if r in (0, 1) else 0 for r in rows], VARIANT_ROWS_KEY)
        return opts

    def __call__(self, model, x, timestep, positive, negative, model_options):
        twins = self._twins_for(positive)
        skips: list = [None] * len(self.candidates)
        cond = uncond = None
        for n, group in enumerate(E.chunk_variants(self.order, self.per_call_for(model, x))):
            conds = [positive, negative if n == 0 else None] + [twins[k] for k in group]
            out = comfy.samplers.calc_cond_batch(model, conds, x, timestep, self.options(model_options, group))
            self.calls += 1
            if n == 0:
                cond, uncond = out[0], out[1]
            for k, o in zip(group, out[2:]):
                skips[k] = o
        return cond, uncond, skips


def _variant_patch(variants, j, prev, block):
    def sd35wb_slg_variants(args, extra):
        to = args["transformer_options"]
        uuids = to.get("uuids", ())
        n = len(uuids)
        img = args["img"]
        plan = E.variant_block_plan(uuids, variants, j, to.get(VARIANT_ROWS_KEY)) if n else None
        if plan is None or img.shape[0] % n:
            return _call(prev, args, extra, block)
        run, sources = plan
        if not run:
            return args
        rows = img.shape[0] // n
        out = _run_rows(prev, args, extra, run, n, rows, block)
        return _assembled(out, args, img, sources, rows)

    return sd35wb_slg_variants
