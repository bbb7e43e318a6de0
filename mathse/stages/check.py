"""The data check (`--stage check`): duplicates in and across the seed and pool files, and
contamination by every configured eval benchmark, by question text and by image.

One unit of work, `output/check/` (see `mathse.data.checking`): the pairs found, a summary, the
ids dropped (`data_check.action: drop`) and a marker fingerprinting the files and settings. Distill
and evolve run the same check first, so this stage is for looking before anything is paid for.
"""

from __future__ import annotations

from pathlib import Path

from mathse.data import checking
from mathse.run import layout
from mathse.run.config import MathSEConfig
from mathse.run.fingerprint import Stale
from mathse.run.storage import is_done

STAGE = layout.CHECK


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    dc = cfg.data_check
    if not dc.enabled:
        print("check: data_check.enabled is false: nothing checked")
        return 0
    if dry_run:
        files = [f"{key} {path}" for key, path in (("seed", cfg.data.seed_file), ("pool", cfg.data.pool_file)) if path]
        benches = ", ".join(b.name for b in cfg.eval.benchmarks) or "none configured (eval.benchmarks)"
        state = "up to date" if finished(cfg) else "would run"
        print(f"[dry-run] check ({state}): {'; '.join(files) or 'no seed or pool file set'}; benchmarks: {benches}")
        pictures = (f"hashes <= {dc.image_distance} bits, then compared pixel by pixel (difference <= "
                    f"{dc.picture_difference})" if dc.picture_check else f"hashes <= {dc.image_distance} bits")
        print(f"[dry-run] action {dc.action}; same picture: {pictures}; near text: content-word MinHash "
              f"Jaccard >= {dc.text_similarity}; pairs -> {layout.check_pairs_path(cfg)}")
        return 0
    already = finished(cfg)
    summary = checking.ensure_checked(cfg)
    if already and summary is not None:
        c = summary["counts"]
        flagged = sum(c.get(f"{r}_flagged", 0) for r in ("seed", "pool"))
        print(f"check: already done, nothing to do ({flagged} problems flagged; see {layout.check_pairs_path(cfg)})")
    return 0


def finished(cfg: MathSEConfig) -> bool:
    return not cfg.data_check.enabled or (is_done(layout.stage_dir(cfg, STAGE)) and not stale(cfg))


def stale(cfg: MathSEConfig) -> list[Stale]:
    return checking.stale(cfg)


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    return {
        "pairs found": layout.check_pairs_path(cfg),
        "check summary": layout.check_summary_path(cfg),
        "dropped seed ids": layout.check_excluded_path(cfg, "seed"),
        "dropped pool ids": layout.check_excluded_path(cfg, "pool"),
    }
